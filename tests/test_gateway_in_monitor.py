"""The gateway runs inside the monitor when enabled and follows its health."""

from __future__ import annotations

import os
import signal

import httpx
import pytest

from standin.harness import free_port
from tests.manager import Manager, wait_until

pytestmark = pytest.mark.slow


def test_gateway_inside_the_monitor(standin, tmp_path):
    port = free_port()
    manager = Manager(standin.env, tmp_path)
    manager.env.update({"OLLAMA_MANAGER_GATEWAY_ENABLED": "true", "OLLAMA_MANAGER_GATEWAY_PORT": str(port)})
    try:
        manager.spawn_monitor()
        manager.wait_monitor_ready()
        gateway = f"http://127.0.0.1:{port}"
        standin.pull("llama3")
        body = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}], "stream": False}
        response = httpx.post(f"{gateway}/api/chat", json=body, timeout=30)
        assert response.status_code == 200 and response.json()["done"] is True
        assert response.headers["x-ollama-manager-backend"] == "local"
        status = wait_until(lambda: (s := manager.api_status()) and s["gateway"]["calls"] >= 1 and s, 10, what="calls")
        assert status["gateway"]["cloud_enabled"] is False and status["cloud_active"] is False
        # The cloud is off by default: with Ollama gone the client gets a clear error, never the cloud.
        os.kill(status["pid"], signal.SIGSTOP)
        try:
            wait_until(lambda: manager.api_status()["health"] == "down", 20, what="down")
            refused = httpx.post(f"{gateway}/api/chat", json=body, timeout=30)
            assert refused.status_code == 503
            assert "the cloud fallback is off" in refused.json()["error"]
        finally:
            os.kill(status["pid"], signal.SIGCONT)
    finally:
        manager.cleanup()

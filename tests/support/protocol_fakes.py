"""The tests' fakes of tray's Protocols, checked against them by mypy (``.ci/gate`` runs it on this module).

A fake that no longer matches its Protocol (a method renamed, a parameter added, a property gone) would let the
tests pass against an interface the code no longer has; here mypy fails the gate instead. The test modules are
imported for the type checker only: at run time this module does nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.support.fake_registry import FakeRegistry
    from tests.support.standin_app_finder import StandinAppFinder
    from tests.test_controller import FakeAutostart
    from tests.test_dashboard import FakeMonitor
    from tests.test_gateway import MemoryStore
    from tests.test_menu import FakeController
    from tests.test_monitor_logic import FakeClient, FakeGateway, FakeSupervisor, FakeUserStop
    from tests.test_platform_commands import FakeKernel32
    from tray.dashboard.routes import MonitorLike
    from tray.gateway.cloud import KeyStore
    from tray.service.ports import GatewayFeed, OllamaProbe, StopMark, SupervisorPort
    from tray.system.autostart import Autostart
    from tray.system.console_break import ConsoleApi
    from tray.system.ollama_app import AppFinder
    from tray.system.registry import RegistryValues
    from tray.ui.app import Controller

    supervisor: type[SupervisorPort] = FakeSupervisor
    probe: type[OllamaProbe] = FakeClient
    user_stop: type[StopMark] = FakeUserStop
    gateway_feed: type[GatewayFeed] = FakeGateway
    dashboard_monitor: type[MonitorLike] = FakeMonitor
    key_store: type[KeyStore] = MemoryStore
    tray_controller: type[Controller] = FakeController
    autostart: type[Autostart] = FakeAutostart
    console: type[ConsoleApi] = FakeKernel32
    app_finder: type[AppFinder] = StandinAppFinder
    registry: type[RegistryValues] = FakeRegistry

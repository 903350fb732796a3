"""The variables of Ollama's server environment that the app sets, named as Ollama's ``envconfig`` reads them.

Both the ``[ollama_server]`` settings and the out-of-memory ladder change a
server's context length and GPU use through these, so they live below both.
"""

from __future__ import annotations

from collections.abc import Mapping

GPU_VARIABLES = ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES")
NO_GPU_ID = "-1"  # an id no GPU has: Ollama then runs on the CPU (Ollama's docs/gpu.md)
# Every variable that hides the GPUs from Ollama (envconfig/config.go, discover/runner.go): CUDA, ROCm
# (ROCR on Linux, HIP and then GPU_DEVICE_ORDINAL elsewhere) and Vulkan, which Ollama enables by default:
# OLLAMA_VULKAN=0 skips its library, GGML_VK_VISIBLE_DEVICES=-1 its devices. Metal has no such variable.
GPU_OFF_ENV: Mapping[str, str] = {
    **dict.fromkeys(GPU_VARIABLES, NO_GPU_ID),
    "GPU_DEVICE_ORDINAL": NO_GPU_ID,
    "GGML_VK_VISIBLE_DEVICES": NO_GPU_ID,
    "OLLAMA_VULKAN": "0",
}
CONTEXT_VARIABLE = "OLLAMA_CONTEXT_LENGTH"

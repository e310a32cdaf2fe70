"""Device and backend selection, and the CPU platform layer for megatron-core."""

from __future__ import annotations

import socket

import torch

from megatron_tulu.platform.cpu import apply_cpu_platform_layer, cpu_platform_layer_active


def has_cuda() -> bool:
    return torch.cuda.is_available()


def ensure_platform() -> bool:
    """Makes megatron-core usable on this machine; returns True when the CPU layer is active.

    On CUDA machines only megatron's local multi-tensor fallbacks (used without TE and apex)
    are swapped for device-side ones (:mod:`megatron_tulu.platform.multi_tensor`). Idempotent.
    """
    if has_cuda():
        from megatron_tulu.platform.multi_tensor import install_multi_tensor_fallbacks

        install_multi_tensor_fallbacks()
        return False
    return apply_cpu_platform_layer()


def device() -> torch.device:
    if has_cuda():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def free_port() -> int:
    """An unused TCP port on the loopback interface (rendezvous for local ranks)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dist_backend() -> str:
    return "nccl" if has_cuda() else "gloo"


__all__ = [
    "apply_cpu_platform_layer",
    "cpu_platform_layer_active",
    "device",
    "dist_backend",
    "ensure_platform",
    "free_port",
    "has_cuda",
]

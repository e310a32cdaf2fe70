"""Every loss returns its loss, count and report on its inputs' device, and forward_step moves
CPU-built micro-batches to the model's device (the CUDA path's first-step crashes were CPU
constants mixed into CUDA results); checked on PyTorch's meta device, so no GPU is needed."""

from __future__ import annotations

from mt_testing.devices import loss_output_devices

from megatron_tulu.platform.spawn import run_ranks


def test_losses_and_forward_step_stay_on_the_device() -> None:
    devices = run_ranks(loss_output_devices, 1)[0]
    assert set(devices) >= {"sft mean", "dpo pair", "ppo", "grpo", "value", "forward_step"}
    for name, where in devices.items():
        assert where and all(d == "meta" for d in where), (name, where)

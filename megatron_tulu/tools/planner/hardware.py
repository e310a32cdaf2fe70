"""Hardware profiles (H100, H200) and the efficiency constants the planner's time model uses.

Every number carries its source. Bandwidths are per GPU and per direction. "Usable" HBM is what
``nvidia-smi`` reports as total memory (the marketing "80 GB" is 81,559 MiB = 79.6 GiB).

Efficiencies (fractions of a peak that real kernels / collectives reach):

- ``compute``: the fraction of peak dense bf16 FLOP/s that the transformer's matmuls and
  attention reach while a pipeline stage is busy. CALIBRATED, once per chip, from one published
  anchor (NVIDIA's 405B megatron-core run, see :mod:`megatron_tulu.tools.planner.anchors`); every
  other anchor is then predicted. Pipeline bubbles, tensor-parallel and data-parallel
  communication and the optimizer step are modelled separately, so they are *not* inside this
  constant. The H200 has the H100's GH100 compute die (same SMs, clocks and peak), so it reuses
  the H100 value.
- ``hbm``: achieved fraction of peak HBM bandwidth for decode-style streaming reads (weights and
  KV cache). Nominal 0.8 (not calibrated): a device-to-device copy reaches ~0.9 (4.3 of 4.8 TB/s
  measured on this workplace's H200); paged-attention and GEMV-shaped decode kernels reach less.
- ``network``/``nvlink``: achieved fraction of link rate for large NCCL transfers (bus
  bandwidth / line rate). Nominal 0.8 (not calibrated).
- Collective latencies (small messages, e.g. decode-time all-reduces): 10 us inside a node,
  25 us across nodes (typical NCCL small-message all-reduce latencies; nominal).

Host side (offloads; nominal, not calibrated): ``host_link_gb_s`` is one GPU's PCIe Gen5 x16
link per direction (64 GB/s line rate, reached at the ``network`` efficiency); ``host_mem_gb_s``
is one GPU's share of the node's host-memory bandwidth for a CPU optimizer (a 2-socket DDR5
node streams ~300-400 GB/s, shared by 8 GPU processes: 40 GB/s each).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from megatron_tulu.config._validate import check_float, check_int, fmt_set

GIB = 2**30
GB = 1e9
TERA = 1e12


@dataclass(frozen=True, kw_only=True)
class Efficiencies:
    compute: float  # of peak bf16 dense FLOP/s, while a stage computes (calibrated)
    hbm: float = 0.8  # of peak HBM bandwidth, decode streaming reads (nominal)
    network: float = 0.8  # of the per-GPU network link rate, large collectives (nominal)
    nvlink: float = 0.8  # of the per-GPU NVLink rate (per direction), large collectives (nominal)
    latency_intra_s: float = 10e-6  # one small collective inside a node (nominal)
    latency_inter_s: float = 25e-6  # one small collective across nodes (nominal)

    def __post_init__(self) -> None:
        for name in ("compute", "hbm", "network", "nvlink"):
            check_float(name + " efficiency", getattr(self, name), gt=0.0, le=1.0)
        check_float("latency_intra_s", self.latency_intra_s, ge=0.0)
        check_float("latency_inter_s", self.latency_inter_s, ge=0.0)


# Calibrated so that the planner reproduces NVIDIA's 405B BF16 step (1024 H100, TP8 PP8 CP2 VP8,
# GBS 512, seq 8192: 19.84 s/step). Recomputed and checked by tests/planner/test_anchors.py
# (megatron_tulu.tools.planner.anchors.calibrate_compute_efficiency()).
H100_COMPUTE_EFFICIENCY = 0.6575


@dataclass(frozen=True, kw_only=True)
class HardwareProfile:
    name: str
    peak_tflops: float  # dense bf16, no sparsity
    hbm_gib: float  # usable device memory (nvidia-smi total)
    hbm_tb_s: float  # peak HBM bandwidth
    nvlink_gb_s: float  # NVLink per GPU, per direction
    network_gb_s: float  # scale-out network per GPU, per direction
    gpus_per_node: int
    efficiency: Efficiencies
    sources: tuple[str, ...] = field(default=())
    host_link_gb_s: float = 64.0  # PCIe Gen5 x16, per GPU and direction (nominal)
    host_mem_gb_s: float = 40.0  # one GPU's share of host memory bandwidth (nominal)

    def __post_init__(self) -> None:
        for name in ("peak_tflops", "hbm_gib", "hbm_tb_s", "nvlink_gb_s", "network_gb_s",
                     "host_link_gb_s", "host_mem_gb_s"):  # fmt: skip
            check_float(name, getattr(self, name), gt=0.0)
        check_int("gpus_per_node", self.gpus_per_node, minimum=1)

    @property
    def peak_flops(self) -> float:
        return self.peak_tflops * TERA

    @property
    def hbm_bytes(self) -> float:
        return self.hbm_gib * GIB

    def with_compute_efficiency(self, value: float) -> HardwareProfile:
        return replace(self, efficiency=replace(self.efficiency, compute=value))

    def describe(self) -> str:
        e = self.efficiency
        return (
            f"{self.name}: {self.peak_tflops:g} TFLOP/s bf16 dense, {self.hbm_gib:g} GiB HBM at "
            f"{self.hbm_tb_s:g} TB/s, NVLink {self.nvlink_gb_s:g} GB/s/dir, network "
            f"{self.network_gb_s:g} GB/s/dir per GPU, {self.gpus_per_node} GPUs/node; "
            f"efficiencies: compute {e.compute:.4g}, HBM {e.hbm:g}, network {e.network:g}, "
            f"NVLink {e.nvlink:g}"
        )


_COMMON_SOURCES = (
    "H100/H200 SXM datasheets: 989.4 TFLOP/s dense bf16 (1,979 with sparsity), NVLink 4 "
    "900 GB/s bidirectional = 450 GB/s per direction",
    "DGX H100/H200: 8 GPUs per node, one 400 Gb/s ConnectX-7 (50 GB/s per direction) per GPU",
)

HARDWARE: dict[str, HardwareProfile] = {
    "H100": HardwareProfile(
        name="H100",
        peak_tflops=989.4,
        hbm_gib=79.6,  # 81,559 MiB (nvidia-smi, H100 SXM5 80GB)
        hbm_tb_s=3.35,
        nvlink_gb_s=450.0,
        network_gb_s=50.0,
        gpus_per_node=8,
        efficiency=Efficiencies(compute=H100_COMPUTE_EFFICIENCY),
        sources=(*_COMMON_SOURCES, "H100 SXM5 datasheet: 80 GB HBM3 at 3.35 TB/s"),
    ),
    "H200": HardwareProfile(
        name="H200",
        peak_tflops=989.4,
        hbm_gib=140.4,  # 143,771 MiB (nvidia-smi, H200 SXM 141GB)
        hbm_tb_s=4.8,
        nvlink_gb_s=450.0,
        network_gb_s=50.0,
        gpus_per_node=8,
        # Same GH100 compute die as the H100: the H100 calibration is reused (not re-measured
        # at scale; an 8192^3 bf16 matmul reaches ~790 TFLOP/s = 0.80 of peak on this
        # workplace's H200, the same single-GEMM ceiling an H100 shows).
        efficiency=Efficiencies(compute=H100_COMPUTE_EFFICIENCY),
        sources=(*_COMMON_SOURCES, "H200 SXM datasheet: 141 GB HBM3e at 4.8 TB/s"),
    ),
}


def get_hardware(name: str, *, compute_efficiency: float | None = None) -> HardwareProfile:
    """The profile ``name`` (case-insensitive), optionally with the compute efficiency replaced."""
    key = name.upper()
    if key not in HARDWARE:
        raise ValueError(f"unknown hardware {name!r}: choose one of {fmt_set(HARDWARE)}")
    hw = HARDWARE[key]
    if compute_efficiency is not None:
        check_float("efficiency", compute_efficiency, gt=0.0, le=1.0)
        hw = hw.with_compute_efficiency(compute_efficiency)
    return hw

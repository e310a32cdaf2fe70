"""Wire time of NCCL collectives on a node-based cluster (bandwidth model).

A collective over ``n`` GPUs of which ``per_node`` share each node (so ``nodes = n / per_node``):

- inside a node every GPU moves ``k * bytes * (n - 1) / n`` over its NVLink, where ``k`` is 1 for
  all-gather, reduce-scatter and broadcast and 2 for all-reduce (ring lower bound);
- across nodes each node must receive the other nodes' share, ``k * bytes * (nodes - 1) / nodes``,
  spread over the ``per_node`` NICs its group members own (one NIC per GPU, the DGX layout);

the collective takes the slower of the two. ``bytes`` is the size of the full (gathered / reduced)
buffer. Large transfers reach ``efficiency.network`` / ``efficiency.nvlink`` of the link rate;
small ones add a latency (``latency=True``: decode-time all-reduces).
"""

from __future__ import annotations

from megatron_tulu.tools.planner.hardware import GB, HardwareProfile

FACTOR = {"all_gather": 1.0, "reduce_scatter": 1.0, "broadcast": 1.0, "all_reduce": 2.0}


def group_per_node(size: int, stride: int, gpus_per_node: int) -> int:
    """Members of a group of ``size`` ranks spaced ``stride`` apart that share one node."""
    if stride >= gpus_per_node:
        return 1
    return max(1, min(size, gpus_per_node // stride))


def collective_seconds(
    nbytes: float,
    *,
    size: int,
    per_node: int,
    kind: str,
    hw: HardwareProfile,
    latency: bool = False,
) -> float:
    if size <= 1 or nbytes <= 0:
        return 0.0
    k = FACTOR[kind]
    eff = hw.efficiency
    per_node = max(1, min(per_node, size))
    nodes = size / per_node
    t_nvlink = 0.0
    if per_node > 1:
        t_nvlink = k * nbytes * (size - 1) / size / (hw.nvlink_gb_s * GB * eff.nvlink)
    t_net = 0.0
    if nodes > 1:
        t_net = k * nbytes * (nodes - 1) / nodes / per_node / (hw.network_gb_s * GB * eff.network)
    t = max(t_nvlink, t_net)
    if latency:
        t += eff.latency_inter_s if nodes > 1 else eff.latency_intra_s
    return t


def p2p_seconds(nbytes: float, *, same_node: bool, hw: HardwareProfile) -> float:
    eff = hw.efficiency
    if same_node:
        return nbytes / (hw.nvlink_gb_s * GB * eff.nvlink)
    return nbytes / (hw.network_gb_s * GB * eff.network)

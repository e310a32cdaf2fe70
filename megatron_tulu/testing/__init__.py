"""Helpers for multi-rank tests and tools on one machine (gloo on CPU, NCCL on GPU)."""

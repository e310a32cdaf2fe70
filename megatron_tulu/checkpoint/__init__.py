"""Native sharded checkpoints (megatron-core dist_checkpointing) and HF conversion."""

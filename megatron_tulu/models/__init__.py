"""Llama 3.1 on megatron-core: layer spec and builder, RoPE, norms, the HF mapping and I/O."""

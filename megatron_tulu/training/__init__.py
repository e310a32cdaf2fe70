"""The training engine: DDP + optimizer + LR schedule, the step, the loop, the CLI."""

"""Evaluation of checkpoints on verifiable tasks."""

"""Loss functions of the post-training stages (pure tensor math, no parallel state)."""

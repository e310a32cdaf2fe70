"""Stage trainers (SFT, DPO, RLVR) built on the training engine."""

#!/usr/bin/env python
"""Plan a megatron layout or an RLVR step: per-GPU memory, step time, MFU; --search ranks layouts.

    python tools/plan.py --model llama3.1-70b --gpus 64 --tp 8 --pp 4 --global-batch 128 \\
        --seq-len 4096
    python tools/plan.py --model llama3.1-405b --gpus 224 --global-batch 224 --seq-len 4096 \\
        --search --codebase-only
    python tools/plan.py --model llama3.1-405b --gpus 256 --rlvr --rollout-gpus 32 --vllm-tp 16 \\
        --tp 8 --pp 14 --recompute full --global-batch 1856 --prompt-len 800 --response-len 1024 \\
        --ppo-epochs 4 --async [--json]
    python tools/plan.py --model llama3.1-405b --gpus 256 --rlvr --search --codebase-only \\
        --global-batch 1856 --prompt-len 800 --response-len 1024 --ppo-epochs 4 --async

Exit codes: 0 ok, 2 invalid input, 3 does not fit in memory. Every assumption is printed.
Library: megatron_tulu/tools/planner/.
"""

from __future__ import annotations

import sys

from megatron_tulu.tools.planner.cli import main

if __name__ == "__main__":
    sys.exit(main())

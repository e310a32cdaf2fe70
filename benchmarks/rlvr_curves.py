"""Plot RLVR runs side by side: training reward per step (and its 5-step mean) and held-out
greedy accuracy, from the runs' metrics.jsonl files.

    python benchmarks/rlvr_curves.py OUT.png LABEL=metrics.jsonl [LABEL=metrics.jsonl ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(argv) < 2 or any("=" not in a for a in argv[1:]):
        print(__doc__, file=sys.stderr)
        return 2
    fig, (ax_r, ax_a) = plt.subplots(1, 2, figsize=(11, 4))
    for i, spec in enumerate(argv[1:]):
        label, path = spec.split("=", 1)
        rows = [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]
        steps = [r["step"] for r in rows if "reward" in r]
        reward = [r["reward"] for r in rows if "reward" in r]
        mean5 = [sum(reward[max(0, k - 4) : k + 1]) / len(reward[max(0, k - 4) : k + 1])
                 for k in range(len(reward))]  # fmt: skip
        ax_r.plot(steps, reward, color=f"C{i}", alpha=0.25)
        ax_r.plot(steps, mean5, color=f"C{i}", label=label)
        evals = [(r["step"], r["eval_accuracy"]) for r in rows if "eval_accuracy" in r]
        ax_a.plot(*zip(*evals, strict=True), "o-", color=f"C{i}", label=label)
    ax_r.set(xlabel="RL step", ylabel="mean reward (10 = verified)", title="training reward")
    ax_a.set(xlabel="RL step", ylabel="accuracy", title="held-out greedy accuracy (300)")
    ax_r.legend(fontsize=8)
    ax_a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(argv[0], dpi=100)
    print(f"wrote {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

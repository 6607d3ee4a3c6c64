"""Print a Markdown table of SASRec test metrics per run, with the mean and standard deviation over runs.

    .venv/bin/python bench/pretrain_table.py runs/sasrec/beauty-s0 runs/sasrec/beauty-s1 runs/sasrec/beauty-s2
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

METRICS = ("hr_at_5", "hr_at_10", "hr_at_20", "ndcg_at_5", "ndcg_at_10", "ndcg_at_20")


def main() -> int:
    runs = [json.loads((Path(folder) / "metrics.json").read_text()) for folder in sys.argv[1:]]
    if not runs:
        print("usage: pretrain_table.py RUN_FOLDER [RUN_FOLDER ...]", file=sys.stderr)
        return 2

    print("| run | HR@5 | HR@10 | HR@20 | NDCG@5 | NDCG@10 | NDCG@20 | best epoch | training time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for folder, run in zip(sys.argv[1:], runs, strict=True):
        values = " | ".join(f"{run['test'][key]:.4f}" for key in METRICS)
        minutes = run["training_time_s"] / 60
        print(f"| {Path(folder).name} (seed {run['options']['seed']}) | {values} | {run['best_epoch']} | {minutes:.1f} min |")

    if len(runs) > 1:
        summary = []
        for key in METRICS:
            values = [run["test"][key] for run in runs]
            summary.append(f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}")
        print(f"| mean ± std over {len(runs)} runs | {' | '.join(summary)} | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Print a Markdown table of the test metrics, training time and size of bundles.

    .venv/bin/python bench/quality_table.py runs/study/*/
"""

from __future__ import annotations

import sys
from pathlib import Path

from common import REPO_ROOT  # noqa: F401 - puts the repository on sys.path
from model.bundle import read_manifest

METRICS = ("hr_at_5", "hr_at_10", "hr_at_20", "ndcg_at_5", "ndcg_at_10", "ndcg_at_20")


def main() -> int:
    header = "| bundle | train users | best step / steps | HR@5 | HR@10 | HR@20 | NDCG@5 | NDCG@10 | NDCG@20 | training time | trainable parameters |"
    print(header)
    print("|---" * header.count(" | ") + "|---|")
    for folder in sys.argv[1:]:
        manifest = read_manifest(Path(folder))
        test = manifest.metrics["test"]
        training = manifest.training
        values = " | ".join(f"{test[key]:.4f}" for key in METRICS)
        best_step = training.get("best_step") or training["steps"]
        minutes = training["training_time_s"] / 60
        row = [manifest.name, f"{training['train_users']:,}", f"{best_step} / {training['steps']}", values,
               f"{minutes:.1f} min", f"{training['trainable_parameters']:,}"]
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

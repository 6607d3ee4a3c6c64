"""Rank quality of SASRec runs alone and as the ensemble teacher of ``e4srec train --teacher RUN RUN ...``.

Evaluates each ``pretrain-ids`` run, the mean of their item scores (what the
ensemble teacher uses) and the mean of their probabilities on one split, with
full ranking and history items excluded, and prints a Markdown table.

    .venv/bin/python bench/teacher_ensemble.py --data ../shared/data/beauty \\
        runs/sasrec/beauty-b256-s0 runs/sasrec/beauty-b256-s1 runs/sasrec/beauty-b256-s2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from common import machine
from model.data import leave_one_out, read_interactions
from model.distillation import load_teachers
from model.evaluate import evaluate_full_ranking

METRICS = ("hr_at_5", "hr_at_10", "hr_at_20", "ndcg_at_5", "ndcg_at_10", "ndcg_at_20")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="pretrain-ids folders of SASRec runs on the same data")
    parser.add_argument("--data", required=True, help="sequences.txt, a folder containing it, or an interactions CSV")
    parser.add_argument("--split", choices=("valid", "test"), default="test", help="leave-one-out split to rank")
    parser.add_argument("--output", type=Path, default=None, help="also write the figures as JSON here")
    args = parser.parse_args()
    if len(args.runs) < 2:
        parser.error(f"{len(args.runs)} run given; an ensemble needs at least two pretrain-ids folders")

    split = leave_one_out(read_interactions(args.data))
    cases = split.valid if args.split == "valid" else split.test
    # No bundle reads these histories, so the bundle's history bound is the smallest one. Each
    # run still reads up to its own max_length items.
    ensemble = load_teachers(args.runs, split.num_items, max_history_length=1, device=torch.device("cpu"))

    def member_score(index: int):
        return lambda histories: ensemble.members[index].full_sort_predict(histories)

    def mean_probability(histories: list[list[int]]) -> torch.Tensor:
        probabilities = [torch.softmax(member.full_sort_predict(histories).float(), dim=-1) for member in ensemble.members]
        return torch.log(torch.stack(probabilities).mean(dim=0))

    scorers = {folder.name: member_score(index) for index, folder in enumerate(args.runs)}
    scorers["ensemble, mean score (the teacher)"] = ensemble.full_sort_predict
    scorers["ensemble, mean probability"] = mean_probability
    results = {}
    for name, score in scorers.items():
        results[name] = evaluate_full_ranking(score, cases, description=f"rank {name}")

    print(f"{args.split} split, {len(cases)} users, full ranking, history items excluded")
    print("| model | HR@5 | HR@10 | HR@20 | NDCG@5 | NDCG@10 | NDCG@20 |")
    print("|---|---|---|---|---|---|---|")
    for name, metrics in results.items():
        print(f"| {name} | {' | '.join(f'{metrics[key]:.4f}' for key in METRICS)} |")

    if args.output is not None:
        figures = {"command": " ".join(sys.argv), "machine": machine(), "split": args.split, "metrics": results}
        args.output.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

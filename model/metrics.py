"""Ranking metrics for leave-one-out evaluation with full ranking.

With one held-out target per user, HR@k is 1 when the target ranks in the
top k, and NDCG@k is ``1 / log2(rank + 1)`` for a 1-based rank within k.
"""

from __future__ import annotations

import math

import torch

DEFAULT_CUTOFFS = (5, 10, 20)


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Return the 1-based rank of each target among its row's scores.

    Items scored ``-inf`` (excluded items) never rank above a target. Ties
    count against the target: an item with the same score ranks ahead of it,
    so a constant scorer earns no credit.
    """
    target_scores = scores.gather(1, targets.unsqueeze(1))
    ahead = (scores > target_scores).sum(dim=1)
    tied = (scores == target_scores).sum(dim=1) - 1
    return ahead + tied + 1


def ranking_metrics(ranks: torch.Tensor, cutoffs: tuple[int, ...] = DEFAULT_CUTOFFS) -> dict[str, float]:
    """Average HR@k and NDCG@k over 1-based target ranks."""
    if ranks.numel() == 0:
        raise ValueError("cannot compute ranking metrics over zero evaluation cases")
    ranks = ranks.double()
    metrics: dict[str, float] = {}
    for k in cutoffs:
        hit = ranks <= k
        metrics[f"hr_at_{k}"] = hit.double().mean().item()
        gain = torch.where(hit, 1.0 / torch.log2(ranks + 1.0), torch.zeros_like(ranks))
        metrics[f"ndcg_at_{k}"] = gain.mean().item()
    return metrics


def ndcg_of_rank(rank: int) -> float:
    return 1.0 / math.log2(rank + 1)


def format_metrics_table(rows: dict[str, dict[str, float]], cutoffs: tuple[int, ...] = DEFAULT_CUTOFFS) -> str:
    """Render metrics as a Markdown table, one row per model."""
    columns = [f"hr_at_{k}" for k in cutoffs] + [f"ndcg_at_{k}" for k in cutoffs]
    header = "| model | " + " | ".join(f"HR@{k}" for k in cutoffs) + " | " + " | ".join(f"NDCG@{k}" for k in cutoffs) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 1)]
    for name, values in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{values[column]:.4f}" for column in columns) + " |")
    return "\n".join(lines)

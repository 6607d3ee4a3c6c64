"""Full-ranking evaluation: every item is a candidate, history items excluded."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm import tqdm

from model.data import PADDING_ID, EvalCase
from model.metrics import DEFAULT_CUTOFFS, ranking_metrics, target_ranks

ScoreFunction = Callable[[list[list[int]]], torch.Tensor]
"""Maps a batch of histories to scores of shape (batch, num_items + 1)."""


def mask_seen_items(scores: torch.Tensor, histories: Sequence[Sequence[int]]) -> torch.Tensor:
    """Set the padding ID and every history item to ``-inf`` in place."""
    scores[:, PADDING_ID] = float("-inf")
    for row, history in enumerate(histories):
        scores[row, torch.as_tensor(list(history), dtype=torch.long)] = float("-inf")
    return scores


def evaluate_full_ranking(
    score_fn: ScoreFunction,
    cases: Sequence[EvalCase],
    batch_size: int = 256,
    cutoffs: tuple[int, ...] = DEFAULT_CUTOFFS,
    progress: bool = True,
    description: str = "evaluate",
) -> dict[str, float]:
    """Return HR@k and NDCG@k of ``score_fn`` on ``cases`` plus the case count.

    Cases are scored in batches sorted by history length, so batches of a
    padded model waste little compute.
    """
    order = sorted(range(len(cases)), key=lambda index: len(cases[index].history))
    ranks = torch.empty(len(cases), dtype=torch.long)
    with torch.inference_mode():
        for start in tqdm(range(0, len(order), batch_size), desc=description, disable=not progress, unit="batch"):
            indices = order[start : start + batch_size]
            histories = [cases[index].history for index in indices]
            targets = torch.tensor([cases[index].target for index in indices])
            scores = score_fn(histories).float()
            mask_seen_items(scores, histories)
            ranks[indices] = target_ranks(scores, targets).cpu()
    metrics = ranking_metrics(ranks, cutoffs)
    metrics["num_cases"] = len(cases)
    return metrics


def popularity_scores(train: Sequence[Sequence[int]], num_items: int) -> torch.Tensor:
    """Count each item's occurrences in the training sequences (the popularity baseline)."""
    counts = torch.zeros(num_items + 1)
    for sequence in train:
        counts.index_add_(0, torch.as_tensor(list(sequence), dtype=torch.long), torch.ones(len(sequence)))
    return counts


def popularity_score_fn(counts: torch.Tensor) -> ScoreFunction:
    def score(histories: list[list[int]]) -> torch.Tensor:
        return counts.unsqueeze(0).expand(len(histories), -1).clone()

    return score

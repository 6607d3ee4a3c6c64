import math

import pytest
import torch

from model.data import EvalCase
from model.evaluate import evaluate_full_ranking, mask_seen_items
from model.metrics import ranking_metrics, target_ranks


def test_rank_counts_higher_scores():
    scores = torch.tensor([[0.0, 0.9, 0.5, 0.7]])

    assert target_ranks(scores, torch.tensor([2])).tolist() == [3]


def test_ties_rank_target_last():
    scores = torch.tensor([[0.0, 0.5, 0.5, 0.5]])

    assert target_ranks(scores, torch.tensor([1])).tolist() == [3]


def test_excluded_items_do_not_outrank_target():
    scores = torch.tensor([[0.0, 0.9, 0.1, 0.8]])
    mask_seen_items(scores, [[1, 3]])

    assert target_ranks(scores, torch.tensor([2])).tolist() == [1]


def test_hr_and_ndcg_match_hand_computed_values():
    metrics = ranking_metrics(torch.tensor([1, 3, 7]), cutoffs=(1, 5))

    assert metrics["hr_at_1"] == pytest.approx(1 / 3)
    assert metrics["hr_at_5"] == pytest.approx(2 / 3)
    assert metrics["ndcg_at_5"] == pytest.approx((1.0 + 1.0 / math.log2(4)) / 3)


def test_cutoff_above_item_count_counts_every_hit():
    metrics = ranking_metrics(torch.tensor([2, 3]), cutoffs=(20,))

    assert metrics["hr_at_20"] == 1.0


def test_empty_ranks_are_rejected():
    with pytest.raises(ValueError, match="zero evaluation cases"):
        ranking_metrics(torch.tensor([], dtype=torch.long))


def test_full_ranking_excludes_history():
    # Item 3 scores highest but is in the history, so the target 2 ranks first.
    def score(histories):
        return torch.tensor([[0.0, 0.1, 0.5, 0.9]] * len(histories))

    metrics = evaluate_full_ranking(score, [EvalCase(history=[3], target=2)], progress=False, cutoffs=(1,))

    assert metrics["hr_at_1"] == 1.0
    assert metrics["num_cases"] == 1

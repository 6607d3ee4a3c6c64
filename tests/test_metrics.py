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


def test_excluded_target_is_a_miss():
    # A repeat purchase: the target is in the history, so it is excluded and
    # ranks behind both remaining candidates.
    scores = torch.tensor([[0.0, 0.9, 0.1, 0.8]])
    mask_seen_items(scores, [[2]])

    ranks = target_ranks(scores, torch.tensor([2]))

    assert ranks.tolist() == [4]
    assert ranking_metrics(ranks, cutoffs=(2,))["hr_at_2"] == 0.0


def test_duplicate_history_items_mask_once():
    scores = torch.tensor([[0.0, 0.9, 0.1, 0.8, 0.3]])
    mask_seen_items(scores, [[1, 3, 1, 3]])

    assert torch.isinf(scores[0, [0, 1, 3]]).all()
    assert scores[0, 2].item() == pytest.approx(0.1)
    assert scores[0, 4].item() == pytest.approx(0.3)
    assert target_ranks(scores, torch.tensor([2])).tolist() == [2]


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


def test_full_ranking_with_duplicate_history_items():
    def score(histories):
        return torch.tensor([[0.0, 0.8, 0.5, 0.9, 0.7]] * len(histories))

    case = EvalCase(history=[3, 3, 1, 3], target=2)
    metrics = evaluate_full_ranking(score, [case], progress=False, cutoffs=(1, 2))

    assert metrics["hr_at_1"] == 0.0
    assert metrics["hr_at_2"] == 1.0
    assert metrics["ndcg_at_2"] == pytest.approx(1.0 / math.log2(3))


def test_full_ranking_excludes_history():
    # Item 3 scores highest but is in the history, so the target 2 ranks first.
    def score(histories):
        return torch.tensor([[0.0, 0.1, 0.5, 0.9]] * len(histories))

    metrics = evaluate_full_ranking(score, [EvalCase(history=[3], target=2)], progress=False, cutoffs=(1,))

    assert metrics["hr_at_1"] == 1.0
    assert metrics["num_cases"] == 1

"""Check a request against its bundle, and pick the top k of a score row."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from model.data import PADDING_ID
from service.errors import FieldError
from service.schemas import RecommendRequest

if TYPE_CHECKING:
    from service.registry import ServedBundle


@dataclass
class RankingPlan:
    """A request checked against its bundle: what to feed and what to leave out."""

    served: ServedBundle
    model_history: list[int]
    excluded: set[int]
    k: int
    truncated: bool


@dataclass
class RankedItems:
    item_ids: list[int]
    scores: list[float]


def check_item_ids(values: list[int], field: str, bundle: str, limit: int) -> None:
    """Raise ``FieldError`` for the first value outside 1..limit; ``bundle`` is ``name@version``."""
    for index, item_id in enumerate(values):
        if 1 <= item_id <= limit:
            continue
        if item_id == PADDING_ID:
            reason = "is the padding ID"
        elif item_id < 0:
            reason = "is negative"
        elif item_id >= 2**63:
            reason = "is beyond the 64-bit integer range"
        else:
            reason = "is above the bundle's item count"
        raise FieldError(
            [field, index],
            f"{field} item {item_id} {reason}; valid item IDs for bundle {bundle} are 1..{limit}",
            item_id,
            "item_id_out_of_range",
            {"min": 1, "max": limit},
        )


def plan_ranking(request: RecommendRequest, served: ServedBundle, history: list[int]) -> RankingPlan:
    """Check ``history`` (the request's own or the user's stored one) and the other fields against ``served``."""
    label = f"{served.name}@{served.version}"
    check_item_ids(history, "history", label, served.num_items)
    check_item_ids(request.exclude, "exclude", label, served.num_items)

    excluded = set(request.exclude)
    if request.exclude_seen:
        excluded.update(history)
    rankable = served.num_items - len(excluded)
    if rankable == 0:
        raise FieldError(
            ["exclude"],
            f"the exclusions leave no item of bundle {served.name}@{served.version} to rank "
            f"(all {served.num_items} items excluded); exclude fewer items",
            f"{len(excluded)} items excluded",
            "nothing_to_rank",
            {"max": served.num_items - 1},
        )
    if request.k > rankable:
        raise FieldError(
            ["k"],
            f"k={request.k} exceeds the {rankable} rankable items of bundle {served.name}@{served.version} "
            f"({served.num_items} items minus {len(excluded)} excluded); use k between 1 and {rankable}",
            request.k,
            "k_above_rankable_items",
            {"min": 1, "max": rankable},
        )

    model_history = served.module.truncate(history)
    return RankingPlan(
        served=served,
        model_history=model_history,
        excluded=excluded,
        k=request.k,
        truncated=len(model_history) < len(history),
    )


def top_k(scores: torch.Tensor, excluded: set[int], k: int) -> RankedItems:
    """Best ``k`` item IDs of one score row, never the padding ID or an excluded item."""
    scores = scores.clone()
    scores[PADDING_ID] = float("-inf")
    if excluded:
        scores[torch.tensor(sorted(excluded), dtype=torch.long)] = float("-inf")
    values, indices = torch.topk(scores, k)
    return RankedItems(item_ids=indices.tolist(), scores=values.tolist())

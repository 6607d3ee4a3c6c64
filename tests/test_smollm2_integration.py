"""End-to-end checks on the real SmolLM2-135M backbone and the shipped demo bundle."""

import random

import httpx
import pytest
import torch

from model.backbone import BackboneSettings, load_backbone
from model.bundle import instantiate, read_bundle
from model.data import leave_one_out, read_interactions
from model.evaluate import evaluate_full_ranking, popularity_score_fn, popularity_scores
from tests.conftest import REPO_ROOT, SHARED_DATA, RunningServer

pytestmark = pytest.mark.integration

DEMO_BUNDLE = REPO_ROOT / "adapters" / "beauty"
# User 1's first four Beauty items (sequences.txt line 1, oldest first).
USER_HISTORY = [1, 2, 3, 4]


@pytest.fixture(scope="module")
def smollm2_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("smollm2")
    server = RunningServer("smollm2", REPO_ROOT / "adapters", root / "server.log")
    try:
        server.wait_ready(timeout_s=240)
        yield server
    finally:
        server.stop()


def test_demo_bundle_matches_backbone():
    backbone = load_backbone(BackboneSettings())
    bundle = read_bundle(DEMO_BUNDLE, expected_fingerprint=backbone.fingerprint)

    assert bundle.manifest.model.num_items == 12101
    assert bundle.manifest.backbone["name"] == "SmolLM2-135M-Instruct"
    assert sum(path.stat().st_size for path in DEMO_BUNDLE.iterdir()) < 25 * 1024 * 1024


def test_recommend_returns_ten_beauty_items(smollm2_server):
    response = httpx.post(
        f"{smollm2_server.url}/recommend", json={"bundle": "beauty", "history": USER_HISTORY, "k": 10}, timeout=60
    )

    assert response.status_code == 200
    items = [item["item_id"] for item in response.json()["items"]]
    assert len(set(items)) == 10
    assert all(1 <= item <= 12101 for item in items)
    assert not set(items) & set(USER_HISTORY)


def test_service_scores_equal_direct_forward(smollm2_server):
    history = [12, 13, 14, 15, 16, 17]
    response = httpx.post(
        f"{smollm2_server.url}/recommend", json={"bundle": "beauty", "history": history, "k": 5}, timeout=60
    ).json()

    backbone = load_backbone(BackboneSettings())
    module = instantiate(backbone, read_bundle(DEMO_BUNDLE, backbone.fingerprint))
    with torch.inference_mode():
        scores = module.score_histories([history])[0]
    scores = scores.clone()
    scores[0] = float("-inf")
    scores[history] = float("-inf")
    expected_scores, expected_items = torch.topk(scores, 5)

    assert [item["item_id"] for item in response["items"]] == expected_items.tolist()
    assert [item["score"] for item in response["items"]] == pytest.approx(expected_scores.tolist(), abs=1e-3)


def test_demo_bundle_beats_popularity_on_test_users():
    path = SHARED_DATA / "beauty" / "sequences.txt"
    if not path.exists():
        pytest.skip("the Beauty data set is not next to this checkout")
    split = leave_one_out(read_interactions(path))
    cases = random.Random(0).sample(split.test, 300)
    backbone = load_backbone(BackboneSettings())
    module = instantiate(backbone, read_bundle(DEMO_BUNDLE, backbone.fingerprint))

    bundle_metrics = evaluate_full_ranking(module.score_histories, cases, batch_size=50, progress=False)
    popularity = popularity_score_fn(popularity_scores(split.train, split.num_items))
    popularity_metrics = evaluate_full_ranking(popularity, cases, progress=False)

    assert bundle_metrics["hr_at_20"] > 2 * popularity_metrics["hr_at_20"]

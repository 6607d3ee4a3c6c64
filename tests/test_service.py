"""HTTP tests against a running ``e4srec serve`` process on the tiny backbone."""

import json

import httpx
import pytest
import torch

from model.backbone import BackboneSettings, load_backbone
from model.bundle import instantiate, read_bundle
from tests.conftest import NUM_SYNTHETIC_ITEMS


def _recommend(server, **body):
    # json.dumps writes NaN and Infinity literals, which clients can send and httpx's own encoder refuses.
    content = json.dumps(body).encode()
    return httpx.post(f"{server.url}/recommend", content=content, headers={"content-type": "application/json"}, timeout=30)


def test_scores_equal_direct_forward(tiny_server, tiny_backbone_dir, tmp_path):
    history = [5, 6, 7, 8]
    response = _recommend(tiny_server, bundle="toy", history=history, k=10)

    backbone = load_backbone(BackboneSettings(source=str(tiny_backbone_dir), cache_dir=tmp_path / "direct"))
    module = instantiate(backbone, read_bundle(tiny_server.adapters / "toy", backbone.fingerprint))
    with torch.inference_mode():
        scores = module.score_histories([history])[0]
    scores = scores.clone()
    scores[0] = float("-inf")
    scores[history] = float("-inf")
    expected_scores, expected_items = torch.topk(scores, 10)

    assert response.status_code == 200
    body = response.json()
    assert [item["item_id"] for item in body["items"]] == expected_items.tolist()
    assert [item["score"] for item in body["items"]] == pytest.approx(expected_scores.tolist(), abs=1e-5)
    assert body["bundle"] == "toy"
    assert body["version"] == module.adapter_name.split("--")[1]


def test_response_lists_k_distinct_unseen_items(tiny_server):
    history = [1, 2, 3, 50, 2]
    body = _recommend(tiny_server, bundle="toy", history=history, k=20, exclude=[4, 5]).json()

    items = [item["item_id"] for item in body["items"]]
    assert len(items) == 20
    assert len(set(items)) == 20
    assert not set(items) & {0, 1, 2, 3, 4, 5, 50}
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)


def test_exclude_seen_false_allows_history_items(tiny_server):
    history = [10, 11, 12]
    body = _recommend(tiny_server, bundle="toy", history=history, k=NUM_SYNTHETIC_ITEMS, exclude_seen=False).json()

    items = [item["item_id"] for item in body["items"]]
    assert set(history) <= set(items)
    assert 0 not in items


def test_long_history_keeps_most_recent_items(tiny_server):
    recent = [20, 21, 22, 23, 24, 25, 26, 27]
    long_history = list(range(60, 90)) + recent

    long_body = _recommend(tiny_server, bundle="toy", history=long_history, k=5, exclude_seen=False).json()
    recent_body = _recommend(tiny_server, bundle="toy", history=recent, k=5, exclude_seen=False).json()

    assert long_body["truncated"] is True
    assert long_body["used_history_length"] == 8
    assert long_body["history_length"] == len(long_history)
    assert recent_body["truncated"] is False
    assert long_body["items"] == recent_body["items"]


BAD_BODIES = {
    "padding id": ({"bundle": "toy", "history": [3, 0]}, 422, ["body", "history", 1], "padding ID"),
    "negative id": ({"bundle": "toy", "history": [-4]}, 422, ["body", "history", 0], "negative"),
    "id above item count": ({"bundle": "toy", "history": [NUM_SYNTHETIC_ITEMS + 1]}, 422, ["body", "history", 0], f"1..{NUM_SYNTHETIC_ITEMS}"),
    "id beyond 64 bit": ({"bundle": "toy", "history": [2**64 + 1]}, 422, ["body", "history", 0], "64-bit"),
    "float id": ({"bundle": "toy", "history": [1.5]}, 422, ["body", "history", 0], "integer"),
    "string id": ({"bundle": "toy", "history": ["7"]}, 422, ["body", "history", 0], "integer"),
    "empty history": ({"bundle": "toy", "history": []}, 422, ["body", "history"], "at least 1"),
    "missing history": ({"bundle": "toy"}, 422, ["body"], "exactly one of history"),
    "history and user id": ({"bundle": "toy", "history": [1], "user_id": "u1"}, 422, ["body"], "exactly one of history"),
    "invalid user id": ({"bundle": "toy", "user_id": "a b/c"}, 422, ["body", "user_id"], "pattern"),
    "k zero": ({"bundle": "toy", "history": [1], "k": 0}, 422, ["body", "k"], "greater than or equal to 1"),
    "k negative": ({"bundle": "toy", "history": [1], "k": -3}, 422, ["body", "k"], "greater than or equal to 1"),
    "k above rankable": ({"bundle": "toy", "history": [1, 2], "k": NUM_SYNTHETIC_ITEMS - 1}, 422, ["body", "k"], f"1 and {NUM_SYNTHETIC_ITEMS - 2}"),
    "exclude out of range": ({"bundle": "toy", "history": [1], "exclude": [0]}, 422, ["body", "exclude", 0], "padding ID"),
    "unknown field": ({"bundle": "toy", "history": [1], "user": 3}, 422, ["body", "user"], "Extra inputs"),
    "nan id": ({"bundle": "toy", "history": [float("nan")]}, 422, ["body", "history", 0], "integer"),
    "infinite k": ({"bundle": "toy", "history": [1], "k": float("inf")}, 422, ["body", "k"], "integer"),
    "everything excluded": ({"bundle": "toy", "history": [1], "exclude": list(range(2, NUM_SYNTHETIC_ITEMS + 1))}, 422, ["body", "exclude"], "no item"),
}


@pytest.mark.parametrize("case", list(BAD_BODIES), ids=list(BAD_BODIES))
def test_bad_input_gets_422_naming_field(tiny_server, case):
    body, status, location, message = BAD_BODIES[case]

    response = _recommend(tiny_server, **body)

    assert response.status_code == status
    detail = response.json()["detail"][0]
    assert detail["loc"] == location
    assert message in detail["msg"]
    assert _recommend(tiny_server, bundle="toy", history=[1, 2], k=3).status_code == 200


@pytest.mark.parametrize("name", ["tyo", "Toy", "toy ", "beauty"])
def test_unknown_bundle_gets_404(tiny_server, name):
    response = _recommend(tiny_server, bundle=name, history=[1, 2])

    assert response.status_code == 404
    assert f"bundle {name!r} is not installed" in response.json()["detail"]
    assert "toy" in response.json()["detail"]


@pytest.mark.parametrize(
    "content, content_type",
    [(b"not json", "application/json"), (b"{\"bundle\": \"toy\", ", "application/json"), (b"[1, 2]", "application/json"), (b"", "application/json")],
    ids=["text", "truncated", "array", "empty"],
)
def test_non_object_body_gets_4xx(tiny_server, content, content_type):
    response = httpx.post(f"{tiny_server.url}/recommend", content=content, headers={"content-type": content_type}, timeout=30)

    assert 400 <= response.status_code < 500
    assert response.json()["detail"]
    assert httpx.get(f"{tiny_server.url}/healthz").status_code == 200


def test_invalid_json_message_shows_an_example(tiny_server):
    response = httpx.post(f"{tiny_server.url}/recommend", content=b"not json", headers={"content-type": "application/json"})

    assert response.status_code == 422
    assert "not valid JSON" in response.json()["detail"][0]["msg"]


def test_huge_integer_literal_gets_4xx(tiny_server):
    content = b'{"bundle": "toy", "history": [' + b"9" * 5000 + b"]}"

    response = httpx.post(f"{tiny_server.url}/recommend", content=content, headers={"content-type": "application/json"}, timeout=30)

    assert 400 <= response.status_code < 500
    assert _recommend(tiny_server, bundle="toy", history=[1], k=1).status_code == 200


def test_adapters_lists_manifest_fields(tiny_server):
    adapters = httpx.get(f"{tiny_server.url}/adapters").json()["adapters"]

    assert [adapter["name"] for adapter in adapters] == ["toy"]
    assert adapters[0]["num_items"] == NUM_SYNTHETIC_ITEMS
    assert adapters[0]["max_history_length"] == 8
    assert "hr_at_10" in adapters[0]["metrics"]["test"]


def test_health_ready_and_docs(tiny_server):
    assert httpx.get(f"{tiny_server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{tiny_server.url}/readyz").json()
    assert ready["status"] == "ready"
    assert ready["bundles"] == 1
    assert httpx.get(f"{tiny_server.url}/docs").status_code == 200
    assert "/recommend" in httpx.get(f"{tiny_server.url}/openapi.json").json()["paths"]


def test_history_routes_reject_unknown_bundle(tiny_server):
    read = httpx.get(f"{tiny_server.url}/users/u1/history", params={"bundle": "nope"})
    delete = httpx.delete(f"{tiny_server.url}/users/u1/history", params={"bundle": "nope"})

    assert read.status_code == 404
    assert delete.status_code == 404
    assert "not installed" in read.json()["detail"]


def test_oversized_json_body_gets_413(tiny_server):
    content = b'{"bundle": "toy", "history": [' + b"1, " * 1_000_000 + b"1]}"

    response = httpx.post(f"{tiny_server.url}/recommend", content=content, headers={"content-type": "application/json"}, timeout=30)

    assert response.status_code == 413
    assert "E4SREC_MAX_REQUEST_BYTES" in response.json()["detail"]
    assert _recommend(tiny_server, bundle="toy", history=[1], k=1).status_code == 200

"""Bounded load tests against a running server on loopback: batching and back-pressure."""

import asyncio
import re
import shutil
import time

import httpx
import pytest

from tests.server_process import RunningServer

REQUESTS = 48


def _metric(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name) + (r"\{" + labels + r"\}" if labels else "") + r" ([0-9.e+-]+)"
    match = re.search(pattern, text)
    return float(match.group(1)) if match else 0.0


async def _burst(url: str, bodies: list[dict]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        return await asyncio.gather(*(client.post("/recommend", json=body) for body in bodies))


def _start(tiny_backbone_dir, trained_bundle_dir, tmp_path, **settings):
    shutil.copytree(trained_bundle_dir, tmp_path / "adapters" / "toy")
    env = {"E4SREC_CACHE_DIR": str(tmp_path / "cache"), **{f"E4SREC_{key.upper()}": str(value) for key, value in settings.items()}}
    server = RunningServer(str(tiny_backbone_dir), tmp_path / "adapters", tmp_path / "server.log", env)
    server.wait_ready(timeout_s=60)
    return server


def test_concurrent_requests_share_batches_and_match_sequential(tiny_backbone_dir, trained_bundle_dir, tmp_path):
    # The response cache is off so that the repeated requests reach the model.
    server = _start(tiny_backbone_dir, trained_bundle_dir, tmp_path, max_batch_size=16, max_wait_ms=20, response_cache_ttl_s=0)
    try:
        bodies = [{"bundle": "toy", "history": [1 + i % 90, 2 + i % 90, 3 + i % 50], "k": 5} for i in range(REQUESTS)]
        started = time.monotonic()
        concurrent = asyncio.run(_burst(server.url, bodies))
        assert time.monotonic() - started < 60
        sequential = [httpx.post(f"{server.url}/recommend", json=body, timeout=30) for body in bodies[:8]]
        metrics = httpx.get(f"{server.url}/metrics").text
    finally:
        server.stop()

    assert [response.status_code for response in concurrent] == [200] * REQUESTS
    for batched, alone in zip(concurrent[:8], sequential, strict=True):
        assert [item["item_id"] for item in batched.json()["items"]] == [item["item_id"] for item in alone.json()["items"]]
    forward_passes = _metric(metrics, "e4srec_batch_size_count")
    assert forward_passes < REQUESTS + 8
    assert _metric(metrics, "e4srec_batch_size_sum") == REQUESTS + 8


def test_full_queue_answers_503_with_retry_after(tiny_backbone_dir, trained_bundle_dir, tmp_path):
    server = _start(tiny_backbone_dir, trained_bundle_dir, tmp_path, max_batch_size=1, max_queue=2, max_wait_ms=0)
    try:
        bodies = [{"bundle": "toy", "history": list(range(1, 9)), "k": 5} for _ in range(REQUESTS)]
        responses = asyncio.run(_burst(server.url, bodies))
        health = httpx.get(f"{server.url}/healthz")
        after = httpx.post(f"{server.url}/recommend", json=bodies[0], timeout=30)
        metrics = httpx.get(f"{server.url}/metrics").text
    finally:
        server.stop()

    statuses = [response.status_code for response in responses]
    assert set(statuses) <= {200, 503}
    assert statuses.count(503) > 0
    assert statuses.count(200) >= 2
    for response in responses:
        if response.status_code == 503:
            assert response.headers["retry-after"] == "1"
            assert "queue is full" in response.json()["detail"]
    assert health.status_code == 200
    assert after.status_code == 200
    assert _metric(metrics, "e4srec_rejected_requests_total", 'reason="queue_full"') == statuses.count(503)


def test_metrics_move_with_traffic(tiny_server):
    before = httpx.get(f"{tiny_server.url}/metrics").text
    httpx.post(f"{tiny_server.url}/recommend", json={"bundle": "toy", "history": [1, 2], "k": 3}, timeout=30)
    httpx.post(f"{tiny_server.url}/recommend", json={"bundle": "toy", "history": [0], "k": 3}, timeout=30)
    after = httpx.get(f"{tiny_server.url}/metrics").text

    ok = 'method="POST",route="/recommend",status="200"'
    invalid = 'method="POST",route="/recommend",status="422"'
    assert _metric(after, "e4srec_http_requests_total", ok) == _metric(before, "e4srec_http_requests_total", ok) + 1
    assert _metric(after, "e4srec_http_requests_total", invalid) == _metric(before, "e4srec_http_requests_total", invalid) + 1
    assert _metric(after, "e4srec_forward_duration_seconds_count", 'bundle="toy"') == _metric(before, "e4srec_forward_duration_seconds_count", 'bundle="toy"') + 1
    assert _metric(after, "e4srec_prefix_cache_hits_total") == _metric(before, "e4srec_prefix_cache_hits_total") + 1
    assert _metric(after, "e4srec_queue_wait_seconds_count") == _metric(before, "e4srec_queue_wait_seconds_count") + 1
    assert _metric(after, "e4srec_resident_bundles") == 1
    assert _metric(after, "e4srec_bundle_loads_total", 'bundle="toy"') == 1
    assert "e4srec_queue_depth 0.0" in after


@pytest.mark.parametrize("route", ["/healthz", "/adapters"])
def test_metrics_use_route_templates(tiny_server, route):
    httpx.get(f"{tiny_server.url}{route}")
    text = httpx.get(f"{tiny_server.url}/metrics").text

    assert f'route="{route}"' in text


def test_requests_for_two_bundles_share_mixed_batches(tiny_backbone_dir, trained_bundle_dir, tmp_path):
    from tests.bundle_variants import make_variant

    make_variant(trained_bundle_dir, tmp_path / "adapters" / "other", name="other",
                 module_edit=lambda tensors: tensors.update({"head.item_bias": tensors["head.item_bias"].flip(0)}))
    server = _start(tiny_backbone_dir, trained_bundle_dir, tmp_path, max_batch_size=16, max_wait_ms=50, response_cache_ttl_s=0)
    try:
        bodies = [{"bundle": ("toy", "other")[i % 2], "history": [3 + i % 40, 4 + i % 40], "k": 5} for i in range(32)]
        concurrent = asyncio.run(_burst(server.url, bodies))
        alone = [httpx.post(f"{server.url}/recommend", json=body, timeout=30) for body in bodies[:6]]
        metrics = httpx.get(f"{server.url}/metrics").text
    finally:
        server.stop()

    assert [response.status_code for response in concurrent] == [200] * 32
    for mixed, single in zip(concurrent[:6], alone, strict=True):
        assert mixed.json()["bundle"] == single.json()["bundle"]
        assert [item["item_id"] for item in mixed.json()["items"]] == [item["item_id"] for item in single.json()["items"]]
    assert _metric(metrics, "e4srec_forward_duration_seconds_count", 'bundle="mixed"') >= 1

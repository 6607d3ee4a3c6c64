"""Shared state in a real Redis: user histories, the response cache, bundle events, outages."""

import shutil
import time

import httpx
import pytest

from tests.bundle_variants import archive, new_version
from tests.redis_process import RedisServer
from tests.server_process import RunningServer

TOKEN = "redis-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def repository(trained_bundle_dir, tmp_path):
    adapters = tmp_path / "adapters"
    shutil.copytree(trained_bundle_dir, adapters / "toy")
    return adapters


def _service(backbone_dir, adapters, root, redis_url=None, name="service"):
    env = {"E4SREC_CACHE_DIR": str(root / "cache"), "E4SREC_ADMIN_TOKEN": TOKEN, "E4SREC_REDIS_TIMEOUT_S": "0.3"}
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    server = RunningServer(str(backbone_dir), adapters, root / f"{name}.log", env)
    server.wait_ready(timeout_s=60)
    return server


def _recommend(server, **body):
    return httpx.post(f"{server.url}/recommend", json={"bundle": "toy", "k": 5, **body}, timeout=30)


@pytest.mark.parametrize("with_redis", [True, False], ids=["redis", "in-process"])
def test_events_history_recommend(tiny_backbone_dir, repository, tmp_path, request, with_redis):
    redis_url = request.getfixturevalue("redis_server").url if with_redis else None
    server = _service(tiny_backbone_dir, repository, tmp_path, redis_url)
    try:
        first = httpx.post(f"{server.url}/users/u-1/events", json={"bundle": "toy", "items": [3, 4]})
        second = httpx.post(f"{server.url}/users/u-1/events", json={"bundle": "toy", "items": [5]})
        stored = httpx.get(f"{server.url}/users/u-1/history", params={"bundle": "toy"})
        by_user = _recommend(server, user_id="u-1")
        explicit = _recommend(server, history=[3, 4, 5])
        deleted = httpx.delete(f"{server.url}/users/u-1/history", params={"bundle": "toy"})
        after_delete = _recommend(server, user_id="u-1")
    finally:
        server.stop()

    assert first.json()["history"] == [3, 4]
    assert second.json()["history"] == [3, 4, 5]
    assert stored.json() == {"user_id": "u-1", "bundle": "toy", "history": [3, 4, 5]}
    assert by_user.status_code == 200
    assert by_user.json()["items"] == explicit.json()["items"]
    assert deleted.json()["deleted"] is True
    assert after_delete.status_code == 404
    assert "no stored history" in after_delete.json()["detail"]


def test_stored_history_is_trimmed(tiny_backbone_dir, repository, tmp_path, redis_server):
    env_server = RunningServer(
        str(tiny_backbone_dir), repository, tmp_path / "trim.log",
        {"E4SREC_CACHE_DIR": str(tmp_path / "cache"), "REDIS_URL": redis_server.url, "E4SREC_STORED_HISTORY_LENGTH": "4"},
    )
    env_server.wait_ready(timeout_s=60)
    try:
        response = httpx.post(f"{env_server.url}/users/u-2/events", json={"bundle": "toy", "items": [1, 2, 3, 4, 5, 6]})
    finally:
        env_server.stop()

    assert response.json()["history"] == [3, 4, 5, 6]


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"bundle": "nope", "items": [1]}, 404, "not installed"),
        ({"bundle": "toy", "items": [0]}, 422, "padding ID"),
        ({"bundle": "toy", "items": [10_000]}, 422, "above the bundle's item count"),
        ({"bundle": "toy", "items": []}, 422, "at least 1"),
        ({"bundle": "toy", "items": ["x"]}, 422, "integer"),
    ],
    ids=["unknown bundle", "padding id", "out of range", "empty", "not an integer"],
)
def test_bad_events_are_rejected_and_store_nothing(tiny_backbone_dir, repository, tmp_path, redis_server, body, status, message):
    server = _service(tiny_backbone_dir, repository, tmp_path, redis_server.url)
    try:
        response = httpx.post(f"{server.url}/users/u-3/events", json=body)
        stored = httpx.get(f"{server.url}/users/u-3/history", params={"bundle": "toy"})
        bad_user = httpx.post(f"{server.url}/users/bad%20id/events", json={"bundle": "toy", "items": [1]})
    finally:
        server.stop()

    assert response.status_code == status
    assert message in str(response.json()["detail"])
    assert stored.json()["history"] == []
    assert bad_user.status_code == 422


def test_cache_hits_on_repeat_and_misses_after_replacement(tiny_backbone_dir, trained_bundle_dir, repository, tmp_path, redis_server):
    server = _service(tiny_backbone_dir, repository, tmp_path, redis_server.url)
    try:
        first = _recommend(server, history=[7, 8, 9])
        repeat = _recommend(server, history=[7, 8, 9])
        replacement = new_version(trained_bundle_dir, tmp_path / "v2" / "toy", shift=3.0)
        upload = httpx.put(f"{server.url}/adapters/toy", content=archive(replacement, tmp_path / "v2.tgz"), headers=AUTH, timeout=60)
        after = _recommend(server, history=[7, 8, 9])
        metrics = httpx.get(f"{server.url}/metrics").text
    finally:
        server.stop()

    assert first.headers["x-cache"] == "miss"
    assert repeat.headers["x-cache"] == "hit"
    assert repeat.json() == first.json()
    assert upload.status_code == 200
    assert after.headers["x-cache"] == "miss"
    assert after.json()["version"] == upload.json()["version"] != first.json()["version"]
    assert "e4srec_response_cache_hits_total 1.0" in metrics


def test_upload_reaches_other_replica(tiny_backbone_dir, trained_bundle_dir, repository, tmp_path, redis_server):
    first = _service(tiny_backbone_dir, repository, tmp_path, redis_server.url, name="a")
    second = _service(tiny_backbone_dir, repository, tmp_path, redis_server.url, name="b")
    try:
        before = _recommend(second, history=[1, 2]).json()["version"]
        replacement = new_version(trained_bundle_dir, tmp_path / "v2" / "toy", shift=3.0)
        upload = httpx.put(f"{first.url}/adapters/toy", content=archive(replacement, tmp_path / "v2.tgz"), headers=AUTH, timeout=60)
        new = upload.json()["version"]
        deadline = time.monotonic() + 15
        served = before
        while served != new and time.monotonic() < deadline:
            time.sleep(0.2)
            served = _recommend(second, history=[1, 2]).json()["version"]
        listing = httpx.get(f"{second.url}/adapters").json()["adapters"]

        deleted = httpx.delete(f"{first.url}/adapters/toy", headers=AUTH)
        deadline = time.monotonic() + 15
        after_delete = _recommend(second, history=[1, 2])
        while after_delete.status_code != 404 and time.monotonic() < deadline:
            time.sleep(0.2)
            after_delete = _recommend(second, history=[1, 2])
    finally:
        first.stop()
        second.stop()

    assert upload.status_code == 200
    assert new != before
    assert served == new
    assert [(adapter["name"], adapter["version"]) for adapter in listing] == [("toy", new)]
    assert deleted.status_code == 200
    assert after_delete.status_code == 404


def test_redis_outage_and_recovery(tiny_backbone_dir, repository, tmp_path, redis_server):
    server = _service(tiny_backbone_dir, repository, tmp_path, redis_server.url)
    try:
        httpx.post(f"{server.url}/users/u-4/events", json={"bundle": "toy", "items": [10, 11]})
        assert _recommend(server, user_id="u-4").status_code == 200

        redis_server.stop()
        explicit = _recommend(server, history=[20, 21])
        started = time.monotonic()
        by_user = _recommend(server, user_id="u-4")
        by_user_seconds = time.monotonic() - started
        events = httpx.post(f"{server.url}/users/u-4/events", json={"bundle": "toy", "items": [12]})
        health = httpx.get(f"{server.url}/healthz")
        metrics = httpx.get(f"{server.url}/metrics").text

        redis_server.start()
        deadline = time.monotonic() + 15
        recovered = _recommend(server, user_id="u-4")
        while recovered.status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
            recovered = _recommend(server, user_id="u-4")
    finally:
        server.stop()

    assert explicit.status_code == 200
    assert by_user.status_code == 503
    assert "Redis is unreachable" in by_user.json()["detail"]
    assert by_user.headers["retry-after"] == "5"
    assert by_user_seconds < 3
    assert events.status_code == 503
    assert health.status_code == 200
    assert 'e4srec_redis_errors_total{operation="cache_get"}' in metrics
    assert recovered.status_code == 200

"""Upload, replace, delete and evict bundles on a running server."""

import io
import shutil
import tarfile
import threading
import time

import httpx
import pytest
import torch

from tests.bundle_variants import archive, make_variant, new_version
from tests.server_process import RunningServer

TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
UPLOAD_LIMIT = 1_000_000
HISTORY = [5, 6, 7, 8]


def _start(backbone_dir, adapters, root, **settings):
    env = {
        "E4SREC_CACHE_DIR": str(root / "cache"),
        "E4SREC_ADMIN_TOKEN": TOKEN,
        "E4SREC_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT),
        **{f"E4SREC_{key.upper()}": str(value) for key, value in settings.items()},
    }
    server = RunningServer(str(backbone_dir), adapters, root / f"server-{time.monotonic_ns()}.log", env)
    server.wait_ready(timeout_s=60)
    return server


@pytest.fixture
def repository(trained_bundle_dir, tmp_path):
    adapters = tmp_path / "adapters"
    shutil.copytree(trained_bundle_dir, adapters / "toy")
    return adapters


@pytest.fixture
def server(tiny_backbone_dir, repository, tmp_path):
    running = _start(tiny_backbone_dir, repository, tmp_path)
    yield running
    running.stop()


def _put(server, name, body, headers=AUTH):
    return httpx.put(f"{server.url}/adapters/{name}", content=body, headers=headers, timeout=60)


def _ask(server, bundle="toy", history=HISTORY, k=5):
    return httpx.post(f"{server.url}/recommend", json={"bundle": bundle, "history": history, "k": k}, timeout=60)


def _listing(server):
    return {adapter["name"]: adapter["version"] for adapter in httpx.get(f"{server.url}/adapters").json()["adapters"]}


def _items(response):
    return [item["item_id"] for item in response.json()["items"]]


def test_upload_serves_new_bundle_and_survives_restart(server, tiny_backbone_dir, trained_bundle_dir, repository, tmp_path):
    other = make_variant(trained_bundle_dir, tmp_path / "variants" / "other", name="other")

    response = _put(server, "other", archive(other, tmp_path / "other.tar.gz"))

    assert response.status_code == 200, response.text
    assert response.json()["resident"] is True
    assert _ask(server, bundle="other").json()["bundle"] == "other"
    detail = httpx.get(f"{server.url}/adapters/other").json()
    assert detail["manifest"]["name"] == "other"
    listing = _listing(server)
    assert set(listing) == {"toy", "other"}

    server.stop()
    restarted = _start(tiny_backbone_dir, repository, tmp_path)
    try:
        assert _listing(restarted) == listing
        assert _ask(restarted, bundle="other").status_code == 200
    finally:
        restarted.stop()


def test_replace_under_load_fails_no_request(server, trained_bundle_dir, tmp_path):
    old_items = _items(_ask(server))
    old_version = _ask(server).json()["version"]
    replacement = new_version(trained_bundle_dir, tmp_path / "variants" / "toy", shift=3.0)
    body = archive(replacement, tmp_path / "toy-v2.tar.gz")

    responses, stop = [], threading.Event()

    def stream():
        with httpx.Client(base_url=server.url, timeout=60) as client:
            deadline = time.monotonic() + 30
            while not stop.is_set() and time.monotonic() < deadline:
                responses.append(client.post("/recommend", json={"bundle": "toy", "history": HISTORY, "k": 5}))

    workers = [threading.Thread(target=stream) for _ in range(4)]
    for worker in workers:
        worker.start()
    time.sleep(1.0)
    upload = _put(server, "toy", body)
    time.sleep(1.0)
    stop.set()
    for worker in workers:
        worker.join()

    assert upload.status_code == 200, upload.text
    new_version_id = upload.json()["version"]
    new_items = _items(_ask(server))
    assert new_version_id != old_version
    assert new_items != old_items
    assert responses
    assert all(response.status_code == 200 for response in responses)
    expected = {old_version: old_items, new_version_id: new_items}
    versions_seen = set()
    for response in responses:
        version = response.json()["version"]
        versions_seen.add(version)
        assert _items(response) == expected[version]
    assert new_version_id in versions_seen
    assert _listing(server) == {"toy": new_version_id}


def test_delete_removes_bundle(server, repository):
    response = httpx.delete(f"{server.url}/adapters/toy", headers=AUTH)

    assert response.status_code == 200
    assert _ask(server).status_code == 404
    assert _listing(server) == {}
    assert not (repository / "toy").exists()
    assert httpx.delete(f"{server.url}/adapters/toy", headers=AUTH).status_code == 404


def test_concurrent_uploads_of_one_name_end_consistent(server, trained_bundle_dir, tmp_path):
    bodies = [
        archive(new_version(trained_bundle_dir, tmp_path / f"v{index}" / "toy", shift=1.0 + index), tmp_path / f"v{index}.tar.gz")
        for index in range(3)
    ]
    results = [None] * len(bodies)

    def upload(index):
        results[index] = _put(server, "toy", bodies[index])

    threads = [threading.Thread(target=upload, args=(index,)) for index in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert [result.status_code for result in results] == [200, 200, 200]
    listed = _listing(server)["toy"]
    assert listed in {result.json()["version"] for result in results}
    assert _ask(server).json()["version"] == listed


def test_lru_eviction_and_reload(tiny_backbone_dir, trained_bundle_dir, repository, tmp_path):
    make_variant(trained_bundle_dir, repository / "second", name="second")
    server = _start(tiny_backbone_dir, repository, tmp_path, max_resident_bundles=1)
    try:
        first = _ask(server, bundle="second")
        resident_after_second = {a["name"]: a["resident"] for a in httpx.get(f"{server.url}/adapters").json()["adapters"]}
        again = _ask(server, bundle="toy")
        resident_after_toy = {a["name"]: a["resident"] for a in httpx.get(f"{server.url}/adapters").json()["adapters"]}
        reloaded = _ask(server, bundle="second")
        metrics = httpx.get(f"{server.url}/metrics").text
    finally:
        server.stop()

    assert first.status_code == 200
    assert again.status_code == 200
    assert _items(reloaded) == _items(first)
    assert resident_after_second == {"second": True, "toy": False}
    assert resident_after_toy == {"second": False, "toy": True}
    # The start-up scan loads "second" only (sorted first, capacity 1).
    assert 'e4srec_bundle_evictions_total{bundle="second"} 1.0' in metrics
    assert 'e4srec_bundle_evictions_total{bundle="toy"} 1.0' in metrics
    assert 'e4srec_bundle_loads_total{bundle="second"} 2.0' in metrics
    assert 'e4srec_resident_bundles 1.0' in metrics


def _tar_with(entries: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buffer.getvalue()


def _files(folder):
    return {path.name: path.read_bytes() for path in folder.iterdir()}


def _invalid_uploads(trained_bundle_dir, tmp_path):
    variants = tmp_path / "invalid"

    def rank_16(tensors):
        for key in list(tensors):
            if "lora_A" in key:
                tensors[key] = torch.zeros(16, tensors[key].shape[1])
            elif "lora_B" in key:
                tensors[key] = torch.zeros(tensors[key].shape[0], 16)

    def other_hidden(tensors):
        tensors["projector.weight"] = torch.zeros(32, tensors["projector.weight"].shape[1])
        tensors["projector.bias"] = torch.zeros(32)

    def head_items(tensors):
        tensors["head.item_bias"] = torch.zeros(tensors["head.item_bias"].shape[0] + 5)

    files = _files(trained_bundle_dir)
    truncated = dict(files, **{"adapter_model.safetensors": files["adapter_model.safetensors"][:100]})
    zero_byte = dict(files, **{"e4srec.safetensors": b""})
    no_manifest = {name: data for name, data in files.items() if name != "manifest.json"}
    return {
        "lora rank 8 in manifest, rank 16 tensors": (
            archive(make_variant(trained_bundle_dir, variants / "a" / "toy", lora_edit=rank_16), tmp_path / "a.tgz"), 422, "rank 16"),
        "projector for another hidden size": (
            archive(make_variant(trained_bundle_dir, variants / "b" / "toy", module_edit=other_hidden), tmp_path / "b.tgz"), 422, "projector.weight"),
        "head item count differs from ID table": (
            archive(make_variant(trained_bundle_dir, variants / "c" / "toy", module_edit=head_items), tmp_path / "c.tgz"), 422, "head.item_bias"),
        "truncated safetensors": (_tar_with({f"toy/{n}": d for n, d in truncated.items()}), 422, "adapter_model.safetensors"),
        "zero-byte file": (_tar_with({f"toy/{n}": d for n, d in zero_byte.items()}), 422, "e4srec.safetensors"),
        "archive without manifest": (_tar_with({f"toy/{n}": d for n, d in no_manifest.items()}), 422, "manifest.json"),
        "path escaping the folder": (_tar_with({"../manifest.json": files["manifest.json"]}), 422, "escapes"),
        "absolute path": (_tar_with({"/tmp/manifest.json": files["manifest.json"]}), 422, "absolute"),
        "symbolic link": (_tar_with({"toy/manifest.json": files["manifest.json"]}, {"toy/e4srec.safetensors": "/etc/passwd"}), 422, "link"),
        "not an archive": (b"definitely not a tar file", 422, "not a tar archive"),
        "empty body": (b"", 422, "empty"),
        "name differs from manifest": (
            archive(make_variant(trained_bundle_dir, variants / "d" / "other", name="other"), tmp_path / "d.tgz"), 422, "uploaded as 'toy'"),
    }


def test_invalid_uploads_change_nothing(server, trained_bundle_dir, repository, tmp_path):
    before_listing = _listing(server)
    before_items = _items(_ask(server))
    before_files = _files(repository / "toy")

    for case, (body, status, message) in _invalid_uploads(trained_bundle_dir, tmp_path).items():
        response = _put(server, "toy", body)

        assert response.status_code == status, f"{case}: {response.status_code} {response.text}"
        assert message in response.json()["detail"], f"{case}: {response.json()['detail']}"
        assert _listing(server) == before_listing, case
        assert _items(_ask(server)) == before_items, case
        assert _files(repository / "toy") == before_files, case
        assert sorted(path.name for path in repository.iterdir()) == ["toy"], case


def test_oversized_upload_gets_413(server, repository):
    body = b"x" * (UPLOAD_LIMIT + 1)

    declared = _put(server, "toy", body)

    def chunks():
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    streamed = httpx.put(f"{server.url}/adapters/toy", content=chunks(), headers=AUTH, timeout=60)

    assert declared.status_code == 413
    assert streamed.status_code == 413
    assert str(UPLOAD_LIMIT) in streamed.json()["detail"]
    assert sorted(path.name for path in repository.iterdir()) == ["toy"]
    assert _ask(server).status_code == 200


@pytest.mark.parametrize("name", ["toyy", "to", "TOY", "toy-"])
def test_near_miss_names_get_404(server, name):
    response = _ask(server, bundle=name)

    assert response.status_code == 404
    assert name in response.json()["detail"]
    assert httpx.get(f"{server.url}/adapters/{name}").status_code == 404


def test_admin_routes_need_the_token(server, trained_bundle_dir, tmp_path):
    body = archive(trained_bundle_dir, tmp_path / "same.tar.gz")

    assert _put(server, "toy", body, headers={}).status_code == 401
    assert _put(server, "toy", body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.delete(f"{server.url}/adapters/toy").status_code == 401
    assert _listing(server) == {"toy": _ask(server).json()["version"]}


def test_admin_routes_disabled_without_token(tiny_backbone_dir, repository, tmp_path):
    env = {"E4SREC_CACHE_DIR": str(tmp_path / "cache")}
    server = RunningServer(str(tiny_backbone_dir), repository, tmp_path / "plain.log", env)
    server.wait_ready(timeout_s=60)
    try:
        response = httpx.delete(f"{server.url}/adapters/toy", headers=AUTH)
    finally:
        server.stop()

    assert response.status_code == 403
    assert "E4SREC_ADMIN_TOKEN" in response.json()["detail"]


def test_no_room_beside_pinned_bundle_gets_503(tiny_backbone_dir, trained_bundle_dir, repository, tmp_path):
    make_variant(trained_bundle_dir, repository / "second", name="second")
    server = _start(tiny_backbone_dir, repository, tmp_path, max_resident_bundles=1, pinned_bundles="toy")
    try:
        blocked = _ask(server, bundle="second")
        pinned = _ask(server, bundle="toy")
    finally:
        server.stop()

    assert blocked.status_code == 503
    assert "all pinned" in blocked.json()["detail"]
    assert blocked.headers["retry-after"] == "5"
    assert pinned.status_code == 200

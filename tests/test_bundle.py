import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.backbone import BackboneSettings, load_backbone
from model.bundle import (
    LORA_WEIGHTS_FILE,
    MANIFEST_FILE,
    MODULE_FILE,
    BundleError,
    instantiate,
    read_bundle,
    read_manifest,
    write_bundle,
)


def _copy(trained_bundle_dir, tmp_path):
    target = tmp_path / "toy"
    shutil.copytree(trained_bundle_dir, target)
    return target


def _rewrite_manifest(folder, change):
    values = json.loads((folder / MANIFEST_FILE).read_text())
    change(values)
    (folder / MANIFEST_FILE).write_text(json.dumps(values))


def test_round_trip_gives_same_scores(tiny_backbone, tiny_backbone_dir, trained_bundle_dir, tmp_path):
    first = instantiate(tiny_backbone, read_bundle(trained_bundle_dir, tiny_backbone.fingerprint))
    histories = [[1, 2, 3], [7]]
    with torch.inference_mode():
        before = first.score_histories(histories)
    write_bundle(first, tmp_path / "toy", "toy", training={}, metrics={})

    fresh_backbone = load_backbone(BackboneSettings(source=str(tiny_backbone_dir), cache_dir=tmp_path / "cache"))
    second = instantiate(fresh_backbone, read_bundle(tmp_path / "toy", fresh_backbone.fingerprint))
    with torch.inference_mode():
        after = second.score_histories(histories)

    torch.testing.assert_close(after, before, atol=0, rtol=0)


def test_manifest_records_training_and_metrics(trained_bundle_dir):
    manifest = read_manifest(trained_bundle_dir)

    assert manifest.name == "toy"
    assert len(manifest.version) == 12
    assert manifest.training["trainable_parameters"] > 0
    assert "command" in manifest.training
    assert set(manifest.metrics["test"]) >= {"hr_at_5", "hr_at_10", "hr_at_20", "ndcg_at_5", "ndcg_at_10", "ndcg_at_20"}


def test_fingerprint_mismatch_is_rejected(trained_bundle_dir):
    with pytest.raises(BundleError, match="fingerprint"):
        read_bundle(trained_bundle_dir, expected_fingerprint="0000000000000000")


def test_changed_tensor_file_fails_version_check(trained_bundle_dir, tmp_path):
    folder = _copy(trained_bundle_dir, tmp_path)
    tensors = load_file(str(folder / MODULE_FILE))
    tensors["projector.bias"] = tensors["projector.bias"] + 1.0
    save_file(tensors, str(folder / MODULE_FILE))

    with pytest.raises(BundleError, match="content hash"):
        read_bundle(folder)


def test_truncated_safetensors_is_rejected(trained_bundle_dir, tmp_path):
    folder = _copy(trained_bundle_dir, tmp_path)
    data = (folder / LORA_WEIGHTS_FILE).read_bytes()
    (folder / LORA_WEIGHTS_FILE).write_bytes(data[: len(data) // 2])

    with pytest.raises(BundleError, match="not a readable safetensors file"):
        read_bundle(folder)


def test_item_count_mismatch_names_tensor(trained_bundle_dir, tmp_path):
    folder = _copy(trained_bundle_dir, tmp_path)
    _rewrite_manifest(folder, lambda values: values["model"].update(num_items=101))

    with pytest.raises(BundleError, match=r"id_embeddings.weight has shape \(101, 16\), expected \(102, 16\)"):
        read_bundle(folder)


def test_lora_rank_mismatch_is_rejected(trained_bundle_dir, tmp_path):
    folder = _copy(trained_bundle_dir, tmp_path)
    _rewrite_manifest(folder, lambda values: values["model"]["lora"].update(r=16))

    with pytest.raises(BundleError, match="manifest sets r=16"):
        read_bundle(folder)


def test_missing_manifest_is_rejected(trained_bundle_dir, tmp_path):
    folder = _copy(trained_bundle_dir, tmp_path)
    (folder / MANIFEST_FILE).unlink()

    with pytest.raises(BundleError, match="manifest.json is missing"):
        read_bundle(folder)


def test_non_finite_tensor_is_rejected(trained_bundle_dir, tmp_path):
    folder = _copy(trained_bundle_dir, tmp_path)
    tensors = load_file(str(folder / MODULE_FILE))
    tensors["head.item_bias"][3] = float("nan")
    save_file(tensors, str(folder / MODULE_FILE))

    with pytest.raises(BundleError, match="NaN or infinite"):
        read_bundle(folder)


def test_invalid_bundle_name_is_rejected(trained_bundle_dir, tmp_path):
    folder = _copy(trained_bundle_dir, tmp_path)
    _rewrite_manifest(folder, lambda values: values.update(name="../escape"))

    with pytest.raises(BundleError, match="bundle name"):
        read_bundle(folder)

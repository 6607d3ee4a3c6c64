"""Batched, prefix-cached and bfloat16 serving rank like the plain float32 path."""

import pytest
import torch

from model.backbone import BackboneSettings, load_backbone
from model.bundle import instantiate, read_bundle
from model.evaluate import evaluate_full_ranking


def _module(tiny_backbone_dir, bundle_dir, cache_dir, dtype="float32"):
    backbone = load_backbone(BackboneSettings(source=str(tiny_backbone_dir), cache_dir=cache_dir, dtype=dtype))
    return instantiate(backbone, read_bundle(bundle_dir, backbone.fingerprint))


@pytest.fixture
def plain(tiny_backbone_dir, trained_bundle_dir, tmp_path):
    return _module(tiny_backbone_dir, trained_bundle_dir, tmp_path)


def test_batched_scores_equal_single(plain, synthetic_split):
    histories = [case.history for case in synthetic_split.test[:24]]

    with torch.inference_mode():
        batched = plain.score_histories(histories)
        single = torch.cat([plain.score_histories([history]) for history in histories])

    torch.testing.assert_close(batched, single, atol=1e-4, rtol=1e-4)


def test_prefix_cache_ranks_like_plain_path(plain, synthetic_split):
    histories = [case.history for case in synthetic_split.test[:24]]

    with torch.inference_mode():
        reference = plain.score_histories(histories)
        cached = plain.score_histories(histories, use_prefix_cache=True)

    torch.testing.assert_close(cached, reference, atol=1e-4, rtol=1e-4)
    assert torch.equal(cached.topk(10).indices, reference.topk(10).indices)


def test_bfloat16_ranks_like_float32(plain, tiny_backbone_dir, trained_bundle_dir, synthetic_split, tmp_path):
    bf16 = _module(tiny_backbone_dir, trained_bundle_dir, tmp_path / "bf16", dtype="bfloat16")

    with torch.inference_mode():
        reference = evaluate_full_ranking(plain.score_histories, synthetic_split.test, progress=False)
        reduced = evaluate_full_ranking(bf16.score_histories, synthetic_split.test, progress=False)
        top_plain = plain.score_histories([[5, 6, 7]]).topk(10).indices[0].tolist()
        top_bf16 = bf16.score_histories([[5, 6, 7]]).topk(10).indices[0].tolist()

    assert abs(reduced["hr_at_10"] - reference["hr_at_10"]) < 0.03
    assert len(set(top_plain) & set(top_bf16)) >= 8


def test_mixed_batch_equals_per_bundle_scores(tiny_backbone_dir, trained_bundle_dir, tmp_path):
    from model.bundle import instantiate, read_bundle
    from model.mixed_batch import score_mixed_batch
    from tests.bundle_variants import new_version

    backbone = load_backbone(BackboneSettings(source=str(tiny_backbone_dir), cache_dir=tmp_path / "cache"))
    other_dir = new_version(trained_bundle_dir, tmp_path / "other" / "toy", shift=2.0)
    first = instantiate(backbone, read_bundle(trained_bundle_dir, backbone.fingerprint), adapter_name="first")
    second = instantiate(backbone, read_bundle(other_dir, backbone.fingerprint), adapter_name="second")
    rows = [(first, [1, 2, 3]), (second, [4, 5, 6, 7, 8, 9]), (first, [10]), (second, [3])]

    with torch.inference_mode():
        mixed = score_mixed_batch(backbone, rows)
        alone = [module.score_histories([history])[0] for module, history in rows]

    for got, expected in zip(mixed, alone, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(mixed[0], mixed[3])

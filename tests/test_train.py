import json

import pytest
import torch

from model.bundle import instantiate, read_bundle, read_manifest
from model.evaluate import evaluate_full_ranking
from model.train import TrainOptions, train_bundle
from tests.conftest import NUM_SYNTHETIC_ITEMS


def test_trainer_beats_random_by_far(trained_bundle_dir):
    metrics = read_manifest(trained_bundle_dir).metrics["test"]
    random_hr_at_10 = 10 / NUM_SYNTHETIC_ITEMS

    assert metrics["hr_at_10"] > 5 * random_hr_at_10
    assert metrics["num_cases"] == 400


def test_written_bundle_reproduces_reported_metrics(tiny_backbone, trained_bundle_dir, synthetic_split):
    module = instantiate(tiny_backbone, read_bundle(trained_bundle_dir, tiny_backbone.fingerprint))

    metrics = evaluate_full_ranking(module.score_histories, synthetic_split.test, progress=False)

    reported = read_manifest(trained_bundle_dir).metrics["test"]
    assert abs(metrics["ndcg_at_10"] - reported["ndcg_at_10"]) < 1e-6


def test_resumed_training_matches_uninterrupted(tiny_backbone_dir, synthetic_split, synthetic_ids, tmp_path):
    from model.backbone import BackboneSettings, load_backbone

    def run(output, checkpoint_dir, epochs):
        backbone = load_backbone(BackboneSettings(source=str(tiny_backbone_dir), cache_dir=tmp_path / "cache"))
        options = TrainOptions(
            name="resume", output=output, ids=synthetic_ids, epochs=epochs, batch_size=32,
            progress=False, checkpoint_dir=checkpoint_dir, eval_users=50, warmup_steps=2,
        )
        train_bundle(backbone, synthetic_split, options, {"source": "synthetic"})
        return read_bundle(output)

    # The interrupted run stops after half an epoch; the second call resumes
    # from its checkpoint and finishes the same schedule.
    def stop_half_way(output):
        backbone = load_backbone(BackboneSettings(source=str(tiny_backbone_dir), cache_dir=tmp_path / "cache"))
        options = TrainOptions(
            name="resume", output=output, ids=synthetic_ids, epochs=1.0, batch_size=32,
            progress=False, checkpoint_dir=tmp_path / "ckpt-b", eval_users=50, warmup_steps=2, max_minutes=0.0,
        )
        train_bundle(backbone, synthetic_split, options, {"source": "synthetic"})

    uninterrupted = run(tmp_path / "a", tmp_path / "ckpt-a", 1.0)
    stop_half_way(tmp_path / "b-partial")
    resumed = run(tmp_path / "b", tmp_path / "ckpt-b", 1.0)

    assert read_manifest(tmp_path / "b-partial").training["steps"] == 1
    for name, tensor in uninterrupted.module_tensors.items():
        torch.testing.assert_close(resumed.module_tensors[name], tensor, atol=1e-6, rtol=1e-5)
    for name, tensor in uninterrupted.lora_tensors.items():
        torch.testing.assert_close(resumed.lora_tensors[name], tensor, atol=1e-6, rtol=1e-5)


def _train(tiny_backbone_dir, synthetic_split, tmp_path, ids, **overrides):
    from model.backbone import BackboneSettings, load_backbone

    backbone = load_backbone(BackboneSettings(source=str(tiny_backbone_dir), cache_dir=tmp_path / "cache"))
    settings = {"epochs": 1.0, "batch_size": 32, "progress": False, "eval_users": 50, "warmup_steps": 2, **overrides}
    options = TrainOptions(name="option", output=tmp_path / "bundle", ids=ids, **settings)
    train_bundle(backbone, synthetic_split, options, {"source": "synthetic"})
    return read_bundle(tmp_path / "bundle")


def test_frozen_id_table_stays_unchanged(tiny_backbone_dir, synthetic_split, synthetic_ids, tmp_path):
    from safetensors.torch import load_file

    bundle = _train(tiny_backbone_dir, synthetic_split, tmp_path, synthetic_ids)

    pretrained = load_file(str(synthetic_ids / "item_embeddings.safetensors"))["item_embeddings"]
    torch.testing.assert_close(bundle.module_tensors["id_embeddings.weight"], pretrained)


def test_train_ids_fine_tunes_table(tiny_backbone_dir, synthetic_split, synthetic_ids, tmp_path):
    from safetensors.torch import load_file

    bundle = _train(tiny_backbone_dir, synthetic_split, tmp_path, synthetic_ids, train_ids=True)

    pretrained = load_file(str(synthetic_ids / "item_embeddings.safetensors"))["item_embeddings"]
    assert not torch.allclose(bundle.module_tensors["id_embeddings.weight"], pretrained)
    assert bundle.manifest.training["train_ids"] is True


def test_random_id_table_has_requested_size(tiny_backbone_dir, synthetic_split, tmp_path):
    bundle = _train(tiny_backbone_dir, synthetic_split, tmp_path, None, random_id_dim=8, train_ids=True, lr_schedule="constant")

    assert bundle.manifest.model.id_dim == 8
    assert bundle.manifest.training["id_embeddings"] == "random"
    assert bundle.manifest.training["lr_schedule"] == "constant"


def test_shuffled_order_is_recorded(tiny_backbone_dir, synthetic_split, synthetic_ids, tmp_path):
    bundle = _train(tiny_backbone_dir, synthetic_split, tmp_path, synthetic_ids, batch_order="shuffled")

    assert bundle.manifest.training["batch_order"] == "shuffled"
    assert bundle.manifest.metrics["test"]["hr_at_10"] > 3 * 10 / NUM_SYNTHETIC_ITEMS


def test_invalid_batch_order_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="batch_order 'sorted' is invalid; use one of shuffled, length"):
        TrainOptions(name="option", output=tmp_path / "bundle", ids=None, batch_order="sorted")


def test_periodic_validation_keeps_best_step(tiny_backbone_dir, synthetic_split, synthetic_ids, tmp_path):
    bundle = _train(tiny_backbone_dir, synthetic_split, tmp_path, synthetic_ids, epochs=3.0, eval_every=3, valid_users=100, patience=2)

    curve = bundle.manifest.training["valid_curve"]
    best = max(curve, key=lambda point: point["ndcg_at_10"])
    assert len(curve) >= 2
    assert [point["step"] for point in curve] == sorted(point["step"] for point in curve)
    assert bundle.manifest.training["best_step"] == best["step"]
    assert bundle.manifest.training["loss_curve"]


def test_plot_training_writes_png(trained_bundle_dir, tmp_path):
    from model.cli import main

    output = tmp_path / "curves.png"

    assert main(["plot-training", str(trained_bundle_dir), "-o", str(output)]) == 0
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_training_reads_exported_manifest(trained_bundle_dir, tmp_path):
    from model.cli import main

    manifest = json.loads((trained_bundle_dir / "manifest.json").read_text())
    exported = tmp_path / "exported-manifest.json"
    exported.write_text(json.dumps({key: manifest[key] for key in ("name", "version", "training", "metrics", "model")}))
    output = tmp_path / "curves.png"

    assert main(["plot-training", str(exported), "-o", str(output)]) == 0
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("metrics.json", json.dumps({"test": {"hr_at_10": 0.1}}), "is not a bundle manifest"),
        ("manifest.json", '{"name": "beauty",', "is not valid JSON"),
        ("list.json", "[1, 2]", "must contain a JSON object"),
        ("absent", None, "bundle folder or a manifest JSON file"),
    ],
)
def test_plot_training_rejects_bad_source(tmp_path, capsys, name, text, message):
    from model.cli import main

    source = tmp_path / name
    if text is not None:
        source.write_text(text)
    output = tmp_path / "curves.png"

    assert main(["plot-training", str(source), "-o", str(output)]) != 0
    assert message in capsys.readouterr().err
    assert not output.exists()


def test_plot_pretrain_writes_png(synthetic_ids, tmp_path):
    from model.cli import main

    output = tmp_path / "sasrec.png"

    assert main(["plot-pretrain", str(synthetic_ids), "-o", str(output)]) == 0
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_pretrain_rejects_folder_without_metrics(tmp_path, capsys):
    from model.cli import main

    status = main(["plot-pretrain", str(tmp_path), "-o", str(tmp_path / "sasrec.png")])

    assert status == 2
    assert "metrics.json does not exist" in capsys.readouterr().err
    assert not (tmp_path / "sasrec.png").exists()


def test_pretrain_ids_rejects_bad_heads(synthetic_data_file, tmp_path, capsys):
    from model.cli import main

    output = tmp_path / "ids"
    status = main(["pretrain-ids", "--data", str(synthetic_data_file), "--output", str(output), "--num-heads", "3"])

    assert status == 2
    assert "num_heads 3 is invalid: it must be a positive divisor of hidden_size 64" in capsys.readouterr().err
    assert not output.exists()


def test_pretrain_ids_rejects_unknown_block(synthetic_data_file, tmp_path, capsys):
    from model.cli import main

    output = tmp_path / "ids"
    with pytest.raises(SystemExit) as stopped:
        main(["pretrain-ids", "--data", str(synthetic_data_file), "--output", str(output), "--block", "post-norm"])

    assert stopped.value.code == 2
    assert "argument --block: invalid choice: 'post-norm'" in capsys.readouterr().err
    assert not output.exists()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--lr-decay", "1.5", "lr_decay 1.5 is invalid: pass a factor in (0, 1]"),
        ("--lr-decay", "0", "lr_decay 0.0 is invalid: pass a factor in (0, 1]"),
        ("--lr-decay-patience", "0", "lr_decay_patience 0 is invalid: pass at least 1 epoch"),
    ],
)
def test_pretrain_ids_rejects_bad_lr_decay(synthetic_data_file, tmp_path, capsys, option, value, message):
    from model.cli import main

    output = tmp_path / "ids"
    status = main(["pretrain-ids", "--data", str(synthetic_data_file), "--output", str(output), option, value])

    assert status == 2
    assert message in capsys.readouterr().err
    assert not output.exists()


def _stalling_data(folder):
    import random

    from tests.tiny import write_sequences_txt

    # Random sequences leave nothing to learn, so validation stalls within a few epochs.
    rng = random.Random(0)
    sequences = [[rng.randint(1, 40) for _ in range(8)] for _ in range(200)]
    return write_sequences_txt(folder / "sequences.txt", sequences)


def test_lr_decay_follows_the_validation_plateau(tmp_path):
    from model.data import leave_one_out, read_interactions
    from model.pretrain_ids import PretrainOptions, pretrain_ids

    split = leave_one_out(read_interactions(_stalling_data(tmp_path)))
    options = PretrainOptions(
        hidden_size=16, dropout=0.2, max_epochs=12, max_length=20, learning_rate=3e-3,
        lr_decay=0.5, lr_decay_patience=1, patience=100,
    )
    history = pretrain_ids(split, tmp_path / "ids", options)["history"]

    # The rate halves once the epochs without a gain exceed the patience of one epoch.
    expected, best, epochs_without_gain = 3e-3, -1.0, 0
    for epoch in history:
        assert epoch["lr"] == pytest.approx(expected)
        ndcg = epoch["valid"]["ndcg_at_10"]
        epochs_without_gain = 0 if ndcg > best else epochs_without_gain + 1
        best = max(best, ndcg)
        if epochs_without_gain > 1:
            expected, epochs_without_gain = expected * 0.5, 0
    assert history[-1]["lr"] < 3e-3


def test_lr_decay_of_one_keeps_rate(tmp_path):
    from model.cli import main

    status = main([
        "pretrain-ids", "--data", str(_stalling_data(tmp_path)), "--output", str(tmp_path / "ids"),
        "--lr-decay", "1", "--max-epochs", "8", "--patience", "100", "--hidden-size", "16",
    ])

    history = json.loads((tmp_path / "ids" / "metrics.json").read_text())["history"]
    assert status == 0
    assert [epoch["lr"] for epoch in history] == [2e-3] * 8


def test_validation_covers_the_final_step(tiny_backbone_dir, synthetic_split, synthetic_ids, tmp_path):
    bundle = _train(tiny_backbone_dir, synthetic_split, tmp_path, synthetic_ids, epochs=1.0, eval_every=5, valid_users=100, patience=10)

    steps = bundle.manifest.training["steps"]
    curve_steps = [point["step"] for point in bundle.manifest.training["valid_curve"]]
    assert steps % 5 != 0
    assert curve_steps == [*range(5, steps, 5), steps]


def test_best_state_survives_further_training(trained_bundle_dir, tiny_backbone):
    from model.bundle import instantiate
    from model.checkpoint import BestState
    from model.lora import adapter_state_dict

    adapter_name = "best-state"
    module = instantiate(tiny_backbone, read_bundle(trained_bundle_dir), adapter_name)
    best = BestState.capture(module, tiny_backbone, adapter_name, step=1, ndcg_at_10=0.5)
    before_module = {name: tensor.clone() for name, tensor in best.module_tensors.items()}
    before_lora = {name: tensor.clone() for name, tensor in best.lora_tensors.items()}

    # An optimizer step changes the live weights in place.
    with torch.no_grad():
        module.projector.weight.add_(1.0)
        for name, parameter in tiny_backbone.peft_model.named_parameters():
            if f"lora_A.{adapter_name}." in name:
                parameter.add_(1.0)

    assert not torch.equal(module.bundle_tensors()["projector.weight"], before_module["projector.weight"])
    assert any(not torch.equal(tensor, before_lora[name]) for name, tensor in adapter_state_dict(tiny_backbone, adapter_name).items())
    for name, tensor in before_module.items():
        torch.testing.assert_close(best.module_tensors[name], tensor)
    for name, tensor in before_lora.items():
        torch.testing.assert_close(best.lora_tensors[name], tensor)

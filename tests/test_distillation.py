import argparse
import math
import shutil

import pytest
import torch
from safetensors.torch import save_file

from model.bundle import read_manifest
from model.distillation import DistillationError, DistillationSettings, distillation_loss, load_teacher, load_teachers, teacher_logits
from model.e4srec import supervised_labels
from model.train import TrainOptions, add_train_arguments, train_bundle
from tests.conftest import NUM_SYNTHETIC_ITEMS

SEQUENCES = [[1, 2, 3, 4, 5, 6], [7, 8], [9, 10, 11, 12]]


@pytest.fixture(scope="module")
def teacher(synthetic_ids):
    return load_teacher(synthetic_ids, NUM_SYNTHETIC_ITEMS, 20, torch.device("cpu"))


@pytest.fixture(scope="module")
def second_teacher_dir(synthetic_ids, tmp_path_factory):
    """A copy of the pretrain-ids folder whose SASRec weights are perturbed, standing in for another seed."""
    folder = tmp_path_factory.mktemp("second-teacher")
    shutil.copytree(synthetic_ids, folder, dirs_exist_ok=True)
    generator = torch.Generator().manual_seed(7)
    state = load_teacher(synthetic_ids, NUM_SYNTHETIC_ITEMS, 20, torch.device("cpu")).state_dict()
    perturbed = {name: tensor + 0.1 * torch.randn(tensor.shape, generator=generator) for name, tensor in state.items()}
    save_file(perturbed, str(folder / "sasrec.safetensors"))
    return folder


@pytest.mark.parametrize("with_response", [False, True])
def test_teacher_rows_follow_bundle_rows(teacher, with_response):
    max_history_length = 3

    scores = teacher_logits(teacher, SEQUENCES, max_history_length, with_response)

    # Row by row: the teacher's scores after each prefix that the bundle
    # supervises, the last three of each sequence, plus the whole input again
    # for the response position.
    first = [[1, 2, 3], [1, 2, 3, 4], [1, 2, 3, 4, 5]] + ([[1, 2, 3, 4, 5]] if with_response else [])
    second = [[7]] + ([[7]] if with_response else [])
    third = [[9], [9, 10], [9, 10, 11]] + ([[9, 10, 11]] if with_response else [])
    expected = teacher.full_sort_predict(first + second + third)
    labels = supervised_labels(SEQUENCES, max_history_length, with_response)
    assert scores.shape == (len(labels), NUM_SYNTHETIC_ITEMS + 1)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)


def test_ensemble_scores_are_the_mean_of_its_members(synthetic_ids, second_teacher_dir):
    first = load_teacher(synthetic_ids, NUM_SYNTHETIC_ITEMS, 20, torch.device("cpu"))
    second = load_teacher(second_teacher_dir, NUM_SYNTHETIC_ITEMS, 20, torch.device("cpu"))
    ensemble = load_teachers([synthetic_ids, second_teacher_dir], NUM_SYNTHETIC_ITEMS, 20, torch.device("cpu"))

    scores = teacher_logits(ensemble, SEQUENCES, 3, with_response=False)

    single = [teacher_logits(model, SEQUENCES, 3, with_response=False) for model in (first, second)]
    assert not torch.allclose(single[0], single[1])
    torch.testing.assert_close(scores, (single[0] + single[1]) / 2, atol=1e-5, rtol=1e-5)
    assert not any(parameter.requires_grad for parameter in ensemble.parameters())


def test_ensemble_rejects_a_folder_given_twice(synthetic_ids):
    with pytest.raises(DistillationError, match="is given twice; pass each pretrain-ids folder once"):
        load_teachers([synthetic_ids, synthetic_ids], NUM_SYNTHETIC_ITEMS, 20, torch.device("cpu"))


def test_ensemble_needs_a_member():
    with pytest.raises(DistillationError, match="a teacher needs at least one SASRec model"):
        load_teachers([], NUM_SYNTHETIC_ITEMS, 20, torch.device("cpu"))


def test_teacher_rejects_longer_histories(synthetic_ids):
    with pytest.raises(DistillationError, match="max_history_length 21 is above the max_length 20 of teacher"):
        load_teacher(synthetic_ids, NUM_SYNTHETIC_ITEMS, 21, torch.device("cpu"))


def test_weight_zero_is_plain_cross_entropy():
    logits, labels = torch.randn(4, 6), torch.tensor([1, 2, 3, 5])
    teacher_scores = torch.randn(4, 6)

    loss = distillation_loss(logits, labels, teacher_scores, DistillationSettings(weight=0.0))

    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, labels))


def test_matching_teacher_leaves_label_term():
    teacher_scores = torch.tensor([[0.0, 2.0, 1.0, -1.0]])
    # The bundle copies the teacher and gives the padding ID no probability either.
    logits = teacher_scores.clone()
    logits[:, 0] = -1e9
    labels = torch.tensor([2])

    loss = distillation_loss(logits, labels, teacher_scores, DistillationSettings(weight=0.5, temperature=2.0))

    assert loss.item() == pytest.approx(0.5 * torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)


def test_soft_term_matches_hand_computed_kl():
    # Padding ID 0 plus two items. The teacher puts 3/4 on item 1, the bundle 1/2.
    teacher_scores = torch.tensor([[5.0, math.log(3.0), 0.0]])
    logits = torch.tensor([[-1e9, 0.0, 0.0]])
    labels = torch.tensor([1])

    loss = distillation_loss(logits, labels, teacher_scores, DistillationSettings(weight=1.0, temperature=1.0))

    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_temperature_softens_and_rescales():
    teacher_scores = torch.tensor([[0.0, 4.0, 0.0]])
    logits = torch.tensor([[-1e9, 0.0, 0.0]])
    labels = torch.tensor([1])

    loss = distillation_loss(logits, labels, teacher_scores, DistillationSettings(weight=1.0, temperature=2.0))

    # At T = 2 the teacher's odds are e^2 : 1, and the result is scaled by T^2 = 4.
    high = math.exp(2.0) / (math.exp(2.0) + 1.0)
    expected = 4.0 * (high * math.log(high / 0.5) + (1 - high) * math.log((1 - high) / 0.5))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"weight": 1.5}, r"distillation weight 1.5 is invalid: pass a share in \[0, 1\]"),
        ({"weight": -0.1}, r"distillation weight -0.1 is invalid"),
        ({"temperature": 0.0}, "distillation temperature 0.0 is invalid: pass a positive value"),
    ],
)
def test_invalid_settings_are_rejected(settings, message):
    with pytest.raises(DistillationError, match=message):
        DistillationSettings(**settings)


def test_missing_teacher_file_is_named(synthetic_ids, tmp_path):
    folder = tmp_path / "ids"
    shutil.copytree(synthetic_ids, folder)
    (folder / "sasrec.safetensors").unlink()

    with pytest.raises(DistillationError, match=r"teacher file .*sasrec.safetensors not found; pass a folder written by e4srec pretrain-ids"):
        load_teacher(folder, NUM_SYNTHETIC_ITEMS, 20, torch.device("cpu"))


def test_teacher_of_other_data_is_rejected(synthetic_ids):
    with pytest.raises(DistillationError, match=f"trained on {NUM_SYNTHETIC_ITEMS} items, but the data has 99"):
        load_teacher(synthetic_ids, 99, 20, torch.device("cpu"))


def test_distilled_training_records_teachers(tiny_backbone_dir, synthetic_split, synthetic_ids, second_teacher_dir, tmp_path):
    from model.backbone import BackboneSettings, load_backbone

    backbone = load_backbone(BackboneSettings(source=str(tiny_backbone_dir), cache_dir=tmp_path / "cache"))
    options = TrainOptions(
        name="distilled", output=tmp_path / "bundle", ids=synthetic_ids, teachers=(synthetic_ids, second_teacher_dir),
        distillation=DistillationSettings(weight=0.7, temperature=2.0),
        epochs=1.0, batch_size=32, progress=False, eval_users=50, warmup_steps=2,
    )

    metrics = train_bundle(backbone, synthetic_split, options, {"source": "synthetic"})

    training = read_manifest(tmp_path / "bundle").training
    assert training["teacher"] == [str(synthetic_ids), str(second_teacher_dir)]
    assert training["distillation"] == {"weight": 0.7, "temperature": 2.0}
    assert math.isfinite(training["final_loss"])
    assert metrics["num_cases"] == 50


def test_cli_rejects_bad_weight(synthetic_data_file, synthetic_ids, tmp_path, capsys):
    from model.cli import main

    output = tmp_path / "bundle"
    status = main([
        "train", "--data", str(synthetic_data_file), "--ids", str(synthetic_ids), "--teacher", str(synthetic_ids),
        "--distill-weight", "2", "--name", "bad", "--output", str(output),
    ])

    assert status == 2
    assert "distillation weight 2.0 is invalid" in capsys.readouterr().err
    assert not output.exists()


def test_cli_defaults_match_settings():
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)

    args = parser.parse_args(["--data", "sequences.txt", "--ids", "random", "--name", "demo", "--output", "out"])

    assert args.distill_weight == DistillationSettings().weight
    assert args.distill_temperature == DistillationSettings().temperature
    assert args.distill_temperature == 2.0


def test_cli_takes_several_teachers():
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)

    args = parser.parse_args(["--data", "d", "--ids", "random", "--name", "demo", "--output", "out", "--teacher", "runs/s0", "runs/s1"])

    assert args.teacher == ["runs/s0", "runs/s1"]


def test_cli_rejects_a_teacher_given_twice(synthetic_data_file, synthetic_ids, tmp_path, capsys):
    from model.cli import main

    output = tmp_path / "bundle"
    status = main([
        "train", "--data", str(synthetic_data_file), "--ids", str(synthetic_ids),
        "--teacher", str(synthetic_ids), str(synthetic_ids), "--name", "twice", "--output", str(output),
    ])

    assert status == 2
    assert "is given twice; pass each pretrain-ids folder once" in capsys.readouterr().err
    assert not output.exists()

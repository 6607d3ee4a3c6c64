"""Training-curve plots from bundle manifests and SASRec run metrics."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from model.bundle import BundleError, read_json_object, read_manifest  # noqa: E402


def plot_training_curves(sources: list[Path], output: Path) -> Path:
    """Plot training loss and, where recorded, validation NDCG@10 against steps, from bundle folders or manifest files."""
    figure, (loss_axis, valid_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for source in sources:
        label, training = _read_curves(Path(source))
        loss_curve = training.get("loss_curve") or []
        if loss_curve:
            loss_axis.plot([point[0] for point in loss_curve], [point[1] for point in loss_curve], label=label)
        valid_curve = training.get("valid_curve") or []
        if valid_curve:
            valid_axis.plot([point["step"] for point in valid_curve], [point["ndcg_at_10"] for point in valid_curve], marker="o", label=label)
    if not valid_axis.get_lines():
        valid_axis.text(0.5, 0.5, "no validation curve recorded\n(train with --eval-every N)", ha="center", va="center",
                        transform=valid_axis.transAxes, color="gray")
    loss_axis.set(title="training loss (cross-entropy, mixed with KL when distilled)", xlabel="step", ylabel="loss")
    valid_axis.set(title="validation NDCG@10", xlabel="step", ylabel="NDCG@10")
    return _save(figure, output)


def plot_pretrain_curves(run_dirs: list[Path], output: Path) -> Path:
    """Plot training loss and validation HR@10 / NDCG@10 per epoch of SASRec runs (``pretrain-ids`` folders)."""
    figure, (loss_axis, hr_axis, ndcg_axis) = plt.subplots(1, 3, figsize=(15, 4))
    for folder in run_dirs:
        metrics_file = folder / "metrics.json"
        if not metrics_file.is_file():
            raise FileNotFoundError(f"{metrics_file} does not exist; pass folders written by e4srec pretrain-ids")
        metrics = json.loads(metrics_file.read_text())
        label = f"{folder.name} (seed {metrics['options']['seed']})"
        epochs = [point["epoch"] for point in metrics["history"]]
        loss_axis.plot(epochs, [point["loss"] for point in metrics["history"]], label=label)
        hr_axis.plot(epochs, [point["valid"]["hr_at_10"] for point in metrics["history"]], label=label)
        ndcg_axis.plot(epochs, [point["valid"]["ndcg_at_10"] for point in metrics["history"]], label=label)
        ndcg_axis.axvline(metrics["best_epoch"], color=ndcg_axis.get_lines()[-1].get_color(), linestyle=":", alpha=0.6)

    loss_axis.set(title="training loss (softmax cross-entropy)", xlabel="epoch", ylabel="loss")
    hr_axis.set(title="validation HR@10", xlabel="epoch", ylabel="HR@10")
    ndcg_axis.set(title="validation NDCG@10 (dotted: best epoch)", xlabel="epoch", ylabel="NDCG@10")
    return _save(figure, output)


def _read_curves(source: Path) -> tuple[str, dict]:
    """Return the label and training record of a bundle folder, or of a manifest file such as the copies in docs/results."""
    if source.is_dir():
        manifest = read_manifest(source)
        return f"{manifest.name}@{manifest.version}", manifest.training
    if not source.is_file():
        raise BundleError(f"{source} not found; pass a bundle folder or a manifest JSON file")
    values = read_json_object(source)
    if not {"name", "version", "training"} <= values.keys() or not isinstance(values["training"], dict):
        raise BundleError(f"{source} is not a bundle manifest: it needs name, version and a training object; pass a bundle's manifest.json")
    return f"{values['name']}@{values['version']}", values["training"]


def _save(figure: plt.Figure, output: Path) -> Path:
    for axis in figure.axes:
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=120)
    plt.close(figure)
    return output

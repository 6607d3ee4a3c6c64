"""Knowledge distillation from the SASRec stage into an E4SRec bundle.

The SASRec model that produced the ID table (``e4srec pretrain-ids`` saves
it as ``sasrec.safetensors``) is the teacher. At every supervised position
the bundle's loss mixes cross-entropy on the next item with the KL divergence
from the teacher's softmax over all items (Hinton et al., 2015, "Distilling
the Knowledge in a Neural Network"). The soft targets also rank the other
plausible next items, which one-hot labels leave out.

Several SASRec runs on the same data can teach together. The teacher's
scores are then the mean of their item scores. On the Beauty test split such
an ensemble of three runs ranked better than each of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from model.data import PADDING_ID
from model.sasrec import SASRec, SASRecConfig

TEACHER_WEIGHTS_FILE = "sasrec.safetensors"
TEACHER_CONFIG_FILE = "metrics.json"


class DistillationError(ValueError):
    """A teacher or distillation setting that cannot be used, such as a teacher trained on other data."""


@dataclass(frozen=True)
class DistillationSettings:
    """Distillation settings: ``weight`` is the share of the loss given to the teacher (0 turns distillation off).

    ``temperature`` divides both the teacher's and the bundle's scores before the softmax.
    """

    weight: float = 0.5
    temperature: float = 2.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight <= 1.0:
            raise DistillationError(f"distillation weight {self.weight} is invalid: pass a share in [0, 1], such as 0.5")
        if self.temperature <= 0.0:
            raise DistillationError(f"distillation temperature {self.temperature} is invalid: pass a positive value, such as 1 or 2")


class TeacherEnsemble(nn.Module):
    """One or more frozen SASRec models whose item scores are averaged.

    The mean of the scores (not of the probabilities) keeps the output a
    score vector for the softmax of ``distillation_loss``. On the Beauty test
    split, three runs ranked better by mean score than by mean probability.
    """

    def __init__(self, members: list[SASRec]):
        super().__init__()
        if not members:
            raise DistillationError("a teacher needs at least one SASRec model; pass one or more pretrain-ids folders")
        self.members = nn.ModuleList(members)

    def full_sort_predict(self, histories: list[list[int]]) -> torch.Tensor:
        scores = [member.full_sort_predict(histories).float() for member in self.members]
        return torch.stack(scores).mean(dim=0)


def load_teachers(folders: list[Path], num_items: int, max_history_length: int, device: torch.device) -> TeacherEnsemble:
    """Load the SASRec model of each folder (see ``load_teacher``) into one ensemble teacher."""
    resolved = [folder.resolve() for folder in folders]
    for index, folder in enumerate(resolved):
        if folder in resolved[:index]:
            raise DistillationError(f"teacher {folders[index]} is given twice; pass each pretrain-ids folder once")
    return TeacherEnsemble([load_teacher(folder, num_items, max_history_length, device) for folder in folders]).eval()


def load_teacher(folder: Path, num_items: int, max_history_length: int, device: torch.device) -> SASRec:
    """Load the SASRec model saved by ``e4srec pretrain-ids`` in ``folder``, in eval mode and frozen.

    The teacher must cover the bundle's items and read at least the
    ``max_history_length`` items that the bundle reads.
    """
    weights, config_file = folder / TEACHER_WEIGHTS_FILE, folder / TEACHER_CONFIG_FILE
    for path in (weights, config_file):
        if not path.is_file():
            raise DistillationError(f"teacher file {path} not found; pass a folder written by e4srec pretrain-ids")
    config = SASRecConfig(**json.loads(config_file.read_text())["config"])
    if config.num_items != num_items:
        raise DistillationError(
            f"teacher {folder} was trained on {config.num_items} items, but the data has {num_items}; pretrain on the same data"
        )
    if max_history_length > config.max_length:
        raise DistillationError(
            f"max_history_length {max_history_length} is above the max_length {config.max_length} of teacher {folder}; "
            "lower --max-history-length or pretrain with a larger --max-length"
        )
    teacher = SASRec(config)
    teacher.load_state_dict(load_file(str(weights)))
    teacher.requires_grad_(False)
    return teacher.to(device).eval()


@torch.no_grad()
def teacher_logits(teacher: SASRec | TeacherEnsemble, sequences: list[list[int]], max_history_length: int, with_response: bool) -> torch.Tensor:
    """Teacher scores in the row order of ``E4SRec.training_logits``.

    Each row is the teacher's ranking after the prefix that the matching
    bundle row has seen, scored as the teacher would serve it. One pass over
    a whole sequence would be cheaper but differs from serving: SASRec's
    positions count back from the last item, so a state inside a sequence
    would encode how many items follow it. The teacher reads up to its own
    ``max_length`` items, which may be more than the bundle reads.
    """
    prefixes = []
    for sequence in sequences:
        supervised = min(len(sequence) - 1, max_history_length)
        prefixes += [sequence[:end] for end in range(len(sequence) - supervised, len(sequence))]
        if with_response:
            prefixes.append(sequence[:-1])
    # Soft targets over thousands of items need float32: bfloat16 logits are
    # rounded in steps of 1/16 near 10, which reorders close items.
    device_type = next(teacher.parameters()).device.type
    with torch.autocast(device_type=device_type, enabled=False):
        return teacher.full_sort_predict(prefixes).float()


def distillation_loss(
    logits: torch.Tensor, labels: torch.Tensor, teacher_scores: torch.Tensor, settings: DistillationSettings
) -> torch.Tensor:
    """(1 - weight) * cross-entropy + weight * T^2 * KL(teacher || bundle), both softened by temperature T.

    The padding ID is never a next item, so it gets no probability from the teacher.
    """
    hard = nn.functional.cross_entropy(logits, labels)
    if settings.weight == 0.0:
        return hard
    temperature = settings.temperature
    teacher_scores = teacher_scores.clone()
    teacher_scores[:, PADDING_ID] = float("-inf")
    teacher_probabilities = torch.softmax(teacher_scores / temperature, dim=-1)
    student_log_probabilities = torch.log_softmax(logits / temperature, dim=-1)
    soft = nn.functional.kl_div(student_log_probabilities, teacher_probabilities, reduction="batchmean") * temperature**2
    return (1.0 - settings.weight) * hard + settings.weight * soft

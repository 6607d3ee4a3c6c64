"""Read interaction data and split it leave-one-out.

Two input formats are supported:

* ``sequences.txt``: one user per line, ``USER_ID ITEM_ID ITEM_ID ...``, oldest
  item first (the format of the Amazon Beauty and Toys files used in the
  sequential recommendation literature).
* An interactions CSV with a header ``user_id,item_id,timestamp``; each user's
  items are ordered by timestamp, ties kept in file order.

Item IDs must be integers from 1 to the item count; 0 is the padding ID.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

PADDING_ID = 0


class DataFormatError(ValueError):
    """Raised when an interaction file cannot be parsed."""


@dataclass(frozen=True)
class SequenceData:
    """Time-ordered item sequences, one per user."""

    sequences: list[list[int]]
    num_items: int
    source: str

    @property
    def num_users(self) -> int:
        return len(self.sequences)

    @property
    def num_interactions(self) -> int:
        return sum(len(sequence) for sequence in self.sequences)


@dataclass(frozen=True)
class EvalCase:
    """One user's evaluation case: the history given to the model and the held-out target."""

    history: list[int]
    target: int


@dataclass(frozen=True)
class LeaveOneOutSplit:
    """Leave-one-out split: last item for test, second-to-last for validation.

    ``train`` contains each user's sequence without its last two items. Users with
    fewer than three items contribute only to ``train``.
    """

    train: list[list[int]]
    valid: list[EvalCase]
    test: list[EvalCase]
    num_items: int

    def cases(self, split: str) -> list[EvalCase]:
        if split == "valid":
            return self.valid
        if split == "test":
            return self.test
        raise ValueError(f"unknown split {split!r}; use 'valid' or 'test'")


def read_sequences_txt(path: Path) -> SequenceData:
    sequences: list[list[int]] = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            try:
                items = [int(field) for field in fields[1:]]
            except ValueError as error:
                raise DataFormatError(f"{path}:{line_number}: item IDs must be integers ({error})") from None
            _check_item_ids(items, f"{path}:{line_number}")
            sequences.append(items)
    return _finish(sequences, str(path))


def read_interactions_csv(path: Path) -> SequenceData:
    by_user: dict[str, list[tuple[float, int, int]]] = {}
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        expected = {"user_id", "item_id", "timestamp"}
        if reader.fieldnames is None or not expected.issubset(reader.fieldnames):
            raise DataFormatError(
                f"{path}: header must contain user_id,item_id,timestamp, found {reader.fieldnames}"
            )
        for row_number, row in enumerate(reader, start=2):
            try:
                item_id = int(row["item_id"])
                timestamp = float(row["timestamp"])
            except (TypeError, ValueError):
                raise DataFormatError(
                    f"{path}:{row_number}: item_id must be an integer and timestamp a number, "
                    f"found item_id={row['item_id']!r} timestamp={row['timestamp']!r}"
                ) from None
            _check_item_ids([item_id], f"{path}:{row_number}")
            by_user.setdefault(row["user_id"], []).append((timestamp, row_number, item_id))

    # Sorting on (timestamp, row number) keeps ties in file order.
    sequences = [[item for _, _, item in sorted(events)] for events in by_user.values()]
    return _finish(sequences, str(path))


def read_interactions(path: str | Path) -> SequenceData:
    """Read ``path`` as a sequences.txt file, or as a CSV when it ends in ``.csv``."""
    path = Path(path)
    if path.is_dir():
        path = path / "sequences.txt"
    if not path.exists():
        raise FileNotFoundError(f"interaction file {path} does not exist")
    if path.suffix.lower() == ".csv":
        return read_interactions_csv(path)
    return read_sequences_txt(path)


def leave_one_out(data: SequenceData) -> LeaveOneOutSplit:
    train: list[list[int]] = []
    valid: list[EvalCase] = []
    test: list[EvalCase] = []
    for sequence in data.sequences:
        if len(sequence) < 3:
            train.append(list(sequence))
            continue
        train.append(sequence[:-2])
        valid.append(EvalCase(history=sequence[:-2], target=sequence[-2]))
        test.append(EvalCase(history=sequence[:-1], target=sequence[-1]))
    return LeaveOneOutSplit(train=train, valid=valid, test=test, num_items=data.num_items)


def _check_item_ids(items: list[int], where: str) -> None:
    for item in items:
        if item <= PADDING_ID:
            raise DataFormatError(f"{where}: item ID {item} is invalid; item IDs start at 1 (0 is padding)")


def _finish(sequences: list[list[int]], source: str) -> SequenceData:
    if not sequences:
        raise DataFormatError(f"{source}: no interactions found")
    num_items = max(max(sequence) for sequence in sequences if sequence)
    return SequenceData(sequences=sequences, num_items=num_items, source=source)

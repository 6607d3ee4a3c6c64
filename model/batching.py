"""Batch orders for the training sequences, drawn again every epoch.

Both orders are seeded, so the same seed and epoch give the same batches.
"""

from __future__ import annotations

import random

BATCH_ORDER_SHUFFLED = "shuffled"
BATCH_ORDER_LENGTH = "length"
BATCH_ORDERS = (BATCH_ORDER_SHUFFLED, BATCH_ORDER_LENGTH)


def shuffled_batches(sequences: list[list[int]], batch_size: int, seed: int) -> list[list[list[int]]]:
    """Cut a seeded random permutation of the sequences into batches."""
    shuffled = random.Random(seed).sample(sequences, len(sequences))
    return [shuffled[start : start + batch_size] for start in range(0, len(shuffled), batch_size)]


def length_bucketed_batches(sequences: list[list[int]], batch_size: int, seed: int) -> list[list[list[int]]]:
    """Group sequences of similar length into batches, in a seeded random order.

    Most histories are short, so sorting by length before batching keeps
    padding, and the compute it wastes, small. A short random jitter on the
    length lets neighbours mix between epochs.
    """
    rng = random.Random(seed)
    order = sorted(range(len(sequences)), key=lambda index: (len(sequences[index]), rng.random()))
    batches = [[sequences[index] for index in order[start : start + batch_size]] for start in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def epoch_batches(order: str, sequences: list[list[int]], batch_size: int, seed: int) -> list[list[list[int]]]:
    """Return one epoch's batches in the named order."""
    if order == BATCH_ORDER_SHUFFLED:
        return shuffled_batches(sequences, batch_size, seed)
    if order == BATCH_ORDER_LENGTH:
        return length_bucketed_batches(sequences, batch_size, seed)
    raise ValueError(f"batch order {order!r} is invalid; use one of {', '.join(BATCH_ORDERS)}")

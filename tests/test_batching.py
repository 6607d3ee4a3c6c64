import pytest

from model.batching import epoch_batches, length_bucketed_batches, shuffled_batches

SEQUENCES = [[index] * length for index, length in enumerate([2, 9, 3, 8, 2, 9, 3, 8], start=1)]


def _flatten(batches):
    return [sequence for batch in batches for sequence in batch]


def test_length_batches_group_similar_lengths():
    batches = length_bucketed_batches(SEQUENCES, batch_size=2, seed=0)

    for batch in batches:
        assert len({len(sequence) for sequence in batch}) == 1
    assert sorted(_flatten(batches)) == sorted(SEQUENCES)


def test_shuffled_batches_hold_every_sequence_once():
    batches = shuffled_batches(SEQUENCES, batch_size=3, seed=0)

    assert [len(batch) for batch in batches] == [3, 3, 2]
    assert sorted(_flatten(batches)) == sorted(SEQUENCES)


def test_shuffled_batches_depend_only_on_the_seed():
    assert shuffled_batches(SEQUENCES, batch_size=2, seed=5) == shuffled_batches(SEQUENCES, batch_size=2, seed=5)
    orders = {tuple(map(tuple, _flatten(shuffled_batches(SEQUENCES, batch_size=2, seed=seed)))) for seed in range(5)}
    assert len(orders) > 1


def test_shuffled_batches_mix_lengths():
    batches = shuffled_batches(SEQUENCES, batch_size=4, seed=0)

    assert any(len({len(sequence) for sequence in batch}) > 1 for batch in batches)


def test_epoch_batches_follow_order_name():
    assert epoch_batches("shuffled", SEQUENCES, 2, seed=1) == shuffled_batches(SEQUENCES, 2, seed=1)
    assert epoch_batches("length", SEQUENCES, 2, seed=1) == length_bucketed_batches(SEQUENCES, 2, seed=1)


def test_invalid_order_names_choices():
    with pytest.raises(ValueError, match="'sorted' is invalid; use one of shuffled, length"):
        epoch_batches("sorted", SEQUENCES, 2, seed=0)

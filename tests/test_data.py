from pathlib import Path

import pytest

from model.data import DataFormatError, leave_one_out, read_interactions


def test_sequences_txt_reads_users_in_order(tmp_path):
    path = tmp_path / "sequences.txt"
    path.write_text("1 3 1 2\n2 4 5 6 7\n")

    data = read_interactions(path)

    assert data.sequences == [[3, 1, 2], [4, 5, 6, 7]]
    assert data.num_items == 7
    assert data.num_interactions == 7


def test_folder_source_reads_sequences_txt(tmp_path):
    (tmp_path / "sequences.txt").write_text("1 1 2 3\n")

    assert read_interactions(tmp_path).sequences == [[1, 2, 3]]


def test_csv_sorts_by_timestamp_stably(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id,timestamp\nu1,5,30\nu1,3,10\nu1,9,20\nu1,4,20\nu2,1,1\n")

    data = read_interactions(path)

    assert data.sequences == [[3, 9, 4, 5], [1]]


def test_csv_without_required_header_is_rejected(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("user,item\n1,2\n")

    with pytest.raises(DataFormatError, match="user_id,item_id,timestamp"):
        read_interactions(path)


@pytest.mark.parametrize("line", ["1 0 2\n", "1 -3 2\n", "1 a 2\n"])
def test_invalid_item_id_is_rejected(tmp_path, line):
    path = tmp_path / "sequences.txt"
    path.write_text(line)

    with pytest.raises(DataFormatError):
        read_interactions(path)


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_interactions(tmp_path / "absent.txt")


def test_leave_one_out_holds_out_last_two_items(tmp_path):
    path = tmp_path / "sequences.txt"
    path.write_text("1 1 2 3 4 5\n2 6 7\n")

    split = leave_one_out(read_interactions(path))

    assert split.train == [[1, 2, 3], [6, 7]]
    assert [(case.history, case.target) for case in split.valid] == [([1, 2, 3], 4)]
    assert [(case.history, case.target) for case in split.test] == [([1, 2, 3, 4], 5)]


def test_beauty_split_has_one_case_per_user():
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "beauty" / "sequences.txt"
    if not path.exists():
        pytest.skip("the Beauty data set is not next to this checkout")

    data = read_interactions(path)
    split = leave_one_out(data)

    assert (data.num_users, data.num_items, data.num_interactions) == (22363, 12101, 198502)
    assert len(split.test) == 22363
    assert len(split.valid) == 22363

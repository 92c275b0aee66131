"""LFW pairs files and image layout: the real View-2 file, round trips, malformed files, missing images."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from datasets.lfw import Pair, check_pairs_images, lfw_image_path, read_pairs, write_pairs
from utils.errors import BadInputLog, DataError

pytestmark = pytest.mark.filterwarnings("ignore:skipped")
FIXTURE = Path(__file__).parent / "fixtures" / "lfw_pairs"


def test_real_pairs_file_two_folds_of_50_plus_50(shared_data: Path) -> None:
    root = shared_data / "lfw_top12_100px"
    pairs = read_pairs(root / "pairs.txt")
    assert (pairs.num_folds, pairs.pairs_per_fold) == (2, 50)
    assert [len(fold) for fold in pairs.folds] == [100, 100]
    for fold in pairs.folds:
        assert [pair.same for pair in fold] == [True] * 50 + [False] * 50
    assert pairs.folds[0][0] == Pair("Hugo_Chavez", 20, "Hugo_Chavez", 52) and pairs.folds[0][0].line == 2
    assert pairs.folds[1][-1].line == 201
    assert pairs.folds[0][50] == Pair("Jacques_Chirac", 44, "Hugo_Chavez", 50)
    assert check_pairs_images(pairs, root / "images") == pairs.pairs
    people = {pair.name_a for pair in pairs.pairs} | {pair.name_b for pair in pairs.pairs}
    assert people <= {p.name for p in (root / "images").iterdir()}


def test_real_file_written_back_is_the_same_text(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "lfw_top12_100px" / "pairs.txt"
    write_pairs(tmp_path / "pairs.txt", read_pairs(source).folds)
    assert (tmp_path / "pairs.txt").read_text().splitlines() == source.read_text().splitlines()


def test_fixture_pairs_and_image_paths() -> None:
    pairs = read_pairs(FIXTURE / "pairs.txt")
    assert pairs.pairs == [Pair("Tony_Blair", 1, "Tony_Blair", 2), Pair("Tony_Blair", 2, "Colin_Powell", 1)]
    assert check_pairs_images(pairs, FIXTURE / "images") == pairs.pairs
    assert lfw_image_path(FIXTURE / "images", "Tony_Blair", 2) == FIXTURE / "images/Tony_Blair/Tony_Blair_0002.jpg"
    assert lfw_image_path("x", "Colin_Powell", 1234).name == "Colin_Powell_1234.jpg"


def test_write_orders_each_fold_same_first_and_round_trips(tmp_path: Path) -> None:
    folds = [[Pair("B", 1, "C", 3), Pair("A", 1, "A", 2), Pair("D", 4, "E", 5), Pair("F", 9, "F", 11)],
             [Pair("G", 1, "G", 2), Pair("H", 1, "I", 1), Pair("J", 1, "J", 3), Pair("K", 2, "L", 2)]]
    path = tmp_path / "pairs.txt"
    write_pairs(path, folds)
    lines = path.read_text().splitlines()
    assert lines[:5] == ["2\t2", "A\t1\t2", "F\t9\t11", "B\t1\tC\t3", "D\t4\tE\t5"]
    back = read_pairs(path)
    assert (back.num_folds, back.pairs_per_fold) == (2, 2)
    assert [set(fold) for fold in back.folds] == [set(fold) for fold in folds]
    unbalanced = [folds[0], [folds[1][0], Pair("X", 1, "Y", 1), Pair("Z", 1, "W", 1)]]
    with pytest.raises(ValueError, match="fold 2 has 1 same and 2 different"):
        write_pairs(path, unbalanced)
    with pytest.raises(ValueError, match="at least one fold"):
        write_pairs(path, [])
    assert read_pairs(path).folds == back.folds  # failed writes left the file alone


def test_view1_header_is_one_fold(tmp_path: Path) -> None:
    path = tmp_path / "pairsDevTest.txt"
    path.write_text("1\nA\t1\t2\nA\t1\tB\t1\n")
    pairs = read_pairs(path)
    assert (pairs.num_folds, pairs.pairs_per_fold, len(pairs.pairs)) == (1, 1, 2)


BAD = [
    ("empty", "", None, "empty"),
    ("header fields", "1 1 1\nA 1 2\nA 1 B 1\n", 1, "expected a header"),
    ("header not a number", "x 1\nA 1 2\nA 1 B 1\n", 1, "whole number"),
    ("too few lines", "1\t2\nA\t1\t2\nB\t1\t2\nA\t1\tB\t1\n", 1, "file has 3"),
    ("too many lines", "1\t1\nA\t1\t2\nA\t1\tB\t1\nC\t1\t2\n", 1, "file has 3"),
    ("five fields", "1\t1\nA\t1\t2\t3\t4\nA\t1\tB\t1\n", 2, "found 5"),
    ("index not a number", "1\t1\nA\t1\ttwo\nA\t1\tB\t1\n", 2, "whole number, found 'two'"),
    ("index zero", "1\t1\nA\t0\t2\nA\t1\tB\t1\n", 2, ">= 1"),
    ("same person in a different line", "1\t1\nA\t1\t2\nA\t1\tA\t3\n", 3, "names the same person twice"),
    ("fold imbalance", "2\t1\nA\t1\t2\nA\t1\tB\t1\nC\t1\t2\nD\t3\t4\n", 4, "fold 2 has 2 same and 0 different"),
]


@pytest.mark.parametrize(("text", "line", "message"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_malformed_pairs_name_file_and_line(tmp_path: Path, text: str, line: int | None, message: str) -> None:
    path = tmp_path / "pairs.txt"
    path.write_text(text)
    with pytest.raises(DataError) as caught:
        read_pairs(path)
    assert caught.value.path == str(path) and caught.value.line == line and message in str(caught.value)


def test_missing_images_are_reported_per_pairs_line(tmp_path: Path) -> None:
    shutil.copytree(FIXTURE, tmp_path / "lfw")
    pairs_path = tmp_path / "lfw" / "pairs.txt"
    pairs_path.write_text("1\t2\nTony_Blair\t1\t2\nTony_Blair\t1\t7\n"
                          "Tony_Blair\t2\tColin_Powell\t1\nNobody\t1\tColin_Powell\t9\n")
    pairs = read_pairs(pairs_path)
    images = tmp_path / "lfw" / "images"
    with pytest.raises(DataError) as caught:
        check_pairs_images(pairs, images)
    assert caught.value.path == str(pairs_path) and caught.value.line == 3
    assert "Tony_Blair_0007.jpg" in str(caught.value)
    log = BadInputLog()
    kept = check_pairs_images(pairs, images, log=log)
    assert kept == [Pair("Tony_Blair", 1, "Tony_Blair", 2), Pair("Tony_Blair", 2, "Colin_Powell", 1)]
    assert [p.line for p in log.problems] == [3, 5]
    assert "Nobody_0001.jpg" in str(log.problems[1]) and "Colin_Powell_0009.jpg" in str(log.problems[1])
    with pytest.raises(DataError, match=r"Tony_Blair_0007.jpg: image of a pair not found \(pairs line 3\)"):
        check_pairs_images(pairs.pairs, images)

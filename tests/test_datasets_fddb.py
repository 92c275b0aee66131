"""FDDB ellipse lists: the official layout, ellipse-to-box geometry, round trips, bad input, fold files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datasets.fddb import (
    FddbAnnotation,
    ellipse_to_box,
    fddb_fold_files,
    fddb_image_path,
    read_fddb_ellipses,
    write_fddb_ellipses,
)
from utils.errors import BadInputLog, DataError

pytestmark = pytest.mark.filterwarnings("ignore:skipped")

# The official layout: path without extension, count, "major minor angle cx cy  1" (two spaces before the 1).
OFFICIAL = """2002/08/11/big/img_591
1
123.583300 85.549500 1.265839 269.693400 161.781200  1
2002/08/26/big/img_265
3
67.363819 44.511485 -1.476417 105.249970 87.209036  1
41.936870 27.064477 1.471906 184.070915 129.345601  1
70.993052 43.355200 1.370217 340.894300 117.498951  1
"""


def _write(tmp_path: Path, text: str, name: str = "FDDB-fold-01-ellipseList.txt") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_official_layout_is_read(tmp_path: Path) -> None:
    annotations = read_fddb_ellipses(_write(tmp_path, OFFICIAL))
    assert [a.image_path for a in annotations] == ["2002/08/11/big/img_591", "2002/08/26/big/img_265"]
    assert [len(a.ellipses) for a in annotations] == [1, 3]
    expected = np.float32([123.5833, 85.5495, 1.265839, 269.6934, 161.7812])
    np.testing.assert_array_equal(annotations[0].ellipses[0], expected)
    boxes = annotations[1].boxes
    assert boxes.shape == (3, 4) and np.all(boxes[:, 2:] > boxes[:, :2])
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2
    np.testing.assert_allclose(centers, annotations[1].ellipses[:, 3:5], atol=1e-3)


def test_ellipse_to_box_matches_sampled_ellipse() -> None:
    np.testing.assert_allclose(ellipse_to_box([[10, 5, 0, 50, 40]]), [[40, 35, 60, 45]])
    np.testing.assert_allclose(ellipse_to_box([[10, 5, np.pi / 2, 50, 40]]), [[45, 30, 55, 50]], atol=1e-5)
    rng = np.random.default_rng(3)
    ellipses = np.column_stack([rng.uniform(20, 80, 30), rng.uniform(5, 20, 30), rng.uniform(-np.pi, np.pi, 30),
                                rng.uniform(0, 500, 30), rng.uniform(0, 500, 30)])
    t = np.linspace(0, 2 * np.pi, 20001)[:, None]
    major, minor, angle, cx, cy = ellipses.T
    xs = cx + major * np.cos(t) * np.cos(angle) - minor * np.sin(t) * np.sin(angle)
    ys = cy + major * np.cos(t) * np.sin(angle) + minor * np.sin(t) * np.cos(angle)
    sampled = np.column_stack([xs.min(0), ys.min(0), xs.max(0), ys.max(0)])
    np.testing.assert_allclose(ellipse_to_box(ellipses), sampled, atol=1e-3)
    assert ellipse_to_box(np.zeros((0, 5))).shape == (0, 4)


def test_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    annotations = [FddbAnnotation(f"2003/01/0{i}/big/img_{i}", rng.uniform(0.5, 400, size=(i, 5)) - [0, 0, 200, 0, 0])
                   for i in range(1, 6)]
    annotations.append(FddbAnnotation("2003/02/01/big/img_none", np.zeros((0, 5))))
    path = tmp_path / "out" / "FDDB-fold-02-ellipseList.txt"
    write_fddb_ellipses(path, annotations)
    back = read_fddb_ellipses(path)
    assert [a.image_path for a in back] == [a.image_path for a in annotations]
    for original, read in zip(annotations, back):
        np.testing.assert_array_equal(read.ellipses, original.ellipses)
    official = read_fddb_ellipses(_write(tmp_path, OFFICIAL))
    write_fddb_ellipses(tmp_path / "copy.txt", official)
    assert (tmp_path / "copy.txt").read_text().splitlines()[:3] == [
        "2002/08/11/big/img_591", "1", "123.5833 85.5495 1.265839 269.6934 161.7812 1"]


BAD = [
    ("not an ellipse", OFFICIAL.replace("161.781200  1", "161.781200  2"), 3, "last field of 1"),
    ("negative radius", OFFICIAL.replace("123.583300", "-123.583300"), 3, "positive radii"),
    ("five fields", OFFICIAL.replace(" 161.781200  1", "  1"), 3, "expected 6 numbers"),
    ("count too high", OFFICIAL.replace("\n1\n", "\n2\n", 1), 2, "declares 2 face(s) but 1"),
    ("count too low", OFFICIAL.replace("\n3\n", "\n2\n"), 5, "declares 2 face(s) but 3"),
    ("file ends inside a record", OFFICIAL + "2002/07/19/big/img_130\n2\n1 1 0 5 5 1\n", 10,
     "file ends after 1 of the 2"),
]


@pytest.mark.parametrize(("text", "line", "message"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_malformed_input_names_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(DataError) as caught:
        read_fddb_ellipses(path)
    assert caught.value.path == str(path) and caught.value.line == line and message in str(caught.value)


def test_lenient_log_skips_only_the_bad_record(tmp_path: Path) -> None:
    text = OFFICIAL.replace("161.781200  1", "161.781200  2") + "2002/07/19/big/img_130\n1\n10 5 0 50 50 1\n"
    log = BadInputLog()
    annotations = read_fddb_ellipses(_write(tmp_path, text), log=log)
    assert [a.image_path for a in annotations] == ["2002/08/26/big/img_265", "2002/07/19/big/img_130"]
    assert [p.line for p in log.problems] == [3]


def test_fold_files_and_image_paths(tmp_path: Path) -> None:
    for k in (10, 2, 1):
        _write(tmp_path, "", f"FDDB-fold-{k:02d}-ellipseList.txt")
    _write(tmp_path, "", "FDDB-fold-01.txt")
    assert [p.name for p in fddb_fold_files(tmp_path)] == [
        "FDDB-fold-01-ellipseList.txt", "FDDB-fold-02-ellipseList.txt", "FDDB-fold-10-ellipseList.txt"]
    assert read_fddb_ellipses(tmp_path / "FDDB-fold-02-ellipseList.txt") == []
    assert fddb_fold_files(tmp_path / "FDDB-fold-02-ellipseList.txt") == [tmp_path / "FDDB-fold-02-ellipseList.txt"]
    with pytest.raises(DataError, match="folds folder not found"):
        fddb_fold_files(tmp_path / "absent")
    with pytest.raises(DataError, match="no FDDB-fold-XX-ellipseList.txt"):
        fddb_fold_files(tmp_path / "..")
    assert fddb_image_path(tmp_path, "2002/08/11/big/img_591") == tmp_path / "2002/08/11/big/img_591.jpg"

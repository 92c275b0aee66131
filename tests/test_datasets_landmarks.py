"""Five-point landmark lists (lfw_5590 format): real files, path handling, round trips, bad input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datasets.landmarks import (
    LandmarkAnnotation,
    check_landmark_images,
    landmark_image_path,
    read_landmark_list,
    write_landmark_list,
)
from utils.errors import BadInputLog, DataError
from utils.images import read_image

pytestmark = pytest.mark.filterwarnings("ignore:skipped")
FIXTURE = Path(__file__).parent / "fixtures" / "lfw_5590_80px" / "lfw_5590_80px_bbox_landmarks.txt"
LINE = "lfw_5590/A_0001.jpg 26.88 51.52 29.44 54.08 34.00 34.48 46.96 35.92 40.08 45.68 33.68 50.48 44.72 51.76"


def test_real_list_4151_faces_inside_80px_images(shared_data: Path) -> None:
    path = shared_data / "lfw_5590_landmarks_80px" / "lfw_5590_80px_bbox_landmarks.txt"
    annotations = read_landmark_list(path)
    assert len(annotations) == 4151
    assert len(check_landmark_images(path, annotations)) == 4151
    boxes = np.stack([a.box for a in annotations])
    points = np.stack([a.landmarks for a in annotations])
    assert boxes.dtype == np.float32 and points.shape == (4151, 5, 2)
    assert np.all((boxes >= 0) & (boxes <= 80)) and np.all(boxes[:, 2:] > boxes[:, :2])
    inside = ((points >= boxes[:, None, :2]) & (points <= boxes[:, None, 2:])).all(axis=(1, 2))
    assert inside.all()
    assert np.all(points[:, 0, 0] < points[:, 1, 0])  # the left eye is left of the right eye
    assert np.all(points[:, :2, 1].max(axis=1) < points[:, 2, 1])  # the eyes are above the nose
    assert np.all(points[:, :2, 1].max(axis=1) < points[:, 3:, 1].min(axis=1))  # ... and above the mouth
    for annotation in annotations[:3]:
        assert read_image(landmark_image_path(path, annotation)).shape == (80, 80, 3)


def test_fixture_values_box_order_and_images() -> None:
    annotations = read_landmark_list(FIXTURE)
    assert [a.image_path for a in annotations] == [
        "lfw_5590/Aaron_Eckhart_0001.jpg", "lfw_5590/Aaron_Guiel_0001.jpg",
        "lfw_5590/Aaron_Peirsol_0001.jpg", "lfw_5590/Aaron_Pena_0001.jpg"]
    first = annotations[0]
    np.testing.assert_array_equal(first.box, np.float32([26.88, 29.44, 51.52, 54.08]))  # left top right bottom
    np.testing.assert_array_equal(first.landmarks[0], np.float32([34.00, 34.48]))
    np.testing.assert_array_equal(first.landmarks[4], np.float32([44.72, 51.76]))
    assert check_landmark_images(FIXTURE, annotations) == annotations


def test_windows_separators_are_read_as_slashes(tmp_path: Path) -> None:
    path = tmp_path / "trainImageList.txt"
    path.write_text(LINE.replace("lfw_5590/", "lfw_5590\\") + "\r\n\n")
    (annotation,) = read_landmark_list(path)
    assert annotation.image_path == "lfw_5590/A_0001.jpg"
    assert landmark_image_path(path, annotation) == tmp_path / "lfw_5590" / "A_0001.jpg"


def test_round_trip_is_exact(tmp_path: Path, shared_data: Path) -> None:
    rng = np.random.default_rng(1)
    annotations = [LandmarkAnnotation(f"d/{i}.jpg", [x, y, x + w, y + h], rng.uniform(0, 300, size=(5, 2)))
                   for i, (x, y, w, h) in enumerate(rng.uniform(1, 200, size=(40, 4)))]
    original = read_landmark_list(shared_data / "lfw_5590_landmarks_80px" / "lfw_5590_80px_bbox_landmarks.txt")
    for source in (annotations, original):
        path = tmp_path / "list.txt"
        write_landmark_list(path, source)
        back = read_landmark_list(path)
        assert [a.image_path for a in back] == [a.image_path for a in source]
        np.testing.assert_array_equal(np.stack([a.box for a in back]), np.stack([a.box for a in source]))
        np.testing.assert_array_equal(np.stack([a.landmarks for a in back]), np.stack([a.landmarks for a in source]))
    assert path.read_text().splitlines()[0] == LINE.replace("A_0001", "Aaron_Eckhart_0001").replace("34.00", "34")


BAD = [
    ("too few fields", LINE.rsplit(" ", 1)[0], "expected an image path and 14 numbers"),
    ("not a number", LINE.replace("40.08", "4o.08"), "not a number: '4o.08'"),
    ("not finite", LINE.replace("40.08", "nan"), "not a finite number"),
    ("empty box", LINE.replace("51.52", "26.88"), "no positive width"),
    ("box upside down", LINE.replace("29.44 54.08", "54.08 29.44"), "no positive width"),
]


@pytest.mark.parametrize(("line", "message"), [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_malformed_lines_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "list.txt"
    path.write_text(f"{LINE}\n\n{line}\n{LINE}\n")
    with pytest.raises(DataError) as caught:
        read_landmark_list(path)
    assert caught.value.path == str(path) and caught.value.line == 3 and message in str(caught.value)
    log = BadInputLog()
    assert len(read_landmark_list(path, log=log)) == 2 and [p.line for p in log.problems] == [3]


def test_missing_images_and_files_are_named(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_text(LINE + "\n")
    annotations = read_landmark_list(path)
    with pytest.raises(DataError, match=r"lfw_5590/A_0001.jpg: image listed in list.txt not found"):
        check_landmark_images(path, annotations)
    log = BadInputLog()
    assert check_landmark_images(path, annotations, log=log) == [] and len(log) == 1
    with pytest.raises(DataError, match="file not found"):
        read_landmark_list(tmp_path / "absent.txt")
    (tmp_path / "latin1.txt").write_bytes(LINE.encode() + b"\n\xe9\n")
    with pytest.raises(DataError, match="not UTF-8") as caught:
        read_landmark_list(tmp_path / "latin1.txt")
    assert caught.value.line == 2


def test_annotation_shapes_are_enforced() -> None:
    annotation = LandmarkAnnotation("x.jpg", [1, 2, 3, 4], np.arange(10))
    assert annotation.box.dtype == np.float32 and annotation.landmarks.shape == (5, 2)
    assert annotation.landmarks[1].tolist() == [2, 3]
    with pytest.raises(ValueError):
        LandmarkAnnotation("x.jpg", [1, 2, 3], np.arange(10))

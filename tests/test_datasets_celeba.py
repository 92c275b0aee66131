"""CelebA box, landmark and identity lists, written here in the official layout (no real copy exists)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datasets.celeba import (
    read_celeba_bboxes,
    read_celeba_identities,
    read_celeba_landmark_annotations,
    read_celeba_landmarks,
    write_celeba_bboxes,
    write_celeba_identities,
    write_celeba_landmarks,
)
from utils.errors import BadInputLog, DataError

pytestmark = pytest.mark.filterwarnings("ignore:skipped")

# The first rows of the official files, with their column alignment (runs of spaces).
BBOX = """3
image_id x_1 y_1 width height
000001.jpg    95  71 226 313
000002.jpg    72  94 221 306
000003.jpg   216  59  91 126
"""
LANDMARKS = """3
lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y
000001.jpg 165   184   244   176   196   249   194   271   266   260
000002.jpg 140   204   220   204   168   254   146   289   226   289
000003.jpg 244   104   264   105   263   121   235   134   251   140
"""
ALIGNED = """2
lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y
000001.jpg 69  109  106  113   77  142   73  152  108  154
000002.jpg 69  110  107  112   81  135   70  151  108  153
"""
IDENTITIES = "000001.jpg 2880\n000002.jpg 2937\n000003.jpg 8692\n"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_official_layouts_are_read(tmp_path: Path) -> None:
    boxes = read_celeba_bboxes(_write(tmp_path, "list_bbox_celeba.txt", BBOX))
    assert list(boxes) == ["000001.jpg", "000002.jpg", "000003.jpg"]
    np.testing.assert_array_equal(boxes["000001.jpg"], [95, 71, 95 + 226, 71 + 313])
    assert boxes["000003.jpg"].dtype == np.float32
    landmarks = read_celeba_landmarks(_write(tmp_path, "list_landmarks_celeba.txt", LANDMARKS))
    np.testing.assert_array_equal(landmarks["000002.jpg"], [[140, 204], [220, 204], [168, 254], [146, 289], [226, 289]])
    aligned = read_celeba_landmarks(_write(tmp_path, "list_landmarks_align_celeba.txt", ALIGNED))
    np.testing.assert_array_equal(aligned["000001.jpg"][0], [69, 109])
    identities = read_celeba_identities(_write(tmp_path, "identity_CelebA.txt", IDENTITIES))
    assert identities == {"000001.jpg": 2880, "000002.jpg": 2937, "000003.jpg": 8692}


def test_header_with_image_id_column_is_accepted(tmp_path: Path) -> None:
    text = LANDMARKS.replace("\nlefteye_x", "\nimage_id lefteye_x")
    assert len(read_celeba_landmarks(_write(tmp_path, "l.txt", text))) == 3
    text = BBOX.replace("image_id x_1", "x_1")
    assert len(read_celeba_bboxes(_write(tmp_path, "b.txt", text))) == 3


def test_join_gives_landmark_annotations_in_box_order(tmp_path: Path) -> None:
    bbox = _write(tmp_path, "list_bbox_celeba.txt", BBOX)
    lms = _write(tmp_path, "list_landmarks_celeba.txt", LANDMARKS)
    annotations = read_celeba_landmark_annotations(bbox, lms)
    assert [a.image_path for a in annotations] == ["000001.jpg", "000002.jpg", "000003.jpg"]
    np.testing.assert_array_equal(annotations[0].box, [95, 71, 321, 384])
    np.testing.assert_array_equal(annotations[0].landmarks[2], [196, 249])
    for annotation in annotations:  # the in-the-wild landmarks lie inside their boxes
        assert np.all(annotation.landmarks >= annotation.box[:2]) and np.all(annotation.landmarks <= annotation.box[2:])


def test_join_reports_images_missing_from_either_list(tmp_path: Path) -> None:
    bbox = _write(tmp_path, "list_bbox_celeba.txt", BBOX)
    lms = _write(tmp_path, "list_landmarks_celeba.txt", LANDMARKS.replace("3\n", "2\n", 1).replace(
        "000002.jpg 140   204   220   204   168   254   146   289   226   289\n", ""))
    with pytest.raises(DataError, match="no landmarks for 000002.jpg") as caught:
        read_celeba_landmark_annotations(bbox, lms)
    assert caught.value.path == str(lms)
    log = BadInputLog()
    assert [a.image_path for a in read_celeba_landmark_annotations(bbox, lms, log=log)] == ["000001.jpg", "000003.jpg"]
    assert len(log) == 1
    extra = _write(tmp_path, "extra.txt", LANDMARKS.replace("3\n", "4\n", 1) + "000009.jpg 1 2 3 4 5 6 7 8 9 10\n")
    with pytest.raises(DataError, match="no usable box for 000009.jpg") as caught:
        read_celeba_landmark_annotations(bbox, extra)
    assert caught.value.path == str(bbox)


def test_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    xy = rng.uniform(0, 400, size=(20, 2)).astype(np.float32)
    boxes = {f"{i:06d}.jpg": np.concatenate([xy[i], xy[i] + rng.uniform(1, 200, 2).astype(np.float32)])
             for i in range(20)}
    landmarks = {name: rng.uniform(0, 400, size=(5, 2)).astype(np.float32) for name in boxes}
    identities = {name: int(i) for name, i in zip(boxes, rng.integers(1, 10178, 20))}
    write_celeba_bboxes(tmp_path / "b.txt", boxes)
    write_celeba_landmarks(tmp_path / "l.txt", landmarks)
    write_celeba_identities(tmp_path / "i.txt", identities)
    assert (tmp_path / "b.txt").read_text().splitlines()[:2] == ["20", "image_id x_1 y_1 width height"]
    back = read_celeba_bboxes(tmp_path / "b.txt")
    assert back.keys() == boxes.keys() and all(np.array_equal(back[k], boxes[k]) for k in boxes)
    back = read_celeba_landmarks(tmp_path / "l.txt")
    assert back.keys() == landmarks.keys() and all(np.array_equal(back[k], landmarks[k]) for k in landmarks)
    assert read_celeba_identities(tmp_path / "i.txt") == identities
    official = read_celeba_bboxes(_write(tmp_path, "o.txt", BBOX))
    write_celeba_bboxes(tmp_path / "o2.txt", official)
    assert [line.split() for line in (tmp_path / "o2.txt").read_text().splitlines()] == [
        line.split() for line in BBOX.splitlines()]


BAD = [
    ("bbox header in landmark reader", read_celeba_landmarks, BBOX, 2, "header is 'image_id x_1 y_1 width height'"),
    ("count too high", read_celeba_bboxes, BBOX.replace("3\n", "4\n", 1), 1, "says 4 images but 3 rows"),
    ("count not a number", read_celeba_bboxes, BBOX.replace("3\n", "three\n", 1), 1, "whole number"),
    ("short row", read_celeba_bboxes, BBOX.replace(" 313", ""), 3, "expected 4 numbers"),
    ("bad number", read_celeba_landmarks, LANDMARKS.replace("196", "l96"), 3, "not a number: 'l96'"),
    ("duplicate", read_celeba_bboxes, BBOX.replace("000002.jpg", "000001.jpg"), 4, "listed twice"),
    ("zero width", read_celeba_bboxes, BBOX.replace(" 91 126", " 0 126"), 5, "no positive width"),
    ("no header", read_celeba_bboxes, "0\n", None, "expected a count line and a header line"),
    ("identity not int", read_celeba_identities, IDENTITIES.replace("2937", "x"), 2, "whole number"),
    ("identity extra field", read_celeba_identities, IDENTITIES.replace("2937", "2937 1"), 2, "found 3 fields"),
]


@pytest.mark.parametrize(("reader", "text", "line", "message"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_names_file_and_line(tmp_path: Path, reader, text: str, line: int | None, message: str) -> None:
    path = _write(tmp_path, "list.txt", text)
    with pytest.raises(DataError) as caught:
        reader(path)
    assert caught.value.path == str(path) and caught.value.line == line and message in str(caught.value)


def test_lenient_log_skips_bad_rows(tmp_path: Path) -> None:
    path = _write(tmp_path, "list.txt", BBOX.replace(" 72  94", " 72  9x"))
    log = BadInputLog()
    assert list(read_celeba_bboxes(path, log=log)) == ["000001.jpg", "000003.jpg"]
    assert [p.line for p in log.problems] == [4]

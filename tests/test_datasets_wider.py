"""WIDER FACE reader/writer, Dataset and keep-lists: real files, the format's quirks, round trips, bad input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets.verify import verify_wider
from datasets.wider import (
    WIDER_ATTRIBUTES,
    WiderAnnotation,
    keep_masks,
    read_wider_annotations,
    read_wider_keep_list,
    wider_split_paths,
    wider_stats,
    write_wider_annotations,
    write_wider_keep_list,
)
from utils.errors import BadInputLog, DataError
from utils.images import read_image

pytestmark = pytest.mark.filterwarnings("ignore:skipped")
FIXTURE = Path(__file__).parent / "fixtures" / "wider"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gt.txt"
    path.write_text(text)
    return path


def _face(x: int, y: int, w: int, h: int, invalid: int = 0) -> str:
    return f"{x} {y} {w} {h} 0 0 0 {invalid} 0 0 "


def test_real_train_subset_counts_and_boxes_inside_images(shared_data: Path) -> None:
    root = shared_data / "wider_face_train_subset"
    images, gt = wider_split_paths(root, "train")
    annotations = read_wider_annotations(gt)
    stats = wider_stats(annotations)
    assert (stats.images, stats.faces) == (920, 5851)
    assert stats.invalid_flagged == 16 and stats.zero_size == 0 and stats.valid_faces == 5851 - 16
    assert len({a.image_path for a in annotations}) == 920
    for annotation in annotations:
        with Image.open(images / annotation.image_path) as image:
            width, height = image.size
        boxes = annotation.boxes
        assert boxes.dtype == np.float32 and annotation.attributes.dtype == np.int64
        assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= width) and np.all(boxes[:, 3] <= height)
        assert np.all(boxes[:, 2:] > boxes[:, :2])


def test_real_file_written_back_is_the_same_text(shared_data: Path, tmp_path: Path) -> None:
    gt = shared_data / "wider_face_train_subset" / "wider_face_split" / "wider_face_train_bbx_gt.txt"
    annotations = read_wider_annotations(gt)
    out = tmp_path / "copy.txt"
    write_wider_annotations(out, annotations)
    assert out.read_text().splitlines() == [line.rstrip() for line in gt.read_text().splitlines()]


def test_real_train_split_reads(shared_data: Path) -> None:
    images, annotation_file = wider_split_paths(shared_data / "wider_face_train_subset", "train")
    annotations = read_wider_annotations(annotation_file)
    assert len(annotations) == 920
    annotation = annotations[1]
    assert annotation.image_path == "1--Handshaking/1_Handshaking_Handshaking_1_389.jpg"
    image = read_image(images / annotation.image_path)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    np.testing.assert_array_equal(annotation.boxes, [[222, 106, 292, 228], [646, 90, 710, 216]])
    assert annotation.attributes[1, WIDER_ATTRIBUTES.index("illumination")] == 1
    assert not wider_split_paths(shared_data / "wider_face_train_subset", "val")[1].is_file()


def test_fixture_records_attributes_and_missing_image(tmp_path: Path) -> None:
    annotations = read_wider_annotations(FIXTURE / "wider_face_split" / "wider_face_train_bbx_gt.txt")
    assert [len(a.boxes) for a in annotations] == [1, 102, 1]
    first = annotations[0]
    np.testing.assert_array_equal(first.boxes, [[404, 62, 584, 384]])
    assert dict(zip(WIDER_ATTRIBUTES, first.attributes[0])) == {
        "blur": 0, "expression": 0, "illumination": 0, "invalid": 0, "occlusion": 1, "pose": 0}
    crowd = annotations[1]
    # the invalid flags sit on lines 904, 915, 957, 958, 960 of the real file, whose first face is on line 899
    assert np.flatnonzero(~crowd.valid).tolist() == [line - 899 for line in (904, 915, 957, 958, 960)]

    report = verify_wider(FIXTURE)  # the image of the middle record is not in the fixture
    assert report.counts["train images"] == 3
    assert len(report.problems) == 1 and "13_Interview_Interview_2_People_Visible_13_69.jpg" in report.problems[0]
    image = read_image(FIXTURE / "WIDER_train" / "images" / first.image_path)
    assert image.shape[:2] == (Image.open(FIXTURE / "WIDER_train" / "images" / first.image_path).size[::-1])
    with pytest.raises(DataError, match="13_69.jpg"):
        read_image(FIXTURE / "WIDER_train" / "images" / crowd.image_path)


def test_zero_face_records_with_and_without_placeholder(tmp_path: Path) -> None:
    text = ("a/empty.jpg\n0\n0 0 0 0 0 0 0 0 0 0 \n"
            "a/one.jpg\n1\n" + _face(1, 2, 3, 4) + "\n"
            "a/bare.jpg\n0\n"
            "a/last.jpg\n0\n0 0 0 0 0 0 0 0 0 0\n")
    annotations = read_wider_annotations(_write(tmp_path, text))
    assert [a.image_path for a in annotations] == ["a/empty.jpg", "a/one.jpg", "a/bare.jpg", "a/last.jpg"]
    assert [len(a.boxes) for a in annotations] == [0, 1, 0, 0]
    assert annotations[0].boxes.shape == (0, 4) and annotations[0].attributes.shape == (0, 6)
    np.testing.assert_array_equal(annotations[1].boxes, [[1, 2, 4, 6]])
    assert wider_stats(annotations).images_without_faces == 3


def test_zero_size_and_invalid_faces_are_kept_but_not_valid(tmp_path: Path) -> None:
    text = "b/x.jpg\n4\n" + "\n".join([_face(10, 10, 0, 5), _face(5, 5, 4, 0), _face(5, 5, 4, 4, invalid=1),
                                       _face(1, 1, 8, 8)]) + "\n"
    (annotation,) = read_wider_annotations(_write(tmp_path, text))
    assert annotation.zero_size.tolist() == [True, True, False, False]
    assert annotation.valid.tolist() == [False, False, False, True]
    stats = wider_stats([annotation])
    assert (stats.faces, stats.valid_faces, stats.zero_size, stats.invalid_flagged) == (4, 1, 2, 1)


def test_crlf_blank_lines_and_trailing_spaces(tmp_path: Path) -> None:
    path = tmp_path / "gt.txt"
    path.write_bytes(b"c/a.jpg  \r\n 2\r\n1 2 3 4 0 0 0 0 0 0   \r\n\r\n5 6 7 8 1 0 0 0 2 1\r\n")
    (annotation,) = read_wider_annotations(path)
    np.testing.assert_array_equal(annotation.boxes, [[1, 2, 4, 6], [5, 6, 12, 14]])
    np.testing.assert_array_equal(annotation.attributes[1], [1, 0, 0, 0, 2, 1])


BAD = [
    ("too few fields", "a.jpg\n1\n1 2 3 0 0 0 0 0 0\n", 3, "expected 10 numbers"),
    ("not a number", "a.jpg\n1\n1 2 x 4 0 0 0 0 0 0\n", 3, "not a number: 'x'"),
    ("not finite", "a.jpg\n1\n1 2 inf 4 0 0 0 0 0 0\n", 3, "not a finite number"),
    ("fewer faces than count", "a.jpg\n3\n" + _face(1, 1, 2, 2) + "\n" + _face(1, 1, 2, 2) + "\nb.jpg\n0\n",
     2, "declares 3 face(s) but 2"),
    ("more faces than count", "a.jpg\n1\n" + _face(1, 1, 2, 2) + "\n" + _face(1, 1, 2, 2) + "\n", 2,
     "declares 1 face(s) but 2"),
    ("file ends inside a record", "a.jpg\n3\n" + _face(1, 1, 2, 2) + "\n", 2, "file ends after 1 of the 3"),
    ("file ends after a path", "a.jpg\n1\n" + _face(1, 1, 2, 2) + "\nb.jpg\n", 4, "no face count (the file ends"),
    ("count not whole", "a.jpg\n2.5\n", 2, "must be a whole number"),
    ("negative count", "a.jpg\n-1\n", 2, "must be >= 0"),
    ("count line with fields", "a.jpg\n1 2\n", 2, "expected the face count"),
    ("fractional attribute", "a.jpg\n1\n1 2 3 4 0.5 0 0 0 0 0\n", 3, "whole numbers"),
    ("non-zero placeholder", "a.jpg\n0\n1 0 0 0 0 0 0 0 0 0\n", 3, "non-zero face line"),
    ("numbers before any path", "1 2 3\na.jpg\n0\n", 1, "expected an image path"),
]


@pytest.mark.parametrize(("text", "line", "message"), [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_malformed_input_names_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(DataError) as caught:
        read_wider_annotations(path)
    assert caught.value.path == str(path) and caught.value.line == line
    assert message in str(caught.value) and str(caught.value).startswith(f"{path}:{line}: ")
    with pytest.raises(DataError):
        read_wider_annotations(path, log=BadInputLog(strict=True))


def test_lenient_log_skips_bad_records_and_stays_in_sync(tmp_path: Path) -> None:
    text = ("ok/1.jpg\n1\n" + _face(1, 1, 10, 10) + "\n"
            "bad/count.jpg\n3\n" + _face(2, 2, 5, 5) + "\n"
            "ok/2.jpg\n2\n" + _face(3, 3, 6, 6) + "\n" + _face(4, 4, 7, 7) + "\n"
            "bad/number.jpg\n2\n" + _face(1, 1, 1, 1) + "\n1 1 oops 1 0 0 0 0 0 0\n"
            "ok/3.jpg\n0\n0 0 0 0 0 0 0 0 0 0\n"
            "bad/eof.jpg\n2\n" + _face(1, 1, 1, 1) + "\n")
    log = BadInputLog()
    annotations = read_wider_annotations(_write(tmp_path, text), log=log)
    assert [a.image_path for a in annotations] == ["ok/1.jpg", "ok/2.jpg", "ok/3.jpg"]
    np.testing.assert_array_equal(annotations[1].boxes, [[3, 3, 9, 9], [4, 4, 11, 11]])
    assert [p.line for p in log.problems] == [5, 14, 19]
    assert "bad/count.jpg" in str(log.problems[0]) and "'oops'" in str(log.problems[1])


def test_round_trip_float_boxes_and_empty_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 2000, size=(50, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(0.01, 500, size=(50, 2)).astype(np.float32)], axis=1)
    attributes = rng.integers(0, 3, size=(50, 6))
    annotations = [
        WiderAnnotation("e/a.jpg", boxes[:30], attributes[:30]),
        WiderAnnotation("e/empty.jpg", np.zeros((0, 4))),
        WiderAnnotation("e/b.jpg", boxes[30:], attributes[30:]),
        WiderAnnotation("e/ints.jpg", [[0, 0, 10, 20]]),
    ]
    path = tmp_path / "out" / "gt.txt"
    write_wider_annotations(path, annotations)
    assert "e/empty.jpg\n0\n0 0 0 0 0 0 0 0 0 0\n" in path.read_text()
    back = read_wider_annotations(path)
    assert [a.image_path for a in back] == [a.image_path for a in annotations]
    for original, read in zip(annotations, back):
        np.testing.assert_array_equal(read.boxes, original.boxes)
        np.testing.assert_array_equal(read.attributes, original.attributes)
    assert sorted(p.name for p in path.parent.iterdir()) == ["gt.txt"]


def test_failed_write_leaves_old_file(tmp_path: Path) -> None:
    path = tmp_path / "gt.txt"
    write_wider_annotations(path, [WiderAnnotation("a.jpg", [[1, 1, 2, 2]])])
    before = path.read_text()
    with pytest.raises(ValueError, match="one line"):
        write_wider_annotations(path, [WiderAnnotation("12 starts with a number.jpg", [[1, 1, 2, 2]])])
    with pytest.raises(ValueError, match="non-finite"):
        write_wider_annotations(path, [WiderAnnotation("a.jpg", [[1, 1, np.nan, 2]])])
    assert path.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["gt.txt"]


def test_annotation_shape_checks_and_split_paths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="attributes shape"):
        WiderAnnotation("a.jpg", [[1, 1, 2, 2]], np.zeros((2, 6)))
    assert wider_split_paths(tmp_path, "val") == (
        tmp_path / "WIDER_val" / "images", tmp_path / "wider_face_split" / "wider_face_val_bbx_gt.txt")
    with pytest.raises(ValueError, match="split"):
        wider_split_paths(tmp_path, "training")
    with pytest.raises(DataError, match="file not found"):
        read_wider_annotations(tmp_path / "absent.txt")
    with pytest.raises(DataError, match="found a folder"):
        read_wider_annotations(tmp_path)


def test_text_keep_list_round_trip_and_masks(tmp_path: Path) -> None:
    annotations = [WiderAnnotation("0--Parade/a.jpg", np.ones((3, 4)) * [0, 0, 1, 1]),
                   WiderAnnotation("0--Parade/b.jpg", np.ones((2, 4)) * [0, 0, 1, 1]),
                   WiderAnnotation("1--Handshaking/c.jpg", np.ones((1, 4)) * [0, 0, 1, 1])]
    path = tmp_path / "wider_hard_val.txt"
    path.write_text("0--Parade/a.jpg 1 3\n\n0--Parade/b.jpg\n")
    keep = read_wider_keep_list(path)
    assert set(keep) == {"0--Parade/a.jpg", "0--Parade/b.jpg"}
    masks = keep_masks(annotations, keep)
    assert [m.tolist() for m in masks] == [[True, False, True], [False, False], [False]]
    write_wider_keep_list(tmp_path / "copy.txt", keep)
    again = read_wider_keep_list(tmp_path / "copy.txt")
    assert all(np.array_equal(again[name], keep[name]) for name in keep) and again.keys() == keep.keys()
    with pytest.raises(DataError, match="face number 4 but the image has 3 faces"):
        keep_masks(annotations, {"0--Parade/a.jpg": np.array([3])}, path)
    path.write_text("x.jpg 1\nx.jpg 2\n")
    with pytest.raises(DataError, match="listed twice") as caught:
        read_wider_keep_list(path)
    assert caught.value.line == 2
    path.write_text("x.jpg 0\n")
    with pytest.raises(DataError, match=">= 1"):
        read_wider_keep_list(path)


def _cells(items: list) -> np.ndarray:
    cells = np.empty((len(items), 1), dtype=object)
    for i, item in enumerate(items):
        cells[i, 0] = item
    return cells


def test_official_mat_keep_list(tmp_path: Path) -> None:
    savemat = pytest.importorskip("scipy.io").savemat
    events = _cells([np.array(["0--Parade"]), np.array(["1--Handshaking"])])
    files = _cells([_cells([np.array(["a"]), np.array(["b"])]), _cells([np.array(["c"])])])
    gt = _cells([_cells([np.array([[1.0], [3.0]]), np.zeros((0, 1))]), _cells([np.array([[1.0]])])])
    savemat(tmp_path / "wider_easy_val.mat", {"event_list": events, "file_list": files, "gt_list": gt})
    keep = read_wider_keep_list(tmp_path / "wider_easy_val.mat")
    assert {k: v.tolist() for k, v in keep.items()} == {
        "0--Parade/a.jpg": [0, 2], "0--Parade/b.jpg": [], "1--Handshaking/c.jpg": [0]}

    savemat(tmp_path / "gt_only.mat", {"gt_list": gt})
    with pytest.raises(DataError, match="no 'event_list'.*names_from"):
        read_wider_keep_list(tmp_path / "gt_only.mat")
    named = read_wider_keep_list(tmp_path / "gt_only.mat", names_from=tmp_path / "wider_easy_val.mat")
    assert named.keys() == keep.keys()
    (tmp_path / "broken.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(DataError, match="broken.mat"):
        read_wider_keep_list(tmp_path / "broken.mat")
    with pytest.raises(DataError, match="file not found"):
        read_wider_keep_list(tmp_path / "absent.mat")


def test_reliability_wider_image_path_with_a_space_starts_a_new_record(tmp_path: Path) -> None:
    text = ("0--Parade/a.jpg\n1\n" + _face(1, 1, 2, 2) + "\n"
            "0--Parade/my photo  2.jpg\n2\n" + _face(3, 3, 4, 4) + "\n" + _face(5, 5, 6, 6) + "\n"
            "0--Parade/b.jpg\n0\n0 0 0 0 0 0 0 0 0 0\n")
    log = BadInputLog()
    annotations = read_wider_annotations(_write(tmp_path, text), log=log)
    assert not log.problems
    assert [a.image_path for a in annotations] == ["0--Parade/a.jpg", "0--Parade/my photo  2.jpg", "0--Parade/b.jpg"]
    np.testing.assert_array_equal(annotations[1].boxes, [[3, 3, 7, 7], [5, 5, 11, 11]])
    out = tmp_path / "copy.txt"
    write_wider_annotations(out, annotations)  # written back as it was read
    assert [a.image_path for a in read_wider_annotations(out)] == [a.image_path for a in annotations]
    with pytest.raises(ValueError, match="must be one line"):
        write_wider_annotations(out, [WiderAnnotation(" lead.jpg", np.zeros((0, 4)))])

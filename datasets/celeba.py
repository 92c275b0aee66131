"""CelebA annotation lists: boxes, five landmarks and identities, read without md5 checks.

``list_bbox_celeba.txt`` and ``list_landmarks[_align]_celeba.txt`` are a count line, a header line and
one ``image_id v1 v2 ...`` row per image (the header may or may not start with ``image_id``);
``identity_CelebA.txt`` is ``image_id identity`` rows without a header. Boxes and in-the-wild landmarks
share the coordinates of ``img_celeba``; the aligned landmarks belong to ``img_align_celeba`` and must not
be joined with the in-the-wild boxes.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from datasets.landmarks import LANDMARK_NAMES, LandmarkAnnotation
from datasets.textfile import format_number, format_xywh, parse_int, parse_numbers, read_text_lines, report
from utils.atomic import atomic_write_text
from utils.errors import BadInputLog, DataError

BBOX_COLUMNS = ("x_1", "y_1", "width", "height")
LANDMARK_COLUMNS = tuple(f"{name.replace('_', '')}_{axis}" for name in LANDMARK_NAMES for axis in "xy")
_ID = "image_id"


def _read_table(path: Path, columns: tuple[str, ...], log: BadInputLog | None) -> list[tuple[int, str, np.ndarray]]:
    """Read a count + header + rows table into ``(line, image_id, float64 values)`` rows, in file order."""
    lines = [(n, text.split()) for n, text in enumerate(read_text_lines(path), start=1) if text.strip()]
    if len(lines) < 2:
        raise DataError(path, "expected a count line and a header line")
    (count_line, count_tokens), (header_line, header) = lines[0], lines[1]
    if len(count_tokens) != 1:
        raise DataError(path, f"expected the image count, found {len(count_tokens)} fields", line=count_line)
    count = parse_int(count_tokens[0], path, count_line, "image count")
    names = tuple(header[1:] if header[:1] == [_ID] else header)
    if names != columns:
        raise DataError(path, f"header is {' '.join(header)!r}, expected {' '.join(columns)!r}", line=header_line)
    if len(lines) - 2 != count:
        report(log, DataError(path, f"count line says {count} images but {len(lines) - 2} rows follow",
                              line=count_line))
    rows, seen = [], set()
    for number, tokens in lines[2:]:
        try:
            if tokens[0] in seen:
                raise DataError(path, f"{tokens[0]} is listed twice", line=number)
            rows.append((number, tokens[0], parse_numbers(tokens[1:], len(columns), path, number, tokens[0])))
            seen.add(tokens[0])
        except DataError as error:
            report(log, error)
    return rows


def _write_table(path: str | Path, header: str, rows: list[str]) -> None:
    """Write a count + header + rows table atomically."""
    atomic_write_text(path, "".join(f"{line}\n" for line in [str(len(rows)), header, *rows]))


def read_celeba_bboxes(path: str | Path, *, log: BadInputLog | None = None) -> dict[str, np.ndarray]:
    """``list_bbox_celeba.txt``: image_id -> float32 box [x1, y1, x2, y2] (the file stores x y w h)."""
    path = Path(path)
    boxes = {}
    for line, image_id, (x, y, w, h) in _read_table(path, BBOX_COLUMNS, log):
        if w <= 0 or h <= 0:
            report(log, DataError(path, f"{image_id}: box has no positive width and height", line=line))
            continue
        boxes[image_id] = np.array([x, y, x + w, y + h], dtype=np.float32)
    return boxes


def read_celeba_landmarks(path: str | Path, *, log: BadInputLog | None = None) -> dict[str, np.ndarray]:
    """``list_landmarks[_align]_celeba.txt``: image_id -> float32 [5, 2] (eyes, nose, mouth corners)."""
    rows = _read_table(Path(path), LANDMARK_COLUMNS, log)
    return {image_id: values.astype(np.float32).reshape(len(LANDMARK_NAMES), 2) for _, image_id, values in rows}


def read_celeba_identities(path: str | Path, *, log: BadInputLog | None = None) -> dict[str, int]:
    """``identity_CelebA.txt``: image_id -> identity number (``image_id identity`` rows, no header)."""
    path = Path(path)
    identities: dict[str, int] = {}
    for number, text in enumerate(read_text_lines(path), start=1):
        tokens = text.split()
        if not tokens:
            continue
        try:
            if len(tokens) != 2:
                raise DataError(path, f"expected 'image_id identity', found {len(tokens)} fields", line=number)
            if tokens[0] in identities:
                raise DataError(path, f"{tokens[0]} is listed twice", line=number)
            identities[tokens[0]] = parse_int(tokens[1], path, number, "identity")
        except DataError as error:
            report(log, error)
    return identities


def write_celeba_bboxes(path: str | Path, boxes: Mapping[str, np.ndarray]) -> None:
    """Write image_id -> [x1, y1, x2, y2] as ``list_bbox_celeba.txt`` (count, header, x y w h rows)."""
    rows = [" ".join([image_id, *format_xywh(box)]) for image_id, box in boxes.items()]
    _write_table(path, " ".join([_ID, *BBOX_COLUMNS]), rows)


def write_celeba_landmarks(path: str | Path, landmarks: Mapping[str, np.ndarray]) -> None:
    """Write image_id -> [5, 2] landmarks as ``list_landmarks_celeba.txt`` (count, header, rows)."""
    rows = [" ".join([image_id, *(format_number(v) for v in np.ravel(points))])
            for image_id, points in landmarks.items()]
    _write_table(path, " ".join(LANDMARK_COLUMNS), rows)


def write_celeba_identities(path: str | Path, identities: Mapping[str, int]) -> None:
    """Write image_id -> identity as ``identity_CelebA.txt``."""
    atomic_write_text(path, "".join(f"{image_id} {int(identity)}\n" for image_id, identity in identities.items()))


def read_celeba_landmark_annotations(bbox_path: str | Path, landmarks_path: str | Path, *,
                                     log: BadInputLog | None = None) -> list[LandmarkAnnotation]:
    """Join the box and (in-the-wild) landmark lists into LandmarkAnnotations, in box-file order.

    An image in one list but not the other raises DataError, or is reported through ``log`` and left out.
    """
    boxes = read_celeba_bboxes(bbox_path, log=log)
    landmarks = read_celeba_landmarks(landmarks_path, log=log)
    annotations = []
    for image_id, box in boxes.items():
        if image_id not in landmarks:
            report(log, DataError(landmarks_path, f"no landmarks for {image_id} (listed in {Path(bbox_path).name})"))
            continue
        annotations.append(LandmarkAnnotation(image_id, box, landmarks[image_id]))
    for image_id in landmarks:
        if image_id not in boxes:
            report(log, DataError(bbox_path, f"no usable box for {image_id} (listed in {Path(landmarks_path).name})"))
    return annotations

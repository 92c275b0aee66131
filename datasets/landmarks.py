"""Five-point landmark lists in the lfw_5590 / MTCNN training format, one face per line:

``path x1 x2 y1 y2 lex ley rex rey nx ny lmx lmy rmx rmy`` (box as left right top bottom; then left eye,
right eye, nose tip, left and right mouth corner). Paths are relative to the list file's folder; the
original lists use Windows separators (``lfw_5590\\Name_0001.jpg``), which are read as ``/``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasets.textfile import format_number, parse_numbers, read_text_lines, report
from utils.atomic import atomic_write_text
from utils.errors import BadInputLog, DataError

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")
_NUMBERS = 4 + 2 * len(LANDMARK_NAMES)


@dataclass
class LandmarkAnnotation:
    """One face: its image, box (x1, y1, x2, y2) and five landmarks (x, y) in LANDMARK_NAMES order."""

    image_path: str  # relative to the list file's folder
    box: np.ndarray  # float32 [4]
    landmarks: np.ndarray  # float32 [5, 2]

    def __post_init__(self) -> None:
        self.box = np.asarray(self.box, dtype=np.float32).reshape(4)
        self.landmarks = np.asarray(self.landmarks, dtype=np.float32).reshape(len(LANDMARK_NAMES), 2)


def check_landmark_values(box: np.ndarray, landmarks: np.ndarray) -> str | None:
    """Why a face's numbers are unusable (empty box, non-finite values), or None when they are fine."""
    if not (np.all(np.isfinite(box)) and np.all(np.isfinite(landmarks))):
        return "box or landmarks are not finite numbers"
    if box[2] <= box[0] or box[3] <= box[1]:
        return f"box {box.tolist()} has no positive width and height"
    return None


def parse_landmark_line(path: str | Path, line: int, text: str) -> LandmarkAnnotation:
    """Parse one list line; DataError naming file and line when fields are missing or not numbers."""
    tokens = text.split()
    if len(tokens) != 1 + _NUMBERS:
        raise DataError(path, f"expected an image path and {_NUMBERS} numbers "
                              f"(box + {len(LANDMARK_NAMES)} landmarks), found {len(tokens)} fields", line=line)
    values = parse_numbers(tokens[1:], _NUMBERS, path, line, "box and landmarks")
    left, right, top, bottom = values[:4]
    annotation = LandmarkAnnotation(tokens[0].replace("\\", "/"), [left, top, right, bottom], values[4:])
    problem = check_landmark_values(annotation.box, annotation.landmarks)
    if problem:
        raise DataError(path, problem, line=line)
    return annotation


def read_landmark_list(path: str | Path, *, log: BadInputLog | None = None) -> list[LandmarkAnnotation]:
    """Read a landmark list; bad lines raise DataError (file and line) or are counted and skipped by ``log``."""
    annotations = []
    for number, text in enumerate(read_text_lines(path), start=1):
        if not text.strip():
            continue
        try:
            annotations.append(parse_landmark_line(path, number, text))
        except DataError as error:
            report(log, error)
    return annotations


def format_landmark_line(annotation: LandmarkAnnotation) -> str:
    """One list line for ``annotation`` (box written as left right top bottom)."""
    if len(annotation.image_path.split()) != 1:
        raise ValueError(f"image path {annotation.image_path!r} must be one token without spaces")
    x1, y1, x2, y2 = annotation.box
    numbers = [x1, x2, y1, y2, *annotation.landmarks.ravel()]
    return " ".join([annotation.image_path, *(format_number(v) for v in numbers)])


def write_landmark_list(path: str | Path, annotations: Sequence[LandmarkAnnotation]) -> None:
    """Write a landmark list atomically; reading it back gives the same float32 values."""
    atomic_write_text(path, "".join(format_landmark_line(a) + "\n" for a in annotations))


def landmark_image_path(list_path: str | Path, annotation: LandmarkAnnotation) -> Path:
    """The image file of ``annotation``: its path resolved against the list file's folder."""
    return Path(list_path).parent / annotation.image_path


def check_landmark_images(list_path: str | Path, annotations: Sequence[LandmarkAnnotation], *,
                          log: BadInputLog | None = None) -> list[LandmarkAnnotation]:
    """The annotations whose image file exists; each missing one raises or is reported through ``log``."""
    found = []
    for annotation in annotations:
        image = landmark_image_path(list_path, annotation)
        if image.is_file():
            found.append(annotation)
        else:
            report(log, DataError(image, f"image listed in {Path(list_path).name} not found"))
    return found

"""FDDB: ``FDDB-fold-XX-ellipseList.txt`` face ellipses, and their conversion to boxes.

Each record is an image path without extension (relative to ``originalPics``), a face count, then one
``major_axis_radius minor_axis_radius angle center_x center_y 1`` line per face (angle in radians
between the major axis and the x axis; the trailing 1 marks an ellipse).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasets.textfile import format_number, read_counted_records, report, write_counted_records
from utils.errors import BadInputLog, DataError

ELLIPSE_FIELDS = ("major_axis_radius", "minor_axis_radius", "angle", "center_x", "center_y")
_FOLD_GLOB = "FDDB-fold-[0-9][0-9]-ellipseList.txt"


@dataclass
class FddbAnnotation:
    """The faces of one FDDB image as ellipses: float32 [N, 5] in ELLIPSE_FIELDS order."""

    image_path: str  # without extension, e.g. "2002/08/11/big/img_591"
    ellipses: np.ndarray

    def __post_init__(self) -> None:
        self.ellipses = np.asarray(self.ellipses, dtype=np.float32).reshape(-1, len(ELLIPSE_FIELDS))

    @property
    def boxes(self) -> np.ndarray:
        """float32 [N, 4] x1, y1, x2, y2: the axis-aligned box around each ellipse."""
        return ellipse_to_box(self.ellipses)


def ellipse_to_box(ellipses: np.ndarray) -> np.ndarray:
    """Tight axis-aligned boxes (x1, y1, x2, y2) around rotated ellipses [N, 5] (FDDB order)."""
    ellipses = np.asarray(ellipses, dtype=np.float64).reshape(-1, len(ELLIPSE_FIELDS))
    major, minor, angle, cx, cy = ellipses.T
    cos, sin = np.cos(angle), np.sin(angle)
    half_w = np.hypot(major * cos, minor * sin)
    half_h = np.hypot(major * sin, minor * cos)
    return np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1).astype(np.float32)


def read_fddb_ellipses(path: str | Path, *, log: BadInputLog | None = None) -> list[FddbAnnotation]:
    """Read an ellipse list; malformed records raise DataError (file and line) or are skipped by ``log``."""
    annotations = []
    for record in read_counted_records(path, len(ELLIPSE_FIELDS) + 1, log=log):
        bad = [i for i, row in enumerate(record.rows) if row[-1] != 1 or row[0] <= 0 or row[1] <= 0]
        if bad:
            report(log, DataError(path, "expected positive radii and a last field of 1 (an ellipse)",
                                  line=record.row_lines[bad[0]]))
            continue
        annotations.append(FddbAnnotation(record.name, record.rows[:, :-1]))
    return annotations


def write_fddb_ellipses(path: str | Path, annotations: Sequence[FddbAnnotation]) -> None:
    """Write an ellipse list atomically; reading it back gives the same float32 values."""
    records = [(a.image_path, [[*(format_number(v) for v in e), "1"] for e in a.ellipses]) for a in annotations]
    write_counted_records(path, records)


def fddb_fold_files(folds_dir: str | Path) -> list[Path]:
    """The ``FDDB-fold-XX-ellipseList.txt`` files of a folder, in fold order (a fold file given instead of the
    folder: that file alone); DataError when there are none."""
    folds_dir = Path(folds_dir)
    if folds_dir.is_file():
        return [folds_dir]
    if not folds_dir.is_dir():
        raise DataError(folds_dir, "FDDB folds folder not found")
    files = sorted(folds_dir.glob(_FOLD_GLOB))
    if not files:
        raise DataError(folds_dir, "no FDDB-fold-XX-ellipseList.txt files in this folder")
    return files


def fddb_image_path(images_root: str | Path, image_path: str, extension: str = ".jpg") -> Path:
    """The image file of an FDDB record: ``<images_root>/<image_path><extension>`` (root = originalPics)."""
    return Path(images_root) / f"{image_path}{extension}"

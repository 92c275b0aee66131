"""WIDER FACE: the ``wider_face_<split>_bbx_gt.txt`` annotations and the easy/medium/hard keep-lists.

Works with any subset of the official splits (the train split alone is enough), unlike
``torchvision.datasets.WIDERFace``, which needs train, val and test all present.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datasets.textfile import (
    format_xywh,
    parse_int,
    read_counted_records,
    read_text_lines,
    report,
    write_counted_records,
)
from utils.atomic import atomic_write_text
from utils.errors import BadInputLog, DataError

WIDER_ATTRIBUTES = ("blur", "expression", "illumination", "invalid", "occlusion", "pose")
WIDER_SPLITS = ("train", "val", "test")
_INVALID = WIDER_ATTRIBUTES.index("invalid")
_FIELDS = 4 + len(WIDER_ATTRIBUTES)  # x y w h, then the attributes in file order (== WIDER_ATTRIBUTES)


@dataclass
class WiderAnnotation:
    """The faces of one WIDER image: boxes as x1, y1, x2, y2 pixels and the six attribute codes per face."""

    image_path: str  # relative to <root>/WIDER_<split>/images
    boxes: np.ndarray  # float32 [N, 4]
    attributes: np.ndarray = field(default=None)  # int64 [N, 6] in WIDER_ATTRIBUTES order; zeros if omitted

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        if self.attributes is None:
            self.attributes = np.zeros((len(self.boxes), len(WIDER_ATTRIBUTES)), dtype=np.int64)
        self.attributes = np.asarray(self.attributes, dtype=np.int64)
        if self.attributes.shape != (len(self.boxes), len(WIDER_ATTRIBUTES)):
            raise ValueError(f"{self.image_path}: attributes shape {self.attributes.shape} does not match "
                             f"{len(self.boxes)} boxes x {len(WIDER_ATTRIBUTES)} attributes")

    @property
    def zero_size(self) -> np.ndarray:
        """bool [N]: boxes without positive width and height (kept in the file, useless for training)."""
        return (self.boxes[:, 2] <= self.boxes[:, 0]) | (self.boxes[:, 3] <= self.boxes[:, 1])

    @property
    def valid(self) -> np.ndarray:
        """bool [N]: faces usable as ground truth (not flagged invalid and of positive size)."""
        return (self.attributes[:, _INVALID] == 0) & ~self.zero_size


@dataclass(frozen=True)
class WiderStats:
    """Counts over a list of annotations, for logs and sanity checks."""

    images: int
    faces: int
    valid_faces: int
    invalid_flagged: int
    zero_size: int
    images_without_faces: int


def wider_stats(annotations: Sequence[WiderAnnotation]) -> WiderStats:
    """Count images, faces, valid faces, invalid-flagged and zero-size boxes, and images without faces."""
    return WiderStats(
        images=len(annotations),
        faces=sum(len(a.boxes) for a in annotations),
        valid_faces=sum(int(a.valid.sum()) for a in annotations),
        invalid_flagged=sum(int((a.attributes[:, _INVALID] != 0).sum()) for a in annotations),
        zero_size=sum(int(a.zero_size.sum()) for a in annotations),
        images_without_faces=sum(len(a.boxes) == 0 for a in annotations),
    )


def read_wider_annotations(path: str | Path, *, log: BadInputLog | None = None) -> list[WiderAnnotation]:
    """Read a ``wider_face_*_bbx_gt.txt`` file (``x y w h`` become ``x1 y1 x2 y2``).

    Malformed records raise DataError naming file and line; with a non-strict ``log`` they are counted
    and skipped, and reading goes on at the next image path.
    """
    annotations = []
    for record in read_counted_records(path, _FIELDS, zero_row=True, log=log):
        attributes = record.rows[:, 4:]
        fractional = np.flatnonzero(np.any(attributes != np.round(attributes), axis=1))
        if fractional.size:
            line = record.row_lines[fractional[0]]
            report(log, DataError(path, "attribute codes must be whole numbers", line=line))
            continue
        xy, wh = record.rows[:, :2], record.rows[:, 2:4]
        boxes = np.concatenate([xy, xy + wh], axis=1)
        annotations.append(WiderAnnotation(record.name, boxes, attributes.astype(np.int64)))
    return annotations


def write_wider_annotations(path: str | Path, annotations: Sequence[WiderAnnotation]) -> None:
    """Write annotations atomically in the official format (an empty image gets one line of zeros)."""
    records = []
    for annotation in annotations:
        rows = [[*format_xywh(box), *(str(int(code)) for code in codes)]
                for box, codes in zip(annotation.boxes, annotation.attributes)]
        records.append((annotation.image_path, rows))
    write_counted_records(path, records, zero_row_fields=_FIELDS)


def wider_split_paths(root: str | Path, split: str) -> tuple[Path, Path]:
    """``(<root>/WIDER_<split>/images, <root>/wider_face_split/wider_face_<split>_bbx_gt.txt)``."""
    if split not in WIDER_SPLITS:
        raise ValueError(f"WIDER split must be one of {WIDER_SPLITS}, got {split!r}")
    root = Path(root)
    return root / f"WIDER_{split}" / "images", root / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt"


# --- easy / medium / hard keep-lists -------------------------------------------------------------------
# The official subsets are MATLAB files (wider_{easy,medium,hard}_val.mat: per event and image, the
# 1-based numbers of the faces that count). They are read with scipy.io.loadmat when scipy is installed
# (it comes with scikit-learn). The same content in plain text, one image per line as
# ``<event>/<image>.jpg n1 n2 ...`` with the same 1-based face numbers, needs nothing.


def _mat_text(cell: Any) -> str:
    """The string inside a loadmat cell, however deeply it is wrapped in 1x1 arrays."""
    value = np.asarray(cell)
    while value.dtype == object:
        value = np.asarray(value.ravel()[0])
    return str(value.ravel()[0]) if value.size else ""


def _mat_cells(cell: Any) -> list[Any]:
    """The elements of a MATLAB cell array (loadmat gives an object array, often wrapped once more)."""
    value = np.asarray(cell, dtype=object)
    while value.size == 1 and isinstance(value.ravel()[0], np.ndarray) and value.ravel()[0].dtype == object:
        value = value.ravel()[0]
    return list(value.ravel())


def _read_keep_mat(path: Path, names_from: Path | None) -> dict[str, np.ndarray]:
    """Read ``gt_list`` (and ``event_list``/``file_list``, from ``names_from`` when given) of a .mat file."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DataError(path, "reading .mat keep-lists needs scipy (pip install scipy), "
                              "or give the keep-list as text") from None
    def load(mat_path: Path) -> dict[str, Any]:
        if not mat_path.is_file():
            raise DataError(mat_path, "file not found")
        try:
            return loadmat(str(mat_path))
        except (OSError, ValueError, TypeError, NotImplementedError) as exc:
            raise DataError(mat_path, f"not a readable MATLAB file ({exc})") from None

    keep = load(path)
    source = names_from if names_from is not None else path
    names = load(source) if names_from is not None else keep
    for key, mat, where in (("gt_list", keep, path), ("event_list", names, source), ("file_list", names, source)):
        if key not in mat:
            hint = "" if names_from is not None else "; pass wider_face_val.mat as names_from"
            raise DataError(where, f"MATLAB file has no {key!r} variable{hint}")
    events = _mat_cells(names["event_list"])
    files = _mat_cells(names["file_list"])
    kept = _mat_cells(keep["gt_list"])
    if not len(events) == len(files) == len(kept):
        raise DataError(path, f"{len(kept)} events in gt_list but {len(events)} in event_list")
    result: dict[str, np.ndarray] = {}
    for event, event_files, event_keep in zip(events, files, kept):
        event_name, file_cells, keep_cells = _mat_text(event), _mat_cells(event_files), _mat_cells(event_keep)
        if len(file_cells) != len(keep_cells):
            raise DataError(path, f"event {event_name}: {len(keep_cells)} keep entries for {len(file_cells)} images")
        for name, numbers in zip(file_cells, keep_cells):
            result[f"{event_name}/{_mat_text(name)}.jpg"] = np.asarray(numbers, dtype=np.int64).ravel() - 1
    return result


def _read_keep_text(path: Path) -> dict[str, np.ndarray]:
    """Read the text keep-list: ``<event>/<image>.jpg n1 n2 ...`` with 1-based face numbers."""
    result: dict[str, np.ndarray] = {}
    for number, text in enumerate(read_text_lines(path), start=1):
        tokens = text.split()
        if not tokens:
            continue
        if tokens[0] in result:
            raise DataError(path, f"{tokens[0]} is listed twice", line=number)
        faces = [parse_int(t, path, number, "face number", minimum=1) for t in tokens[1:]]
        result[tokens[0]] = np.asarray(faces, dtype=np.int64) - 1
    return result


def read_wider_keep_list(path: str | Path, *, names_from: str | Path | None = None) -> dict[str, np.ndarray]:
    """Read an easy/medium/hard keep-list: image path -> 0-based indices of its faces that count.

    ``.mat`` files are the official ones (needs scipy); ``names_from`` is the MATLAB file holding
    ``event_list``/``file_list`` when ``path`` has only ``gt_list``. Any other suffix is the text form.
    """
    path = Path(path)
    if path.suffix.lower() == ".mat":
        return _read_keep_mat(path, Path(names_from) if names_from is not None else None)
    return _read_keep_text(path)


def write_wider_keep_list(path: str | Path, keep: Mapping[str, np.ndarray]) -> None:
    """Write a keep-list (image path -> 0-based face indices) atomically in the text form."""
    lines = [" ".join([name, *(str(int(i) + 1) for i in np.asarray(faces).ravel())]) for name, faces in keep.items()]
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def keep_masks(annotations: Sequence[WiderAnnotation], keep: Mapping[str, np.ndarray],
               path: str | Path = "keep-list") -> list[np.ndarray]:
    """bool [N] per annotation: the faces that count in the subset (images absent from it: none).

    A face index beyond an image's face count raises DataError naming ``path`` (a keep-list made for
    another annotation file).
    """
    masks = []
    for annotation in annotations:
        mask = np.zeros(len(annotation.boxes), dtype=bool)
        indices = keep.get(annotation.image_path, np.zeros(0, dtype=np.int64))
        if indices.size and (indices.min() < 0 or indices.max() >= len(mask)):
            raise DataError(path, f"{annotation.image_path}: face number {int(indices.max()) + 1} "
                                  f"but the image has {len(mask)} faces")
        mask[indices] = True
        masks.append(mask)
    return masks

"""The one face preprocessing of the toolkit: what ``prepare_training_data.py --align`` does to the photos the
embedder trains on, the system (``models.system``) does to the photos it serves, and the export calibrates on.

1. **Main face.** :func:`main_face_order` ranks a photo's detections, main face first: ``largest`` by falling
   box area, ``central`` by rising distance of the box centre from the image centre (LFW-style photos centred
   on their subject). Ties go to the other rule's order, then to the detector's order (the lower index).
2. **Cut.** :func:`cut_faces` aligns each face (5-point similarity, or its box) into a square crop of a given
   side and margin (``models.alignment.align_faces``); a face that cannot be aligned gives None.
3. **Resize.** :func:`resize_face` brings a crop to the embedder's input side: OpenCV area averaging when
   shrinking, bilinear when enlarging. Training reads its aligned crops through it (``load_crop``), the system
   and the export resize their crops with it (:func:`resize_crops`).
4. **Standardize.** Inside the embedder, for training and inference alike (``models.embedder.standardize``).
5. **Record.** :class:`EmbedderRecord` is the ``embedder`` entry of a checkpoint: the ``Embedder.build``
   arguments and the face cut (:class:`AlignSettings`) the embedder was trained on; ``as_dict`` writes it
   (the trainer), ``from_dict`` reads it (the system, the export, the ONNX sidecar).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, get_args

import cv2
import numpy as np
import torch
from torch import Tensor

from config import FaceSelection
from models.alignment import METHODS as ALIGN_METHODS, align_faces
from models.detector import Detections
from models.embedder import Embedder

FACE_SELECTION = get_args(FaceSelection)


@dataclass
class AlignSettings:
    """How faces are cut out for the embedder, as its training crops were (``config.align``): output side
    (0: the embedder's input size; crops of another size are resized for the embedder), margin, method, and
    which face of a photo is its main face."""

    size: int = 0
    margin: float = 0.0
    method: str = "similarity"
    select: str = "largest"

    def __post_init__(self) -> None:
        if self.method not in ALIGN_METHODS:
            raise ValueError(f"alignment method must be one of {', '.join(ALIGN_METHODS)}, got {self.method!r}")
        if self.select not in FACE_SELECTION:
            raise ValueError(f"face selection must be one of {', '.join(FACE_SELECTION)}, got {self.select!r}")


def main_face_order(boxes: np.ndarray | Tensor, height: int, width: int, select: str = "largest") -> list[int]:
    """Face indices, main face first: by falling box area (``largest``) or by rising distance of the box centre
    from the image centre (``central``); ties by the other rule, then by index."""
    if select not in FACE_SELECTION:
        raise ValueError(f"face selection must be one of {', '.join(FACE_SELECTION)}, got {select!r}")
    boxes = np.asarray(boxes.detach().cpu() if isinstance(boxes, Tensor) else boxes, dtype=np.float64).reshape(-1, 4)
    area = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
    distance = np.hypot((boxes[:, 0] + boxes[:, 2]) / 2 - width / 2, (boxes[:, 1] + boxes[:, 3]) / 2 - height / 2)
    index = np.arange(len(boxes))
    keys = (index, distance, -area) if select == "largest" else (index, -area, distance)
    return np.lexsort(keys).tolist()  # the last key sorts first


def select_faces(detections: Detections, order: list[int]) -> Detections:
    """The detections of the faces ``order`` lists, in that order."""
    index = torch.as_tensor(order, dtype=torch.long)
    landmarks = detections.landmarks
    return Detections(detections.boxes[index], detections.scores[index],
                      None if landmarks is None else landmarks[index], detections.stage)


def cut_faces(image: np.ndarray, faces: Detections, size: int, margin: float, method: str) -> list[Tensor | None]:
    """Each face aligned into a ``size`` px square uint8 crop [3, size, size] with ``margin`` pixels of context
    (in the detections' order); None for a face that cannot be aligned (degenerate landmarks or box)."""
    try:
        return list(align_faces(image, faces, size, margin, method))
    except ValueError:
        pass
    crops: list[Tensor | None] = []
    for k in range(len(faces)):  # isolate the faces that cannot be aligned
        try:
            crops.append(align_faces(image, select_faces(faces, [k]), size, margin, method)[0])
        except ValueError:
            crops.append(None)
    return crops


def centre_square(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The centre square of an HxWx3 image (an aligned crop read back: its face) and its box [x1, y1, x2, y2]."""
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return np.ascontiguousarray(image[top:top + side, left:left + side]), np.array([left, top, left + side, top + side])


def resize_face(crop: np.ndarray, side: int) -> np.ndarray:
    """An HxWx3 uint8 square crop at ``side`` px: OpenCV area averaging when shrinking, bilinear when enlarging."""
    if crop.shape[0] == side:
        return np.ascontiguousarray(crop)
    method = cv2.INTER_AREA if crop.shape[0] > side else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(crop), (side, side), interpolation=method)


def resize_crops(crops: Tensor, side: int) -> Tensor:
    """uint8 crops [N, 3, s, s] -> [N, 3, side, side] by :func:`resize_face`."""
    if crops.shape[-1] == side or len(crops) == 0:
        return crops
    resized = [resize_face(c.permute(1, 2, 0).numpy(), side) for c in crops]
    return torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).contiguous()


@dataclass(frozen=True)
class EmbedderRecord:
    """The ``embedder`` entry of a checkpoint: what rebuilds the model (``Embedder.build`` arguments) and how its
    training faces were cut (None: not recorded)."""

    backbone: str
    embedding_size: int
    input_size: int
    width: float = 1.0
    dropout: float = 0.0
    standardization: str = "fixed"
    align: AlignSettings | None = None

    def build(self) -> Embedder:
        """A fresh :class:`Embedder` of this architecture."""
        return Embedder.build(self.backbone, embedding_size=self.embedding_size, dropout=self.dropout,
                              input_size=self.input_size, width=self.width, standardization=self.standardization)

    def as_dict(self) -> dict[str, Any]:
        """The entry as written into checkpoints and ONNX sidecars (``margin_at_input_size``: for reading only)."""
        entry: dict[str, Any] = {"backbone": self.backbone, "embedding_size": self.embedding_size,
                                 "input_size": self.input_size, "width": self.width, "dropout": self.dropout,
                                 "standardization": self.standardization}
        if self.align is not None:
            entry["align"] = {"size": self.align.size, "margin": self.align.margin, "method": self.align.method,
                              "margin_at_input_size": self.align.margin * self.input_size / self.align.size}
        return entry

    @classmethod
    def from_dict(cls, entry: Any) -> EmbedderRecord:
        """Read an entry written by :meth:`as_dict`; KeyError, TypeError or ValueError when it is incomplete."""
        if not isinstance(entry, dict):
            raise TypeError(f"expected a dict, found {type(entry).__name__}")
        cut = entry.get("align")
        align = None if not isinstance(cut, dict) else AlignSettings(int(cut["size"]), float(cut["margin"]),
                                                                     str(cut["method"]))
        return cls(str(entry["backbone"]), int(entry["embedding_size"]), int(entry["input_size"]),
                   float(entry.get("width", 1.0)), float(entry.get("dropout", 0.0)),
                   str(entry.get("standardization", "fixed")), align)

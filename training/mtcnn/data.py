"""The data of MTCNN training: WIDER-format detection annotations and 5-point landmark lists named by the
config, split into training and validation (WIDER_val, or every Nth training image held out), with the
official easy/medium/hard keep-lists when they are present."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from config import Config
from datasets.celeba import read_celeba_landmark_annotations
from datasets.landmarks import landmark_image_path, read_landmark_list
from datasets.wider import keep_masks, read_wider_annotations, read_wider_keep_list, wider_split_paths
from training.mtcnn.samples import DetectionItem, LandmarkItem
from utils.errors import BadInputLog, DataError

SUBSETS = ("easy", "medium", "hard")


@dataclass
class MTCNNData:
    """The detection and landmark items of the run, split into training and validation."""

    train: list[DetectionItem]
    val: list[DetectionItem]
    val_names: list[str]  # image paths as the annotation file gives them (keep-list keys)
    landmarks_train: list[LandmarkItem]
    landmarks_test: list[LandmarkItem]
    keep: dict[str, list[np.ndarray]] = field(default_factory=dict)  # subset -> per val image bool masks


def _detection_items(images_dir: Path, annotations: list) -> list[DetectionItem]:
    return [DetectionItem(str(images_dir / a.image_path), a.boxes, a.valid) for a in annotations]


def _landmark_items(list_path: Path, annotations: list) -> list[LandmarkItem]:
    return [LandmarkItem(str(landmark_image_path(list_path, a)), a.box, a.landmarks) for a in annotations]


def _every(items: list, n: int, held_out: bool) -> list:
    """Every ``n``-th item (the n-th, 2n-th, ...) when ``held_out``, else all the others."""
    return [x for i, x in enumerate(items) if ((i + 1) % n == 0) == held_out]


def _subsample(items: list, fraction: float) -> list:
    """An evenly spaced ``fraction`` of ``items`` (all when fraction is 1)."""
    if fraction >= 1.0 or not items:
        return items
    count = max(1, int(round(len(items) * fraction)))
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


def _find_keep_lists(root: Path) -> dict[str, dict[str, np.ndarray]]:
    """The official easy/medium/hard val keep-lists under ``root`` (.mat needs wider_face_val.mat), if present."""
    found = {}
    for folder in (root / "wider_face_split", root / "eval_tools" / "ground_truth", root / "ground_truth"):
        for subset in SUBSETS:
            if subset in found:
                continue
            mat, text = folder / f"wider_{subset}_val.mat", folder / f"wider_{subset}_val.txt"
            names = folder / "wider_face_val.mat"
            if mat.is_file():
                found[subset] = read_wider_keep_list(mat, names_from=names if names.is_file() else None)
            elif text.is_file():
                found[subset] = read_wider_keep_list(text)
    return found


def load_data(config: Config, log: BadInputLog) -> MTCNNData:
    """Read the WIDER-format annotations and landmark lists named by the config and split them."""
    m = config.mtcnn
    root = config.path("wider_face")
    train_images, train_file = wider_split_paths(root, "train")
    train_ann = read_wider_annotations(train_file, log=log)
    keep_lists: dict[str, dict[str, np.ndarray]] = {}
    if m.holdout_every > 0:
        val_images, val_ann = train_images, _every(train_ann, m.holdout_every, True)
        train_ann = _every(train_ann, m.holdout_every, False)
    else:
        val_images, val_file = wider_split_paths(root, "val")
        if not val_file.is_file():
            raise DataError(val_file, "validation annotations not found; set mtcnn.holdout_every=10 to hold out "
                                      "every 10th training image instead")
        val_ann = read_wider_annotations(val_file, log=log)
        keep_lists = _find_keep_lists(root)
    if m.eval_max_images > 0:
        val_ann = _subsample(val_ann, m.eval_max_images / max(len(val_ann), 1))
    train_ann = _subsample(train_ann, m.train_fraction_of_images)

    marks_train_path, marks_test_path = config.path("landmarks_train"), config.path("landmarks_test")
    marks_train = read_landmark_list(marks_train_path, log=log)
    if marks_test_path == marks_train_path:
        every = m.holdout_every if m.holdout_every > 0 else 10
        marks_test, marks_train = _every(marks_train, every, True), _every(marks_train, every, False)
        marks_test_path = marks_train_path
    else:
        marks_test = read_landmark_list(marks_test_path, log=log)
    landmarks_train = _landmark_items(marks_train_path, _subsample(marks_train, m.train_fraction_of_images))
    celeba = config.path("celeba")
    bbox, points = celeba / "list_bbox_celeba.txt", celeba / "list_landmarks_celeba.txt"
    if bbox.is_file() and points.is_file():
        annotations = read_celeba_landmark_annotations(bbox, points, log=log)
        landmarks_train += [LandmarkItem(str(celeba / "img_celeba" / a.image_path), a.box, a.landmarks)
                            for a in _subsample(annotations, m.train_fraction_of_images)]
    keep = {name: keep_masks(val_ann, lists, f"wider_{name}_val") for name, lists in keep_lists.items()}
    return MTCNNData(_detection_items(train_images, train_ann), _detection_items(val_images, val_ann),
                     [a.image_path for a in val_ann], landmarks_train,
                     _landmark_items(marks_test_path, marks_test), keep)


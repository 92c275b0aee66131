"""The synthetic set's size spec (``SyntheticSpec``) and the rendering of one picture of it.

Kept apart from ``datasets.synthetic`` (which also writes the lists) so that worker processes import only
numpy, OpenCV and the drawing modules. Every picture's generator is seeded by (seed, kind, split, index),
so its file is byte-identical whichever process renders it, in whatever order.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from datasets.synthetic.looks import FaceLook, sample_look
from datasets.synthetic.scene import SceneSettings, render_portrait, render_scene
from utils.images import write_image

_POOLS = {"scene": 0, "train": 1, "val": 2, "test": 3, "landmark_train": 4, "landmark_test": 5}  # disjoint looks
_KINDS = {"scene": 10, "landmark": 11, "identity": 12, "lfw": 13, "pairs": 14}
_SPLITS = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class SyntheticSpec:
    """Sizes of the synthetic set; every field is a plain value so config.py can mirror it.

    The defaults (750 scenes, 600 x 8 identity photos, 80 + 40 x 8 pair-set photos, 2,400 landmark crops)
    take about 90 seconds with 2 workers on an idle 2-core machine.
    """

    seed: int = 0
    train_scenes: int = 600  # WIDER_train pictures
    val_scenes: int = 150  # WIDER_val pictures
    scene_sizes: tuple[tuple[int, int], ...] = ((640, 480), (560, 420), (480, 360), (480, 640), (360, 480))
    max_faces_per_scene: int = 8
    empty_scene_fraction: float = 0.08  # scenes with no face at all
    min_face: int = 12  # face box height range in scenes, pixels (hairline to chin)
    max_face: int = 250
    scene_identities: int = 300  # people who appear in scenes
    train_identities: int = 600  # identities/<id>/ folders (VGGFace2 shape)
    images_per_identity: int = 8
    identity_width: tuple[int, int] = (180, 260)  # identity photo size ranges, pixels
    identity_height: tuple[int, int] = (200, 300)
    val_identities: int = 80  # lfw_val: held-out people, pairs for validation / threshold tuning
    val_images_per_identity: int = 8
    val_folds: int = 10
    val_pairs_per_fold: int = 30  # same pairs per fold (and as many different ones)
    test_identities: int = 40  # lfw_test: other held-out people, for the end-to-end system test
    test_images_per_identity: int = 8
    test_folds: int = 10
    test_pairs_per_fold: int = 30
    lfw_image_size: int = 160  # square pair-set photos, face roughly centred
    landmark_train: int = 2000  # landmark crops (lfw_5590 80 px style)
    landmark_test: int = 400
    landmark_image_size: int = 80
    jpeg_quality: tuple[int, int] = (72, 95)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def scene_settings(self) -> SceneSettings:
        """The crowd-scene settings these sizes imply."""
        return SceneSettings(max_faces=self.max_faces_per_scene, empty_fraction=self.empty_scene_fraction,
                             min_face=float(self.min_face), max_face=float(self.max_face),
                             jpeg_quality=self.jpeg_quality)

    def validate(self) -> None:
        """Refuse sizes that cannot produce a usable set (ValueError naming the field)."""
        if self.min_face < 8 or self.max_face < self.min_face:
            raise ValueError(f"need 8 <= min_face <= max_face, got {self.min_face}, {self.max_face}")
        if self.images_per_identity < 2 or self.train_identities < 2:
            raise ValueError("need at least 2 training identities with at least 2 images each")
        for split in ("val", "test"):
            ids, images = getattr(self, f"{split}_identities"), getattr(self, f"{split}_images_per_identity")
            folds, per_fold = getattr(self, f"{split}_folds"), getattr(self, f"{split}_pairs_per_fold")
            if folds < 1 or per_fold < 1 or images < 2 or ids < 2 * folds:
                raise ValueError(f"{split}: need >= 1 fold, >= 1 pair per fold, >= 2 images per identity and "
                                 f">= 2 identities per fold ({ids} identities for {folds} folds)")
            smallest = ids // folds
            if smallest * images * (images - 1) // 2 < per_fold:
                raise ValueError(f"{split}: {per_fold} same pairs per fold need more images or identities per fold")
            if smallest * (smallest - 1) // 2 * images * images < 2 * per_fold:
                raise ValueError(f"{split}: {per_fold} different pairs per fold need more identities per fold")


@lru_cache(maxsize=4096)
def identity_look(seed: int, pool: str, index: int) -> FaceLook:
    """The look of identity ``index`` of a pool ("scene", "train", "val", "test", "landmark_train/test")."""
    return sample_look(np.random.default_rng([seed, 1000 + _POOLS[pool], index]))


def item_rng(seed: int, kind: str, split: str, *index: int) -> np.random.Generator:
    """The generator of one picture (or one pairs fold): seeded by seed, kind, split and index."""
    return np.random.default_rng([seed, _KINDS[kind], _SPLITS[split], *index])


def identity_name(split: str, index: int) -> str:
    """Folder name of identity ``index``: VGGFace2-like ids for training, LFW-like names for val/test."""
    if split == "train":
        return f"n{index + 1:06d}"
    return f"{split.capitalize()}_Person_{index + 1:04d}"


def init_worker() -> None:
    """Worker-process setup: one OpenCV thread per process (the pool provides the parallelism)."""
    cv2.setNumThreads(1)


@dataclass(frozen=True)
class Item:
    """One picture to render: its kind ("scene", "identity", "lfw", "landmark"), split, indices and file."""

    kind: str
    split: str
    identity: int
    number: int
    path: str


def render_item(spec: SyntheticSpec, item: Item) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render and write one picture; return its boxes [N, 4], landmarks [N, 5, 2] and WIDER attributes [N, 6]."""
    rng = item_rng(spec.seed, item.kind, item.split, item.identity, item.number)
    if item.kind == "scene":
        width, height = spec.scene_sizes[int(rng.integers(len(spec.scene_sizes)))]
        image, faces, quality = render_scene(rng, width, height, spec.scene_settings,
                                             lambda k: identity_look(spec.seed, "scene", k), spec.scene_identities)
    elif item.kind == "landmark":
        size = spec.landmark_image_size
        image, face, quality = render_portrait(rng, identity_look(spec.seed, f"landmark_{item.split}", item.number),
                                               size, size, face_height=(0.38, 0.5), centred=True, max_roll=20.0,
                                               shapes=(4, 12), jpeg_quality=spec.jpeg_quality)
        faces = [face]
    elif item.kind == "lfw":
        size = spec.lfw_image_size
        image, face, quality = render_portrait(rng, identity_look(spec.seed, item.split, item.identity), size, size,
                                               face_height=(0.42, 0.5), centred=True, max_roll=16.0, shapes=(6, 20),
                                               jpeg_quality=spec.jpeg_quality)
        faces = [face]
    elif item.kind == "identity":
        width = int(rng.integers(spec.identity_width[0], spec.identity_width[1] + 1))
        height = int(rng.integers(spec.identity_height[0], spec.identity_height[1] + 1))
        image, face, quality = render_portrait(rng, identity_look(spec.seed, "train", item.identity), width, height,
                                               face_height=(0.3, 0.55), centred=False, max_roll=18.0, shapes=(8, 25),
                                               jpeg_quality=spec.jpeg_quality)
        faces = [face]
    else:
        raise ValueError(f"unknown item kind {item.kind!r}")
    write_image(Path(item.path), image, quality=quality)
    boxes = np.array([f.box for f in faces], np.float32).reshape(-1, 4)
    landmarks = np.array([f.landmarks for f in faces], np.float32).reshape(-1, 5, 2)
    attributes = np.array([f.attributes for f in faces], np.int64).reshape(-1, 6)
    return boxes, landmarks, attributes

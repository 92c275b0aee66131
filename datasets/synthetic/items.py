"""The rendering of one picture of the synthetic set (its sizes: ``config.SyntheticSpec``).

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

from config import SyntheticSpec
from datasets.synthetic.looks import FaceLook, sample_look
from datasets.synthetic.scene import SceneSettings, render_portrait, render_scene
from utils.images import write_image

_POOLS = {"scene": 0, "train": 1, "val": 2, "test": 3, "landmark_train": 4, "landmark_test": 5}  # disjoint looks
_KINDS = {"scene": 10, "landmark": 11, "identity": 12, "lfw": 13, "pairs": 14}
_SPLITS = {"train": 0, "val": 1, "test": 2}


def scene_settings(spec: SyntheticSpec) -> SceneSettings:
    """The crowd-scene settings the spec's sizes imply."""
    return SceneSettings(max_faces=spec.max_faces_per_scene, empty_fraction=spec.empty_scene_fraction,
                         min_face=float(spec.min_face), max_face=float(spec.max_face), jpeg_quality=spec.jpeg_quality)


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
        image, faces, quality = render_scene(rng, width, height, scene_settings(spec),
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

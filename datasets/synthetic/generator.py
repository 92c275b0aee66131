"""The synthetic face set: a deterministic (by seed) stand-in for WIDER FACE, the lfw_5590 landmark list,
VGGFace2-style identity folders and LFW-style pairs sets, written in those datasets' own formats so the
same readers serve real and synthetic data.

Layout under ``out_dir``::

    WIDER_{train,val}/images/0--Synthetic/*.jpg, wider_face_split/wider_face_{train,val}_bbx_gt.txt
    WIDER_{train,val}/landmarks.txt                                      (every scene face: box + 5 points)
    landmarks/images/*.jpg, landmarks/landmarks_{train,test}.txt         (lfw_5590 list format)
    identities/<identity>/<n>.jpg, identity_landmarks.txt                (unaligned photos; their boxes)
    lfw_{val,test}/images/<Name>/<Name>_NNNN.jpg, pairs.txt, landmarks.txt
    manifest.json                                                        (written last: the set is complete)

Every picture has its own random generator seeded by (seed, kind, split, index), so worker processes
produce byte-identical files in any order. Images and lists are written atomically; a regeneration first
marks the folder as in progress and removes the previous set, so a crash never leaves a mixed set that
looks complete. ``eigenfaces_baseline`` and ``make_contact_sheet`` (from ``datasets.synthetic.eval``) check
a generated set.
"""
from __future__ import annotations

import json
import multiprocessing
import shutil
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from tqdm import tqdm

from config import SyntheticSpec
from datasets.landmarks import LandmarkAnnotation, write_landmark_list
from datasets.lfw import Pair, lfw_image_path, write_pairs
from datasets.synthetic.eval import IDENTITY_LANDMARKS, SCENE_LANDMARKS
from datasets.synthetic.items import (
    Item,
    identity_name,
    init_worker,
    item_rng,
    render_item,
)
from datasets.wider import WiderAnnotation, wider_split_paths, write_wider_annotations
from utils.atomic import atomic_write_text
from utils.errors import DataError

GENERATOR_VERSION = 1
MANIFEST = "manifest.json"
IN_PROGRESS = ".synthetic_in_progress"
WIDER_EVENT = "0--Synthetic"
OUTPUTS = ("WIDER_train", "WIDER_val", "wider_face_split", "landmarks", "identities", "lfw_val", "lfw_test",
           IDENTITY_LANDMARKS)


def make_pair_folds(seed: int, split: str, identities: int, images: int, folds: int, per_fold: int) -> list[list[Pair]]:
    """LFW View-2 style folds: each identity in one fold; per fold ``per_fold`` same then as many different pairs."""
    result = []
    for fold in range(folds):
        rng = item_rng(seed, "pairs", split, fold)
        members = list(range(fold, identities, folds))
        candidates = [(m, i, j) for m in members for i in range(1, images + 1) for j in range(i + 1, images + 1)]
        same = []
        for c in rng.choice(len(candidates), size=per_fold, replace=False):
            member, i, j = candidates[int(c)]
            same.append(Pair(identity_name(split, member), i, identity_name(split, member), j))
        different: dict[tuple[int, int, int, int], Pair] = {}
        while len(different) < per_fold:
            a, b = sorted(int(v) for v in rng.choice(members, size=2, replace=False))
            i, j = (int(v) for v in rng.integers(1, images + 1, size=2))
            different.setdefault((a, i, b, j), Pair(identity_name(split, a), i, identity_name(split, b), j))
        result.append(same + list(different.values()))
    return result


def _items(out_dir: Path, spec: SyntheticSpec) -> list[Item]:
    """Every picture of the set with its destination file, in list order."""
    items = []
    for split, count in (("train", spec.train_scenes), ("val", spec.val_scenes)):
        images_dir = wider_split_paths(out_dir, split)[0]
        items += [Item("scene", split, 0, i, str(images_dir / WIDER_EVENT / f"0_Synthetic_{i:06d}.jpg"))
                  for i in range(count)]
    identities = out_dir / "identities"
    items += [Item("identity", "train", k, n, str(identities / identity_name("train", k) / f"{n + 1:04d}.jpg"))
              for k in range(spec.train_identities) for n in range(spec.images_per_identity)]
    for split in ("val", "test"):
        images_dir = out_dir / f"lfw_{split}" / "images"
        items += [Item("lfw", split, k, n, str(lfw_image_path(images_dir, identity_name(split, k), n + 1)))
                  for k in range(getattr(spec, f"{split}_identities"))
                  for n in range(getattr(spec, f"{split}_images_per_identity"))]
    for split, count in (("train", spec.landmark_train), ("test", spec.landmark_test)):
        items += [Item("landmark", split, 0, i, str(out_dir / "landmarks" / "images" / f"{split}_{i:06d}.jpg"))
                  for i in range(count)]
    return items


def _spec_json(spec: SyntheticSpec) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(spec)))


def _read_manifest(out_dir: Path) -> dict[str, Any] | None:
    """The manifest of a complete synthetic set in ``out_dir``, or None."""
    path = out_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("generator") == "datasets.synthetic" else None


def _prepare_folder(out_dir: Path) -> None:
    """Mark ``out_dir`` as being written and remove a previous synthetic set; refuse anyone else's data."""
    ours = _read_manifest(out_dir) is not None or (out_dir / IN_PROGRESS).exists()
    present = [name for name in OUTPUTS if (out_dir / name).exists()]
    if present and not ours:
        raise DataError(out_dir, f"holds {', '.join(present)} not written by the synthetic generator "
                                 "(no manifest.json); refusing to overwrite, choose an empty folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / IN_PROGRESS, "synthetic face set being written; incomplete until manifest.json\n")
    (out_dir / MANIFEST).unlink(missing_ok=True)
    for name in present:
        target = out_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()


def generate_synthetic_set(out_dir: str | Path, spec: SyntheticSpec | None = None, workers: int = 2, *,
                           progress: bool = True, force: bool = False) -> dict[str, int]:
    """Write the synthetic set under ``out_dir`` and return its counts (also stored in manifest.json).

    A folder holding a complete set made from the same spec is left as it is unless ``force``.
    ``workers`` > 1 renders in that many spawned processes (so a calling script needs the usual
    ``if __name__ == "__main__":`` guard); the files are byte-identical for any worker count.
    """
    out_dir = Path(out_dir)
    spec = spec or SyntheticSpec()
    manifest = _read_manifest(out_dir)
    if (not force and manifest is not None and manifest.get("version") == GENERATOR_VERSION
            and manifest.get("spec") == _spec_json(spec)):
        return dict(manifest["counts"])
    start = time.perf_counter()
    _prepare_folder(out_dir)
    items = _items(out_dir, spec)
    render = partial(render_item, spec)
    results = []
    if workers > 1:
        # spawn, not fork: a forked child can hang on OpenCV / OpenMP thread pools the parent already used
        with multiprocessing.get_context("spawn").Pool(workers, initializer=init_worker) as pool:
            for result in tqdm(pool.imap(render, items, chunksize=8), total=len(items), desc="synthetic faces",
                               unit="img", disable=not progress):
                results.append(result)
    else:
        for item in tqdm(items, desc="synthetic faces", unit="img", disable=not progress):
            results.append(render(item))
    counts = _write_lists(out_dir, spec, items, results)
    manifest = {"generator": "datasets.synthetic", "version": GENERATOR_VERSION, "seed": spec.seed,
                "spec": _spec_json(spec), "counts": counts}
    atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    (out_dir / IN_PROGRESS).unlink(missing_ok=True)
    return {**counts, "seconds": round(time.perf_counter() - start, 1)}


def _write_lists(out_dir: Path, spec: SyntheticSpec, items: list[Item], results: list[tuple]) -> dict[str, int]:
    """Write every annotation list and pairs file; return the counts for the manifest."""
    groups: dict[tuple[str, str], list[tuple[str, Any, Any, Any]]] = {}
    for item, (boxes, landmarks, attributes) in zip(items, results):
        groups.setdefault((item.kind, item.split), []).append((item.path, boxes, landmarks, attributes))

    def faces(key: tuple[str, str], root: Path) -> list[LandmarkAnnotation]:
        return [LandmarkAnnotation(Path(path).relative_to(root).as_posix(), box, lm)
                for path, boxes, landmarks, _ in groups.get(key, []) for box, lm in zip(boxes, landmarks)]

    counts: dict[str, int] = {}
    for split in ("train", "val"):
        images_dir, annotation_file = wider_split_paths(out_dir, split)
        scenes = groups.get(("scene", split), [])
        write_wider_annotations(annotation_file, [WiderAnnotation(Path(path).relative_to(images_dir).as_posix(),
                                                                  boxes, attributes)
                                                  for path, boxes, _, attributes in scenes])
        write_landmark_list(images_dir.parent / SCENE_LANDMARKS, faces(("scene", split), images_dir.parent))
        counts[f"wider_{split}_images"] = len(scenes)
        counts[f"wider_{split}_faces"] = sum(len(boxes) for _, boxes, _, _ in scenes)
        counts[f"wider_{split}_empty_images"] = sum(len(boxes) == 0 for _, boxes, _, _ in scenes)
    for split in ("train", "test"):
        annotations = faces(("landmark", split), out_dir / "landmarks")
        write_landmark_list(out_dir / "landmarks" / f"landmarks_{split}.txt", annotations)
        counts[f"landmarks_{split}"] = len(annotations)
    annotations = faces(("identity", "train"), out_dir)
    write_landmark_list(out_dir / IDENTITY_LANDMARKS, annotations)
    counts["train_identities"] = spec.train_identities
    counts["identity_images"] = len(annotations)
    for split in ("val", "test"):
        folder = out_dir / f"lfw_{split}"
        annotations = faces(("lfw", split), folder)
        write_landmark_list(folder / "landmarks.txt", annotations)
        folds = make_pair_folds(spec.seed, split, getattr(spec, f"{split}_identities"),
                                getattr(spec, f"{split}_images_per_identity"), getattr(spec, f"{split}_folds"),
                                getattr(spec, f"{split}_pairs_per_fold"))
        write_pairs(folder / "pairs.txt", folds)
        counts[f"{split}_identities"] = getattr(spec, f"{split}_identities")
        counts[f"{split}_images"] = len(annotations)
        counts[f"{split}_pairs"] = sum(len(fold) for fold in folds)
    return counts

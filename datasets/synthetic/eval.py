"""Checks on a generated synthetic set: the Eigenfaces (pixel-PCA) verification baseline, which shows the
identity task is not trivial, and a contact sheet of scenes, identity photos and landmark crops with
their boxes and landmarks drawn, for people to look at.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from sklearn.decomposition import PCA

from datasets.landmarks import LandmarkAnnotation, landmark_image_path, read_landmark_list
from datasets.lfw import read_pairs
from datasets.wider import wider_split_paths
from utils.errors import DataError
from utils.images import read_image, write_image
from utils.metrics import VerificationResult, pair_scores, verification_metrics

IDENTITY_LANDMARKS = "identity_landmarks.txt"  # boxes and landmarks of the identity photos, beside identities/
SCENE_LANDMARKS = "landmarks.txt"  # in WIDER_<split>/: boxes and landmarks of every scene face


def _crop(image: np.ndarray, box: np.ndarray | None, size: tuple[int, int]) -> np.ndarray:
    """The box region of ``image`` (None: all of it) resized to ``size`` (w, h) as greyscale float32."""
    height, width = image.shape[:2]
    if box is None:
        box = np.array([0, 0, width, height], dtype=np.float64)
    x1, y1 = int(np.clip(np.floor(box[0]), 0, width - 1)), int(np.clip(np.floor(box[1]), 0, height - 1))
    x2, y2 = int(np.clip(np.ceil(box[2]), x1 + 1, width)), int(np.clip(np.ceil(box[3]), y1 + 1, height))
    grey = cv2.cvtColor(np.ascontiguousarray(image[y1:y2, x1:x2]), cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, size, interpolation=cv2.INTER_AREA).astype(np.float32)


def _vectors(paths: list[Path], boxes: list[np.ndarray | None], size: tuple[int, int], normalise: bool) -> np.ndarray:
    """One flattened grey crop per image; ``normalise`` makes each zero-mean, unit-variance."""
    rows = np.stack([_crop(read_image(p), b, size).ravel() for p, b in zip(paths, boxes)])
    if normalise:
        rows = (rows - rows.mean(axis=1, keepdims=True)) / (rows.std(axis=1, keepdims=True) + 1e-6)
    return rows


def eigenfaces_verification(train: Sequence[tuple[Path, np.ndarray | None]],
                            pairs: Sequence[tuple[Path, np.ndarray | None, Path, np.ndarray | None]],
                            same: Sequence[bool] | np.ndarray, folds: int | Sequence[int] | np.ndarray, *,
                            size: tuple[int, int] = (32, 40), components: int = 60, metric: str = "cosine",
                            normalise: bool = True, max_train_images: int = 3000) -> VerificationResult:
    """Pixel PCA (Eigenfaces) verification of any pairs: the LFW protocol on PCA-projected grey crops.

    ``train``: (image, box) of the faces the components are fitted on; ``pairs``: (image a, box a, image b,
    box b); a box of None means the whole image (aligned crops). ``folds``: the fold count or a fold id
    per pair, as :func:`utils.metrics.verification_metrics` takes them.
    """
    if len(train) < 2:
        raise ValueError("Eigenfaces needs at least 2 training faces for PCA")
    if len(train) > max_train_images:
        train = [train[i] for i in np.linspace(0, len(train) - 1, max_train_images).astype(int)]
    features = _vectors([p for p, _ in train], [b for _, b in train], size, normalise)
    pca = PCA(n_components=min(components, len(features) - 1, features.shape[1]), random_state=0).fit(features)
    faces: dict[str, np.ndarray | None] = {}
    for path_a, box_a, path_b, box_b in pairs:
        faces.setdefault(str(path_a), box_a)
        faces.setdefault(str(path_b), box_b)
    needed = sorted(faces)
    embedded = pca.transform(_vectors([Path(p) for p in needed], [faces[p] for p in needed], size, normalise))
    row = {path: i for i, path in enumerate(needed)}
    first = np.array([row[str(p[0])] for p in pairs])
    second = np.array([row[str(p[2])] for p in pairs])
    scores, higher_is_same = pair_scores(embedded[first], embedded[second], metric)
    return verification_metrics(scores, np.asarray(same, dtype=bool), folds, higher_is_same=higher_is_same)


def eigenfaces_baseline(out_dir: str | Path, split: str = "val", *, size: tuple[int, int] = (32, 40),
                        components: int = 60, metric: str = "cosine", normalise: bool = True,
                        max_train_images: int = 3000) -> float:
    """Verification accuracy of pixel PCA (Eigenfaces) on the ``lfw_<split>`` pairs of a synthetic set.

    Faces are cut by their ground-truth boxes, made grey ``size`` crops, projected on the principal
    components of the training identities' crops and compared by ``metric``; the accuracy is the LFW
    protocol's (best threshold on the other folds, folds as in pairs.txt). A synthetic set whose
    identities this separates easily would teach an embedder nothing; the set is built to keep it low.
    """
    out_dir = Path(out_dir)
    train_list = out_dir / IDENTITY_LANDMARKS
    train = read_landmark_list(train_list)
    if len(train) < 2:
        raise DataError(train_list, "needs at least 2 training faces for PCA")
    folder = out_dir / f"lfw_{split}"
    pairs = read_pairs(folder / "pairs.txt")
    faces = {a.image_path: a for a in read_landmark_list(folder / "landmarks.txt")}
    needed = sorted({f"images/{name}/{name}_{index:04d}.jpg" for pair in pairs.pairs
                     for name, index in ((pair.name_a, pair.index_a), (pair.name_b, pair.index_b))})
    missing = [path for path in needed if path not in faces]
    if missing:
        raise DataError(folder / "landmarks.txt", f"no box for {missing[0]} (and {len(missing) - 1} more)")

    def face(name: str, index: int) -> tuple[Path, np.ndarray]:
        key = f"images/{name}/{name}_{index:04d}.jpg"
        return folder / key, faces[key].box

    rows = [(*face(p.name_a, p.index_a), *face(p.name_b, p.index_b)) for p in pairs.pairs]
    same = np.array([p.same for p in pairs.pairs])
    folds = np.repeat(np.arange(pairs.num_folds), 2 * pairs.pairs_per_fold)
    if pairs.num_folds < 2:
        folds = 2  # a one-fold file still gets a held-out threshold: two halves in file order
    return eigenfaces_verification([(landmark_image_path(train_list, a), a.box) for a in train], rows, same, folds,
                                   size=size, components=components, metric=metric, normalise=normalise,
                                   max_train_images=max_train_images).accuracy


# --- contact sheet ------------------------------------------------------------------------------------
def _draw_face(image: np.ndarray, box: np.ndarray, landmarks: np.ndarray, scale: float, offset: tuple[float, float],
               thickness: int = 1) -> None:
    """Box in green, landmarks in red / blue (left eye, right eye) / yellow (nose), drawn in place."""
    ox, oy = offset
    p1 = (int(round(box[0] * scale + ox)), int(round(box[1] * scale + oy)))
    p2 = (int(round(box[2] * scale + ox)), int(round(box[3] * scale + oy)))
    cv2.rectangle(image, p1, p2, (40, 230, 40), thickness, cv2.LINE_AA)
    colours = ((255, 40, 40), (40, 120, 255), (255, 230, 0), (255, 40, 200), (255, 40, 200))
    radius = max(1, int(round(1.5 * thickness)))
    for (x, y), colour in zip(landmarks, colours):
        cv2.circle(image, (int(round(x * scale + ox)), int(round(y * scale + oy))), radius, colour, -1, cv2.LINE_AA)


def _fit(image: np.ndarray, width: int, height: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    """``image`` scaled into a width x height tile (letterboxed grey): tile, scale and offset."""
    scale = min(width / image.shape[1], height / image.shape[0])
    new = cv2.resize(image, (max(1, int(image.shape[1] * scale)), max(1, int(image.shape[0] * scale))),
                     interpolation=cv2.INTER_AREA)
    tile = np.full((height, width, 3), 40, np.uint8)
    ox, oy = (width - new.shape[1]) // 2, (height - new.shape[0]) // 2
    tile[oy:oy + new.shape[0], ox:ox + new.shape[1]] = new
    return tile, scale, (ox, oy)


def _portrait_tile(path: Path, face: LandmarkAnnotation, size: int) -> np.ndarray:
    """A square tile around one face (1.8 box heights wide) with its box and landmarks."""
    image = read_image(path)
    box = face.box
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half = 0.9 * (box[3] - box[1])
    pad = int(np.ceil(half)) + 2
    padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(40, 40, 40))
    x0, y0 = int(round(cx - half)) + pad, int(round(cy - half)) + pad
    side = int(round(2 * half))
    crop = padded[y0:y0 + side, x0:x0 + side]
    scale = size / side
    tile = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    _draw_face(tile, box, face.landmarks, scale, ((pad - x0) * scale, (pad - y0) * scale))
    return tile


def _label(image: np.ndarray, text: str) -> np.ndarray:
    bar = np.full((26, image.shape[1], 3), 20, np.uint8)
    cv2.putText(bar, text, (8, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (235, 235, 235), 1, cv2.LINE_AA)
    return np.vstack([bar, image])


def make_contact_sheet(out_dir: str | Path, png_path: str | Path, *, scenes: int = 6, identities: int = 4,
                       photos: int = 6, crops: int = 10) -> Path:
    """Save a PNG grid of sample scenes, several photos of each of a few identities, and landmark crops,
    with ground-truth boxes and landmarks drawn, so a person can judge the faces and identity keeping."""
    out_dir = Path(out_dir)
    width = 1200
    blocks = []
    images_dir, _ = wider_split_paths(out_dir, "val")
    scene_list = images_dir.parent / SCENE_LANDMARKS
    by_image: dict[str, list[LandmarkAnnotation]] = defaultdict(list)
    for face in read_landmark_list(scene_list):
        by_image[face.image_path].append(face)
    chosen = sorted(by_image, key=lambda name: -len(by_image[name]))[:scenes]
    tiles = []
    for name in sorted(chosen):
        tile, scale, offset = _fit(read_image(images_dir.parent / name), width // 3, width // 4)
        for face in by_image[name]:
            _draw_face(tile, face.box, face.landmarks, scale, offset)
        tiles.append(tile)
    while len(tiles) % 3:
        tiles.append(np.full_like(tiles[0], 40))
    rows = [np.hstack(tiles[i:i + 3]) for i in range(0, len(tiles), 3)]
    blocks.append(_label(np.vstack(rows), "WIDER-style scenes (val): boxes and 5 landmarks"))

    identity_list = out_dir / IDENTITY_LANDMARKS
    per_identity: dict[str, list[LandmarkAnnotation]] = defaultdict(list)
    for face in read_landmark_list(identity_list):
        per_identity[Path(face.image_path).parent.name].append(face)
    tile_size = width // photos
    for name in sorted(per_identity)[:identities]:
        row = [_portrait_tile(landmark_image_path(identity_list, f), f, tile_size) for f in per_identity[name][:photos]]
        row += [np.full((tile_size, tile_size, 3), 40, np.uint8)] * (photos - len(row))
        blocks.append(_label(np.hstack(row), f"identity {name}: one person, pose / light / expression vary"))

    crop_list = out_dir / "landmarks" / "landmarks_train.txt"
    faces = read_landmark_list(crop_list)[:crops]
    crop_size = width // crops
    row = []
    for face in faces:
        image = read_image(landmark_image_path(crop_list, face))
        scale = crop_size / image.shape[1]
        tile = cv2.resize(image, (crop_size, int(image.shape[0] * scale)), interpolation=cv2.INTER_LINEAR)
        _draw_face(tile, face.box, face.landmarks, scale, (0.0, 0.0))
        row.append(tile)
    if row:
        blocks.append(_label(np.hstack(row), "landmark crops (lfw_5590 format)"))
    sheet = np.vstack([np.pad(b, ((0, 0), (0, width - b.shape[1]), (0, 0))) for b in blocks])
    png_path = Path(png_path)
    write_image(png_path, sheet)
    return png_path

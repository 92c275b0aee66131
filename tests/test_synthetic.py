"""The synthetic face set: layout and counts, determinism across worker counts, annotations that parse back
with the real format readers and agree with the pixels, honest attributes, and the Eigenfaces baseline."""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import datasets.synthetic.generator as synthetic
from datasets.identity import IdentityFolder
from datasets.landmarks import landmark_image_path, read_landmark_list
from datasets.lfw import check_pairs_images, read_pairs
from datasets.synthetic import (
    MANIFEST,
    SyntheticSpec,
    eigenfaces_baseline,
    generate_synthetic_set,
    identity_look,
    make_contact_sheet,
)
from datasets.synthetic.eval import eigenfaces_verification
from datasets.synthetic.looks import HAIR_COLOURS, SKIN_TONES, sample_look, sample_variation
from datasets.synthetic.render import FaceModel, composite_face
from datasets.synthetic.scene import SceneSettings, render_scene
from datasets.wider import read_wider_annotations, wider_split_paths
from utils.errors import ConfigError, DataError

TINY = SyntheticSpec(seed=7, train_scenes=10, val_scenes=4, empty_scene_fraction=0.25, scene_identities=20,
                     train_identities=8, images_per_identity=3, val_identities=6, val_images_per_identity=4,
                     val_folds=2, val_pairs_per_fold=10, test_identities=4, test_images_per_identity=3, test_folds=2,
                     test_pairs_per_fold=2, landmark_train=6, landmark_test=3)
MICRO = dataclasses.replace(TINY, train_scenes=2, val_scenes=1, train_identities=2, images_per_identity=2,
                            val_identities=2, val_images_per_identity=2, val_folds=1, val_pairs_per_fold=1,
                            test_identities=2, test_images_per_identity=2, test_folds=1, test_pairs_per_fold=1,
                            landmark_train=1, landmark_test=1)
LISTS = ("WIDER_train/landmarks.txt", "WIDER_val/landmarks.txt", "landmarks/landmarks_train.txt",
         "landmarks/landmarks_test.txt", "identity_landmarks.txt", "lfw_val/landmarks.txt", "lfw_test/landmarks.txt")


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synthetic") / "set"
    return out, generate_synthetic_set(out, TINY, workers=1, progress=False)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_counts_and_manifest(tiny_set):
    out, counts = tiny_set
    assert counts["wider_train_images"] == 10 and counts["wider_val_images"] == 4
    assert counts["identity_images"] == 8 * 3 and counts["val_images"] == 24 and counts["test_images"] == 12
    assert counts["landmarks_train"] == 6 and counts["landmarks_test"] == 3
    assert counts["val_pairs"] == 2 * 2 * 10 and counts["test_pairs"] == 2 * 2 * 2
    assert len(list((out / "WIDER_train/images/0--Synthetic").glob("*.jpg"))) == 10
    assert len(list((out / "landmarks/images").glob("*.jpg"))) == 9
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["seed"] == 7 and manifest["spec"]["train_scenes"] == 10
    assert manifest["counts"] == {k: v for k, v in counts.items() if k != "seconds"}
    assert not (out / synthetic.IN_PROGRESS).exists()
    assert not [p for p in out.rglob("*.tmp")], "temporary files left behind"


def test_same_seed_gives_identical_files_with_any_worker_count(tmp_path):
    generate_synthetic_set(tmp_path / "one", MICRO, workers=1, progress=False)
    generate_synthetic_set(tmp_path / "two", MICRO, workers=2, progress=False)
    generate_synthetic_set(tmp_path / "seed", dataclasses.replace(MICRO, seed=8), workers=1, progress=False)
    first, second, other = (_files(tmp_path / name) for name in ("one", "two", "seed"))
    assert first.keys() == second.keys() == other.keys()
    assert [name for name in first if first[name] != second[name]] == []
    images = [name for name in first if name.endswith(".jpg")]
    assert all(first[name] != other[name] for name in images), "another seed gives other pictures"


def test_wider_files_parse_back_and_boxes_lie_inside_images(tiny_set):
    out, counts = tiny_set
    heights, empty = [], 0
    for split in ("train", "val"):
        images_dir, annotation_file = wider_split_paths(out, split)
        annotations = read_wider_annotations(annotation_file)
        assert len(annotations) == counts[f"wider_{split}_images"]
        assert sum(len(a.boxes) for a in annotations) == counts[f"wider_{split}_faces"]
        faces = read_landmark_list(images_dir.parent / "landmarks.txt")
        assert len(faces) == counts[f"wider_{split}_faces"]
        for annotation in annotations:
            width, height = Image.open(images_dir / annotation.image_path).size
            boxes = annotation.boxes
            assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= width) and np.all(boxes[:, 3] <= height)
            assert np.all(annotation.valid)
            codes = annotation.attributes
            assert np.all((codes >= 0) & (codes <= (2, 1, 1, 0, 2, 1)))
            heights += list(boxes[:, 3] - boxes[:, 1])
            empty += len(boxes) == 0
    assert empty >= 1, "some scenes must have no face"
    assert min(heights) < 30 and max(heights) > 100, "face sizes must span small to large"


@pytest.mark.parametrize("list_name", LISTS)
def test_landmarks_lie_inside_their_boxes_and_boxes_inside_images(tiny_set, list_name):
    out, _ = tiny_set
    faces = read_landmark_list(out / list_name)
    assert faces
    for face in faces:
        width, height = Image.open(landmark_image_path(out / list_name, face)).size
        x1, y1, x2, y2 = face.box
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        lm = face.landmarks
        assert np.all((lm[:, 0] >= x1) & (lm[:, 0] <= x2) & (lm[:, 1] >= y1) & (lm[:, 1] <= y2))
        assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0], "left/right landmarks are in image order"
        eyes, mouth = lm[:2].mean(axis=0), lm[3:].mean(axis=0)
        along = np.dot(lm[2] - eyes, mouth - eyes) / np.dot(mouth - eyes, mouth - eyes)
        assert 0.2 < along < 0.95, "the nose tip lies between the eyes and the mouth"


def test_identity_folders_hold_every_photo_and_their_boxes(tiny_set):
    out, _ = tiny_set
    folder = IdentityFolder(out / "identities", min_images=TINY.images_per_identity)
    assert len(folder.classes) == TINY.train_identities and not folder.dropped
    assert Counter(folder.targets) == {k: TINY.images_per_identity for k in range(TINY.train_identities)}
    listed = {face.image_path for face in read_landmark_list(out / "identity_landmarks.txt")}
    assert listed == {p.relative_to(out).as_posix() for p, _ in folder.samples}


@pytest.mark.parametrize("split", ["val", "test"])
def test_pairs_are_balanced_identity_disjoint_folds_of_existing_images(tiny_set, split):
    out, _ = tiny_set
    pairs = read_pairs(out / f"lfw_{split}" / "pairs.txt")
    assert pairs.num_folds == getattr(TINY, f"{split}_folds")
    assert pairs.pairs_per_fold == getattr(TINY, f"{split}_pairs_per_fold")
    assert len(check_pairs_images(pairs, out / f"lfw_{split}" / "images")) == len(pairs.pairs)
    people = [{name for p in fold for name in (p.name_a, p.name_b)} for fold in pairs.folds]
    assert all(not (a & b) for i, a in enumerate(people) for b in people[i + 1:])
    assert len({(p.name_a, p.index_a, p.name_b, p.index_b) for p in pairs.pairs}) == len(pairs.pairs)
    assert all(p.index_a != p.index_b for p in pairs.pairs if p.same)


def test_eigenfaces_baseline_runs_on_the_tiny_set(tiny_set):
    """Pairs of a photo with itself are told from pairs of two people without error (a wrong pairing, projection
    or fold split is not); the set's real pairs stay far from that, as the set is built to make pixels useless
    (measured 0.50 cosine, 0.575 euclidean)."""
    out, _ = tiny_set
    train_list, faces_list = out / "identity_landmarks.txt", out / "lfw_val" / "landmarks.txt"
    train = [(landmark_image_path(train_list, face), face.box) for face in read_landmark_list(train_list)]
    faces = [(landmark_image_path(faces_list, face), face.box) for face in read_landmark_list(faces_list)]
    people = [path.parent.name for path, _ in faces]
    rows, same = [], []
    for i, (path, box) in enumerate(faces):
        other = next(j for j in range(i + 1, i + len(faces)) if people[j % len(faces)] != people[i]) % len(faces)
        rows += [(path, box, path, box), (path, box, *faces[other])]
        same += [True, False]
    for metric in ("cosine", "euclidean"):
        result = eigenfaces_verification(train, rows, same, 2, metric=metric)
        assert result.auc == 1.0 and result.accuracy >= 0.95, (metric, result.auc, result.accuracy)
        assert eigenfaces_baseline(out, "val", metric=metric) <= 0.75


def test_contact_sheet_is_written(tiny_set, tmp_path):
    out, _ = tiny_set
    png = make_contact_sheet(out, tmp_path / "sheet.png", identities=2, photos=3)
    width, height = Image.open(png).size
    assert width == 1200 and height > 600


def test_complete_set_is_kept_and_interrupted_one_never_looks_complete(tmp_path, monkeypatch):
    spec = MICRO
    out = tmp_path / "set"
    real_render = synthetic.render_item
    calls = []

    def crash_on_fifth(spec_arg, item):
        calls.append(item)
        if len(calls) == 5:
            raise RuntimeError("simulated crash")
        return real_render(spec_arg, item)

    monkeypatch.setattr(synthetic, "render_item", crash_on_fifth)
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate_synthetic_set(out, spec, workers=1, progress=False)
    assert not (out / MANIFEST).exists() and (out / synthetic.IN_PROGRESS).exists()
    monkeypatch.setattr(synthetic, "render_item", real_render)
    counts = generate_synthetic_set(out, spec, workers=1, progress=False)
    assert (out / MANIFEST).exists() and not (out / synthetic.IN_PROGRESS).exists()
    stamp = (out / MANIFEST).stat().st_mtime_ns
    assert generate_synthetic_set(out, spec, workers=1, progress=False).items() <= counts.items()
    assert (out / MANIFEST).stat().st_mtime_ns == stamp, "a complete set with the same spec is not rewritten"


def test_refuses_to_overwrite_foreign_data_and_bad_specs(tmp_path):
    (tmp_path / "WIDER_train").mkdir()
    with pytest.raises(DataError, match="not written by the synthetic generator"):
        generate_synthetic_set(tmp_path, TINY, workers=1, progress=False)
    assert (tmp_path / "WIDER_train").is_dir()
    with pytest.raises(ConfigError, match="identities per fold"):
        dataclasses.replace(TINY, val_identities=3)
    with pytest.raises(ConfigError, match="'synthetic.min_face': must be an integer >= 8, got 4"):
        dataclasses.replace(TINY, min_face=4)


def test_default_spec_is_big_enough_to_train_on():
    spec = SyntheticSpec()
    assert spec.train_identities >= 100 and spec.images_per_identity >= 5
    assert spec.val_folds == 10 and spec.min_face <= 12 and spec.max_face >= 250


def test_eye_landmarks_sit_on_the_drawn_pupils():
    for k in range(8):
        look = sample_look(np.random.default_rng([11, k]))
        variation = dataclasses.replace(sample_variation(np.random.default_rng([12, k])), blink=0.0)
        model = FaceModel(look, variation)
        image = np.full((360, 360, 3), 255.0, np.float32)
        placement = model.place(240.0, (180.0, 170.0))
        composite_face(image, model, placement)
        for x, y in placement.landmarks[:2]:
            around = image[int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2].max(axis=2)
            assert around.min() < 45, f"look {k}: eye landmark ({x:.1f}, {y:.1f}) is not on a pupil"


def test_identity_look_is_fixed_and_pools_are_disjoint():
    assert identity_look(3, "train", 5) == identity_look(3, "train", 5)
    assert identity_look(3, "train", 5) != identity_look(3, "val", 5)
    looks = [sample_look(np.random.default_rng([5, k])) for k in range(300)]
    # identity is a combination: every palette entry is shared by many identities
    assert min(Counter(look.hair_style for look in looks).values()) >= 10

    def nearest(colour, palette):
        return int(np.argmin([np.abs(np.subtract(colour, entry)).sum() for entry in palette]))

    skin = Counter(nearest(look.skin, SKIN_TONES) for look in looks)
    hair = Counter(nearest(look.hair, HAIR_COLOURS) for look in looks)
    assert len(skin) == len(SKIN_TONES) and min(skin.values()) >= 10
    assert len(hair) == len(HAIR_COLOURS) and min(hair.values()) >= 10


def test_attributes_follow_the_blur_actually_applied():
    settings = SceneSettings(face_blur_chance=1.0, empty_fraction=0.0, max_faces=6)
    checked = 0
    for k in range(4):
        _, faces, _ = render_scene(np.random.default_rng([21, k]), 480, 360, settings,
                                   lambda i: identity_look(0, "scene", i), 10)
        for face in faces:
            if face.height >= 40:
                assert face.attributes[0] >= 1, "a face blurred by >= 2% of its height is marked blurred"
                checked += 1
    assert checked >= 3

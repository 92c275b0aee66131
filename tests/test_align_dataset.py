"""Alignment of identity datasets: face choice, framing, held-out pairs, and the real detector on real photos
through ``prepare_training_data.py --align`` (no face / several faces / unreadable, resume, .rec source)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from config import load_config
from datasets.align_dataset import (
    PROGRESS_FILE,
    REPORT_FILE,
    CropTarget,
    align_jobs,
    framing_margins,
    list_photos,
    main_face_crops,
    split_identities,
)
from datasets.lfw import read_pairs, write_pairs
from datasets.pairs_builder import make_pairs
from datasets.recordio import RecordHeader, pack_record, write_recordio
from models.alignment import align_faces
from models.detector import Detections
from models.face_preprocess import main_face_order
from tests.conftest import run_script
from utils.errors import ConfigError, DataError
from utils.images import IMAGE_EXTENSIONS, read_image, write_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _detections(boxes: list[list[float]]) -> Detections:
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return Detections(b, torch.ones(len(b)), torch.zeros(len(b), 5, 2))


def test_face_choice_rules() -> None:
    faces = _detections([[0, 0, 60, 60], [45, 45, 75, 75], [80, 0, 100, 30]])  # big corner face, small central one
    assert main_face_order(faces.boxes, 120, 120, "largest")[0] == 0
    assert main_face_order(faces.boxes, 120, 120, "central")[0] == 1
    assert main_face_order(_detections([]).boxes, 120, 120, "largest") == []
    with pytest.raises(ValueError, match="face selection"):
        main_face_order(faces.boxes, 120, 120, "first")


def test_a_main_face_that_cannot_be_aligned_gives_no_crop(tmp_path: Path) -> None:
    image = np.zeros((120, 120, 3), np.uint8)
    faces = _detections([[10, 10, 70, 70]])  # its five landmarks coincide
    target = CropTarget(tmp_path, 32, 0.0)
    assert main_face_crops(image, faces, [target], "similarity", "largest") == [], "counted as no face, no traceback"
    (crop,) = main_face_crops(image, faces, [target], "box", "largest")
    assert crop.shape == (3, 32, 32)


def test_training_crop_centre_is_the_evaluation_crop() -> None:
    rng = np.random.default_rng(0)
    image = (rng.random((200, 200, 3)) * 255).astype(np.uint8)
    image = np.asarray(torch.nn.functional.avg_pool2d(torch.from_numpy(image).permute(2, 0, 1).float()[None],
                                                      5, 1, 2)[0]
                       .permute(1, 2, 0)).astype(np.uint8)  # smooth, so resampling differences stay small
    points = torch.tensor([[[80.0, 90.0], [120.0, 88.0], [100.0, 110.0], [84.0, 130.0], [118.0, 129.0]]])
    train_margin, eval_margin = framing_margins(91, 80, 6.0)
    big = align_faces(image, points, size=91, margin=train_margin).float()
    small = align_faces(image, points, size=80, margin=eval_margin).float()
    centre = big[..., 5:85, 5:85]  # (91 - 80) / 2 = 5.5: within half a pixel
    assert (centre - small).abs().mean() < 6.0, "the training crop's centre shows the evaluation framing"


def test_held_out_identities_and_their_pairs_file(tmp_path: Path) -> None:
    names = [f"id{i}" for i in range(12)]
    train, held, val = split_identities(names * 2, 5, seed=3)
    assert len(held) == 5 and len(train) == 7 and not set(train) & set(held) and val == []
    assert split_identities(names, 5, seed=3) == (train, held, [])
    train_v, held_v, val_v = split_identities(names, 5, 3, seed=3)
    assert held_v == held, "a validation split leaves the held-out people as they were"
    assert len(val_v) == 3 and set(val_v) <= set(train) and sorted(train_v + val_v) == train
    with pytest.raises(ConfigError):
        split_identities(["a", "b"], 2, seed=0)
    with pytest.raises(ConfigError, match="1 \\+ 1 of 2"):
        split_identities(["a", "b"], 1, 1, seed=0)
    for number, name in enumerate(held):
        (tmp_path / name).mkdir()
        for index in range(1, 3 + number % 2 + 1):
            (tmp_path / name / f"{name}_{index:04d}.jpg").touch()
    (tmp_path / held[0] / "notes.txt").touch()
    folds = make_pairs(tmp_path, folds=2, pairs_per_fold=4, seed=1)
    assert folds == make_pairs(tmp_path, folds=2, pairs_per_fold=4, seed=1)
    people = [{p.name_a for p in fold} | {p.name_b for p in fold} for fold in folds]
    assert not people[0] & people[1], "folds are identity-disjoint"
    for fold in folds:
        assert [p.same for p in fold] == [True] * 4 + [False] * 4
        assert len(set(fold)) == 8
        for pair in fold:
            assert (tmp_path / pair.name_a / f"{pair.name_a}_{pair.index_a:04d}.jpg").is_file()
            assert (tmp_path / pair.name_b / f"{pair.name_b}_{pair.index_b:04d}.jpg").is_file()
    write_pairs(tmp_path / "pairs.txt", folds)
    assert read_pairs(tmp_path / "pairs.txt").pairs == [p for fold in folds for p in fold]


def test_dataset_names_map_to_config_paths(tmp_path: Path) -> None:
    config = load_config(None, [f"paths.data_root={tmp_path}", "align.holdout_identities=3"])
    jobs = align_jobs("synthetic", config)
    assert [j.name for j in jobs] == ["train", "lfw_val", "lfw_test"]
    assert jobs[0].source == config.path("identities") and jobs[0].out == config.path("aligned") / "train"
    assert jobs[0].holdout == 3 and jobs[0].validation == 0
    assert jobs[1].kind == "eval" and jobs[1].pairs == config.path("val_pairs")
    assert jobs[1].out == config.path("aligned") / "lfw_val" / "images"
    assert align_jobs("celeba", config, dst=tmp_path / "x")[0].out == tmp_path / "x" / "train"
    with pytest.raises(ConfigError, match="--align-src"):
        align_jobs("folder", config)


def _align(tmp_path: Path, weights: Path, *extra: str) -> int:
    argv = ["--set", f"paths.data_root={tmp_path / 'data'}", "--set", "runtime.workers=0",
            "--set", "align.train_size=56", "--set", "align.eval_size=48", "--set", "align.batch_images=4",
            *[item for net in ("pnet", "rnet", "onet") for item in ("--set", f"paths.{net}={weights}")], *extra]
    return run_script("prepare_training_data.py", argv)


def test_align_real_photos_reports_and_resumes(tmp_path: Path, shared_data: Path, pretrained_mtcnn: Path) -> None:
    celeba = shared_data / "celeba_identities_subset"
    people = sorted(p for p in celeba.iterdir() if p.is_dir())[:2]
    src = tmp_path / "src"
    for name, person in zip(("alice", "bob"), people):
        (src / name).mkdir(parents=True)
        for photo in sorted(person.glob("*.jpg"))[:2]:
            shutil.copy(photo, src / name / photo.name)
    (src / "carol").mkdir()
    shutil.copy(shared_data / "photos" / "multiface.jpg", src / "carol" / "group.jpg")
    write_image(src / "carol" / "blank.png", np.full((120, 120, 3), 128, np.uint8))
    (src / "carol" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    dst = tmp_path / "aligned"

    with pytest.warns(UserWarning, match="broken.jpg"):
        code = _align(tmp_path, pretrained_mtcnn, "--align", "folder", "--align-src", str(src), "--align-dst", str(dst))
    assert code == 0
    report = json.loads((dst / "train" / REPORT_FILE).read_text())
    assert report["photos"] == 7
    assert [Path(p).name for p in report["no_face"]] == ["blank.png"]
    assert [Path(p).name for p in report["unreadable"]] == ["broken.jpg"]
    assert [(Path(p).name, n >= 2) for p, n in report["several_faces"]] == [("group.jpg", True)]
    assert report["aligned"] == 5
    crops = sorted(p.relative_to(dst / "train").as_posix() for p in (dst / "train").rglob("*.jpg"))
    assert crops == sorted([f"alice/{p.name}" for p in (src / "alice").iterdir()]
                           + [f"bob/{p.name}" for p in (src / "bob").iterdir()] + ["carol/group.jpg"])
    assert read_image(dst / "train" / crops[0]).shape == (56, 56, 3)
    assert not list(dst.rglob("*.tmp")), "no half-written files"

    first = {p: p.stat().st_mtime_ns for p in (dst / "train").rglob("*.jpg")}
    (dst / "train" / crops[0]).unlink()
    assert _align(tmp_path, pretrained_mtcnn, "--align", "folder", "--align-src", str(src),
                  "--align-dst", str(dst)) == 0
    again = json.loads((dst / "train" / REPORT_FILE).read_text())
    assert again["resumed"] == 6 and again["aligned"] == 5 and len(again["no_face"]) == 1
    assert (dst / "train" / crops[0]).is_file(), "the missing crop was made again"
    assert all(p.stat().st_mtime_ns == t for p, t in first.items() if p.name != Path(crops[0]).name)
    assert len((dst / "train" / PROGRESS_FILE).read_text().splitlines()) == 8

    strict_dst = tmp_path / "strict"
    assert _align(tmp_path, pretrained_mtcnn, "--align", "folder", "--align-src", str(src), "--align-dst",
                  str(strict_dst), "--strict") == 2


def test_reliability_align_names_photos_without_a_face_and_empty_folders(
        tmp_path: Path, shared_data: Path, pretrained_mtcnn: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    (src / "alice").mkdir(parents=True)
    for photo in sorted((shared_data / "celeba_identities_subset").rglob("*.jpg"))[:2]:
        shutil.copy(photo, src / "alice" / photo.name)
    for name in ("blank.png", "grey.png"):
        write_image(src / "carol" / name, np.full((120, 120, 3), 128, np.uint8))
    (src / "dave").mkdir()  # an empty identity folder
    (src / "dave" / "notes.txt").write_text("photos to come")
    dst = tmp_path / "aligned"
    code = _align(tmp_path, pretrained_mtcnn, "--align", "folder", "--align-src", str(src), "--align-dst", str(dst))
    assert code == 0
    out = capsys.readouterr().out
    report = json.loads((dst / "train" / REPORT_FILE).read_text())
    assert sorted(Path(p).name for p in report["no_face"]) == ["blank.png", "grey.png"]
    assert f"  without a face: {src / 'carol' / 'blank.png'}, {src / 'carol' / 'grey.png'}" in out
    assert report["left_out"] == {str(src / "dave"): f"no images ({', '.join(IMAGE_EXTENSIONS)})"}
    assert f"  left out: {src / 'dave'} (no images (" in out and "1 left out" in out


def test_rec_source_with_held_out_and_validation_identities(tmp_path: Path, shared_data: Path,
                                                            pretrained_mtcnn: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    celeba = shared_data / "celeba_identities_subset"
    records = []
    for label, person in enumerate(sorted(p for p in celeba.iterdir() if p.is_dir())[:10]):
        for photo in sorted(person.glob("*.jpg"))[:3]:
            header = RecordHeader(0, (float(label),), len(records) + 1, 0)
            records.append((len(records) + 1, pack_record(header, photo.read_bytes())))
    first = RecordHeader(2, (float(len(records) + 1), float(len(records) + 1)), 0, 0)
    write_recordio(tmp_path / "faces" / "train.rec", [(0, pack_record(first, b"")), *records])
    photos, _, left_out = list_photos(tmp_path / "faces" / "train.rec")
    assert len(photos) == 30 and sorted({p.identity for p in photos}) == sorted(str(i) for i in range(10))
    assert left_out == {}
    assert [p.number for p in photos[:4]] == [1, 2, 3, 1]

    dst = tmp_path / "aligned"
    splits = ["--set", "align.holdout_identities=4", "--set", "align.holdout_folds=2",
              "--set", "align.holdout_pairs_per_fold=2", "--set", "align.validation_identities=4"]
    align = ["--align", "ms_celeb_1m", "--align-src", str(tmp_path / "faces"), "--align-dst", str(dst), *splits]
    assert _align(tmp_path, pretrained_mtcnn, *align) == 0
    report = json.loads((dst / "train" / REPORT_FILE).read_text())
    held, val = report["held_out_identities"], report["val_identities"]
    assert len(held) == 4 and len(val) == 4 and not set(held) & set(val) and report["photos"] == 30
    train_ids = {p.name for p in (dst / "train").iterdir() if p.is_dir()}
    assert train_ids and not train_ids & set(held + val) and train_ids <= {str(i) for i in range(10)}
    assert {p.name for p in (dst / "val" / "images").iterdir()} == set(val)
    val_pairs = read_pairs(dst / "val" / "pairs.txt")
    assert val_pairs.num_folds == 2 and {p.name_a for p in val_pairs.pairs} <= set(val)
    test_images = dst / "test" / "images"
    for crop in test_images.rglob("*.jpg"):
        assert crop.parent.name in held and crop.stem.startswith(f"{crop.parent.name}_")
        assert read_image(crop).shape == (48, 48, 3)
    pairs = read_pairs(dst / "test" / "pairs.txt")
    assert pairs.num_folds == 2 and pairs.pairs_per_fold == report["pairs_per_fold"] >= 1
    for pair in pairs.pairs:
        assert (test_images / pair.name_a / f"{pair.name_a}_{pair.index_a:04d}.jpg").is_file()

    capsys.readouterr()  # another draw would put people the first run trained on into test/ or val/: refused
    assert _align(tmp_path, pretrained_mtcnn, *align, "--set", "runtime.seed=5") == 2
    assert "held-out or validation identities" in capsys.readouterr().err
    assert read_pairs(dst / "val" / "pairs.txt").pairs == val_pairs.pairs, "nothing written is touched"


def test_image_disjoint_pairs_serve_sets_of_few_people(tmp_path: Path) -> None:
    for name, count in (("Ann", 9), ("Bob", 7), ("Cid", 4)):
        (tmp_path / name).mkdir()
        for index in range(1, count + 1):
            (tmp_path / name / f"{name}_{index:04d}.jpg").touch()
    with pytest.raises(DataError, match="identity-disjoint"):
        make_pairs(tmp_path, folds=3, pairs_per_fold=2, seed=0)
    folds = make_pairs(tmp_path, folds=3, pairs_per_fold=2, seed=0, split="image")
    assert folds == make_pairs(tmp_path, folds=3, pairs_per_fold=2, seed=0, split="image")
    photos = [{(p.name_a, p.index_a) for p in fold} | {(p.name_b, p.index_b) for p in fold} for fold in folds]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not photos[a] & photos[b], "no photo is in two folds"
    for fold in folds:
        assert [p.same for p in fold] == [True] * 2 + [False] * 2 and len(set(fold)) == 4
    assert {p.name_a for fold in folds for p in fold} == {"Ann", "Bob", "Cid"}


def test_make_pairs_command_writes_a_new_file_and_never_overwrites(tmp_path: Path, capsys) -> None:
    images = tmp_path / "images"
    for name in ("Ann", "Bob", "Cid", "Dee"):
        (images / name).mkdir(parents=True)
        for index in range(1, 4):
            (images / name / f"{name}_{index:04d}.jpg").touch()
    argv = ["--make-pairs", str(images), "--folds", "2", "--pairs-per-fold", "2"]
    assert run_script("prepare_training_data.py", argv) == 0
    written = read_pairs(tmp_path / "pairs_2folds.txt")
    assert written.num_folds == 2 and written.pairs_per_fold == 2
    assert run_script("prepare_training_data.py", argv) == 2
    assert "exists already" in capsys.readouterr().err
    assert read_pairs(tmp_path / "pairs_2folds.txt").pairs == written.pairs

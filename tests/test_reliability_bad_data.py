"""Reliability against bad data: one data root mixes a valid (synthetic) set with every kind of bad input - a
truncated JPEG, an empty file, a text file named .jpg, an image whose header claims more pixels than the limit,
annotation lines with too few fields, boxes at negative coordinates or outside their image, pairs naming missing
images - and with awkward but valid files (grey and 16-bit PNG, CMYK JPEG), under a root whose path has spaces
and non-ASCII letters. Every script that reads data runs over it: each finishes, names every file it skipped,
processes every valid one, and with --strict stops at the first bad one with a one-line error and exit code 2."""
from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from config import load_config
from datasets.lfw import Pair, write_pairs
from datasets.synthetic import generate_synthetic_set
from tests.conftest import run_script
from tests.test_reliability_resume import MTCNN_SPEC, write_identity_crops
from training.facenet.crops import load_training_crops
from utils.errors import BadInputLog
from utils.images import read_image

BAD_IMAGES = ("truncated.jpg", "empty.jpg", "text.jpg", "huge.png")  # each must be reported by name
ODD_VALID = ("grey.png", "grey16.png", "cmyk.jpg")  # each must be read and used
EVENT = "1--Ünïcode"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- building the data root -------------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_huge_png(path: Path, side: int = 12_000) -> None:
    """A small file whose PNG header claims side x side pixels (a decompression bomb): refused before decoding."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit grey
    rows = zlib.compress(b"\0" * (side + 1) * 8)  # the first rows only: the header is what must be refused
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", rows)
                     + _png_chunk(b"IEND", b""))


def write_bad_images(folder: Path, valid_jpeg: Path, names: tuple[str, ...] = BAD_IMAGES) -> list[Path]:
    """The bad image files (a valid JPEG cut in half, an empty file, text, a header claiming too many pixels)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = valid_jpeg.read_bytes()
    contents = {"truncated": data[:len(data) // 2], "empty": b"", "text": b"name,age\nnot an image\n"}
    written = []
    for name in names:
        kind = name.split("_")[0].split(".")[0]
        path = folder / name
        if kind == "huge":
            write_huge_png(path)
        else:
            path.write_bytes(contents[kind])
        written.append(path)
    return written


def write_odd_valid(folder: Path, rgb: np.ndarray, names: tuple[str, ...] = ODD_VALID) -> list[Path]:
    """Valid images in awkward forms: 8-bit grey PNG, 16-bit grey PNG, CMYK JPEG (file names pick the form)."""
    folder.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(rgb)
    written = []
    for name in names:
        path = folder / name
        if "grey16" in name:
            grey = np.asarray(image.convert("L"), dtype=np.uint16) * 257
            Image.fromarray(grey).save(path, format="PNG")
            assert Image.open(path).mode.startswith("I;16"), "a 16-bit PNG"
        elif "grey" in name:
            image.convert("L").save(path, format="PNG" if name.endswith(".png") else "JPEG")
        else:
            image.convert("CMYK").save(path, format="JPEG")
        written.append(path)
    return written


def _wider_record(name: str, boxes: list[tuple[float, float, float, float]]) -> str:
    return f"{name}\n{len(boxes)}\n" + "".join(f"{x} {y} {w} {h} 0 0 0 0 0 0\n" for x, y, w, h in boxes)


def add_wider_faults(faces: Path) -> dict[str, list[str]]:
    """Scenes in a new event folder: a valid copy, its grey/16-bit/CMYK forms, bad files (all annotated), a box at
    negative coordinates, one past the image's edge, and a record whose face line has too few fields."""
    images = faces / "WIDER_train" / "images"
    annotation_file = faces / "wider_face_split" / "wider_face_train_bbx_gt.txt"
    first = annotation_file.read_text(encoding="utf-8").splitlines()
    source = images / first[0]
    boxes = [tuple(float(v) for v in line.split()[:4]) for line in first[2:2 + int(first[1])]]
    folder = images / EVENT
    folder.mkdir()
    rgb = read_image(source)
    height, width = rgb.shape[:2]
    shutil.copy(source, folder / "scène_1.jpg")
    shutil.copy(source, folder / "negative_box.jpg")
    shutil.copy(source, folder / "outside_box.jpg")
    write_odd_valid(folder, rgb)
    bad = write_bad_images(folder, source)
    records = [_wider_record(f"{EVENT}/{name}", boxes) for name in ("scène_1.jpg", *ODD_VALID)]
    records += [_wider_record(f"{EVENT}/{path.name}", boxes) for path in bad]
    records.append(_wider_record(f"{EVENT}/negative_box.jpg", [(-60.0, -50.0, 40.0, 40.0)]))
    records.append(_wider_record(f"{EVENT}/outside_box.jpg", [(width - 10.0, 5.0, 60.0, 60.0)]))
    records.append(f"{EVENT}/few_fields.jpg\n1\n10 10 20\n")
    with annotation_file.open("a", encoding="utf-8") as handle:
        handle.write("".join(records))
    return {"bad_files": [f"{EVENT}/{path.name}" for path in bad],
            "bad_boxes": [f"{EVENT}/negative_box.jpg", f"{EVENT}/outside_box.jpg"],
            "valid": [f"{EVENT}/{name}" for name in ("scène_1.jpg", *ODD_VALID, "negative_box.jpg", "outside_box.jpg")]}


def add_landmark_faults(faces: Path) -> int:
    """Landmark-list lines: too few fields, a bad image, a box outside its image; plus a valid CMYK copy.
    Returns the line number of the short line."""
    list_file = faces / "landmarks" / "landmarks_train.txt"
    lines = list_file.read_text(encoding="utf-8").splitlines()
    name, *numbers = lines[0].split()
    folder = list_file.parent / "images"
    write_bad_images(folder, folder / Path(name).name, ("text.jpg",))
    write_odd_valid(folder, read_image(folder / Path(name).name), ("cmyk_zoë.jpg",))
    outside = [str(float(v) + 500.0) for v in numbers]
    lines += [" ".join(["images/cmyk_zoë.jpg", *numbers]), " ".join(["images/text.jpg", *numbers]),
              " ".join([name, *outside]), "images/short.jpg 1 2 3"]
    list_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)


def add_identity_faults(identities: Path) -> list[Path]:
    """An identity folder named with a space and accents holding valid odd forms and bad files."""
    source = sorted(identities.rglob("*.jpg"))[0]
    folder = identities / "José María"
    folder.mkdir()
    shutil.copy(source, folder / "0001.jpg")
    write_odd_valid(folder, read_image(source))
    return write_bad_images(folder, source)


def missing_pair_in(pairs_file: Path) -> str:
    """Rewrite the first same-person pair of a pairs file to name an image that does not exist; return that name."""
    text = pairs_file.read_text(encoding="utf-8").splitlines()
    name, first, _ = text[1].split()
    text[1] = f"{name}\t{first}\t99"
    pairs_file.write_text("\n".join(text) + "\n", encoding="utf-8")
    return f"{name}_0099.jpg"


def write_aligned_pairs_set(folder: Path, seed: int) -> dict[str, str]:
    """An aligned LFW-layout pairs set (32 px crops) with 2 folds of 4 same + 4 different pairs, two of which name a
    missing image and two a bad file; one pair image is a grey JPEG and one a CMYK JPEG (valid)."""
    images = folder / "images"
    names = write_identity_crops(images, identities=8, images=3, side=32, seed=seed, lfw_names=True, prefix="Zoë_")
    source = images / names[0] / f"{names[0]}_0001.jpg"
    write_bad_images(images / names[1], source, ("truncated.jpg",))
    (images / names[1] / "truncated.jpg").rename(images / names[1] / f"{names[1]}_0004.jpg")
    write_bad_images(images / names[5], source, ("text.jpg",))
    (images / names[5] / "text.jpg").rename(images / names[5] / f"{names[5]}_0004.jpg")
    grey = images / names[2] / f"{names[2]}_0003.jpg"
    write_odd_valid(images / names[2], read_image(grey), ("grey.jpg",))
    (images / names[2] / "grey.jpg").replace(grey)
    cmyk = images / names[3] / f"{names[3]}_0003.jpg"
    write_odd_valid(images / names[3], read_image(cmyk), ("cmyk.jpg",))
    (images / names[3] / "cmyk.jpg").replace(cmyk)
    folds = []
    for fold in range(2):
        members = names[fold * 4:(fold + 1) * 4]
        same = [Pair(n, 1, n, 2) for n in members]
        different = [Pair(members[i], 3, members[(i + 1) % 4], 1) for i in range(4)]
        folds.append(same + different)
    folds[0][0] = Pair(names[0], 1, names[0], 7)  # missing image
    folds[1][4] = Pair(names[4], 9, names[5], 1)  # missing image
    folds[0][1] = Pair(names[1], 1, names[1], 4)  # truncated JPEG
    folds[1][1] = Pair(names[5], 4, names[5], 2)  # text file named .jpg
    write_pairs(folder / "pairs.txt", folds)
    return {"missing": [f"{names[0]}_0007.jpg", f"{names[4]}_0009.jpg"],
            "bad": [f"{names[1]}_0004.jpg", f"{names[5]}_0004.jpg"]}


def add_training_crop_faults(train: Path) -> list[Path]:
    """Aligned training crops: an identity folder with a space and accents, odd valid forms, bad files."""
    write_identity_crops(train, identities=1, images=5, side=36, seed=11, prefix="José María ")
    folder = train / "José María 000"
    odd = write_odd_valid(folder, read_image(folder / "1.jpg"))
    assert len(odd) == 3
    return write_bad_images(train / "id003", train / "id003" / "1.jpg")


@pytest.fixture(scope="module")
def mixed_root(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The data root, and what was planted where."""
    root = tmp_path_factory.mktemp("bad_data") / "data root ü"
    faces = root / "synthetic_faces"
    generate_synthetic_set(faces, MTCNN_SPEC, workers=1, progress=False)
    planted: dict = {"root": root}
    planted["wider"] = add_wider_faults(faces)
    planted["landmark_short_line"] = add_landmark_faults(faces)
    planted["identities"] = add_identity_faults(faces / "identities")
    planted["missing_val_pair"] = missing_pair_in(faces / "lfw_val" / "pairs.txt")
    aligned = root / "aligned" / "synthetic"
    write_identity_crops(aligned / "train", identities=12, images=5, side=36, seed=3)
    planted["train_crops"] = add_training_crop_faults(aligned / "train")
    planted["val"] = write_aligned_pairs_set(aligned / "lfw_val", seed=4)
    planted["test"] = write_aligned_pairs_set(aligned / "lfw_test", seed=5)
    return planted


# --- running the scripts --------------------------------------------------------------------------------------


def _run(script: str, argv: list[str], capsys: pytest.CaptureFixture, warns: bool = True) -> tuple[int, str, str]:
    """Run a script's command line in this process; (exit code, stdout, stderr). Skipped inputs warn by name."""
    capsys.readouterr()
    if warns:
        with pytest.warns(UserWarning, match="skipped"):
            code = run_script(script, argv)
    else:
        code = run_script(script, argv)
    out, err = capsys.readouterr()
    return code, out, err


def _strict_error(script: str, argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """Run with --strict: exit code 2 and one error line (progress bars aside) naming the first bad input."""
    code, _, err = _run(script, ["--strict", *argv], capsys, warns=False)
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == lines[-1], lines[-5:]
    return errors[0]


def _names(text: str, paths: list) -> list[str]:
    """The planted paths (or names) that ``text`` does not mention."""
    return [str(p) for p in paths if str(p) not in text]


FACENET = ["facenet.input_size=32", "facenet.width=0.25", "facenet.embedding_size=16", "facenet.identities_per_batch=4",
           "facenet.images_per_identity=4", "facenet.epochs=1", "facenet.batches_per_epoch=2",
           "facenet.val_loss_batches=1", "align.train_size=36", "align.eval_size=32", "runtime.workers=0",
           "runtime.device=cpu"]
FLOORS_OFF = ["system.min_detection_recall=0", "system.min_verification_accuracy=0",
              "system.min_identification_top1=0", "system.max_impostor_accept_rate=1", "matching.open_set_rounds=2"]


def _sets(root: Path, items: list[str]) -> list[str]:
    argv = ["--set", f"paths.data_root={root}"]
    for item in items:
        argv += ["--set", item]
    return argv


def test_verify_reports_every_bad_input_by_file(mixed_root: dict, capsys: pytest.CaptureFixture) -> None:
    root = mixed_root["root"]
    argv = ["--verify", "--deep", "--only", "synthetic", *_sets(root, [])]
    code, out, _ = _run("prepare_training_data.py", argv, capsys)
    assert code == 1, "problems found: exit code 1, after checking everything"
    problems = {entry["name"]: "\n".join(entry["problems"])
                for entry in json.loads((root / "verify_report.json").read_text(encoding="utf-8"))}
    scenes = problems["synthetic: scenes (WIDER layout)"]
    assert not _names(scenes, mixed_root["wider"]["bad_files"] + mixed_root["wider"]["bad_boxes"] + ["few_fields.jpg"])
    assert "outside the" in scenes and "found 3 fields" in scenes
    assert "huge.png: image is 12000x12000, over the" in scenes
    assert all(name not in scenes for name in ("scène_1.jpg", *ODD_VALID)), "grey, 16-bit and CMYK files are valid"
    marks = problems["synthetic: landmarks train"]
    assert f"landmarks_train.txt:{mixed_root['landmark_short_line']}:" in marks and "text.jpg" in marks
    assert "outside the 80x80 image" in marks and "cmyk_zoë.jpg" not in marks
    assert not _names(problems["synthetic: identities"], mixed_root["identities"])
    assert mixed_root["missing_val_pair"] in problems["synthetic: val pairs"]
    wider_row = next(line for line in out.splitlines() if line.startswith("synthetic: scenes"))
    valid_records = MTCNN_SPEC.train_scenes + len(mixed_root["wider"]["valid"]) + len(BAD_IMAGES)
    assert f"train images={valid_records}" in wider_row and f"train unreadable={len(BAD_IMAGES)}" in wider_row

    error = _strict_error("prepare_training_data.py", argv, capsys)
    assert "wider_face_train_bbx_gt.txt:" in error and "few_fields.jpg" in error


def test_mtcnn_sample_generation_skips_bad_inputs_and_uses_every_valid_one(mixed_root: dict, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    root = mixed_root["root"]
    items = ["runtime.workers=0", "mtcnn.pnet.epochs=1", "mtcnn.pnet.steps_per_epoch=2", "mtcnn.pnet.batch_size=32"]
    argv = ["--stage", "pnet", "--no-eval", "--output-dir", str(tmp_path / "run"), *_sets(root, items)]
    code, out, _ = _run("train_mtcnn.py", argv, capsys)
    assert code == 0
    used = MTCNN_SPEC.train_scenes + len(mixed_root["wider"]["valid"])
    assert f"images: {used} used, {len(BAD_IMAGES)} skipped" in out, "grey, 16-bit, CMYK and unicode-named scenes used"
    assert "2 outside their image" in out
    assert f"landmark faces: {MTCNN_SPEC.landmark_train + 1} used, 2 skipped" in out
    summary = out[out.index("bad input(s) skipped:"):]
    assert not _names(summary, mixed_root["wider"]["bad_files"] + mixed_root["wider"]["bad_boxes"])
    assert "few_fields.jpg" in summary and "landmarks/images/text.jpg" in summary
    assert f"landmarks_train.txt:{mixed_root['landmark_short_line']}" in summary
    assert json.loads((tmp_path / "run" / "report.json").read_text())["bad_inputs"] == 10

    error = _strict_error("train_mtcnn.py", ["--stage", "pnet", "--no-eval", "--output-dir", str(tmp_path / "strict"),
                                        *_sets(root, items)], capsys)
    assert "few_fields.jpg" in error


@pytest.fixture(scope="module")
def embedder_run(mixed_root: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train_facenet.py over the mixed aligned crops and validation pairs; its run folder."""
    out = tmp_path_factory.mktemp("facenet_bad") / "run"
    argv = ["--output-dir", str(out), *_sets(mixed_root["root"], FACENET)]
    with pytest.warns(UserWarning, match="skipped"):
        assert run_script("train_facenet.py", argv) == 0
    return out


def _pair_images(mixed_root: dict, split: str, kind: str) -> list[str]:
    images = mixed_root["root"] / "aligned" / "synthetic" / f"lfw_{split}" / "images"
    return [str(images / name.rsplit("_", 1)[0] / name) for name in mixed_root[split][kind]]


def test_facenet_skips_bad_crops_and_pairs_with_missing_images(mixed_root: dict, embedder_run: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    report = json.loads((embedder_run / "report.json").read_text(encoding="utf-8"))
    expected = list(map(str, mixed_root["train_crops"])) + _pair_images(mixed_root, "val", "bad")
    assert sorted(report["bad_input_files"]) == sorted(expected)
    assert sorted(report["validation_images_missing"]) == sorted(_pair_images(mixed_root, "val", "missing"))
    assert report["validation_pairs_left_out"] == 4 and report["epochs"] == 1
    assert report["best_validation"]["num_pairs"] == 12, "every pair with two readable images is used"

    config = load_config(None, [f"paths.data_root={mixed_root['root']}", *FACENET])
    log = BadInputLog()
    with pytest.warns(UserWarning, match="skipped"):
        crops, classes = load_training_crops(config, config.train_roots(), 0, log, False)
    assert len(crops) == 12 * 5 + 5 + len(ODD_VALID), "every valid crop is read, grey, 16-bit and CMYK ones too"
    assert "José María 000" in classes

    argv = ["--output-dir", str(tmp_path / "strict"), *_sets(mixed_root["root"], FACENET)]
    error = _strict_error("train_facenet.py", argv, capsys)
    assert any(str(p) in error for p in mixed_root["train_crops"]), error


def _matching_argv(mixed_root: dict, embedder_run: Path, output: Path) -> list[str]:
    aligned = mixed_root["root"] / "aligned" / "synthetic"
    return ["--aligned-input", "--method", "threshold", "--embedder", str(embedder_run / "best.pt"),
            "--pairs", str(aligned / "lfw_val" / "pairs.txt"), "--output", str(output),
            *_sets(mixed_root["root"], ["runtime.device=cpu", *FLOORS_OFF])]


@pytest.fixture(scope="module")
def matcher_file(mixed_root: dict, embedder_run: Path) -> Path:
    """train_matching.py (aligned input) over the validation pairs with missing and bad images: the system's matcher."""
    output = embedder_run / "matcher.json"
    with pytest.warns(UserWarning, match="skipped"):
        assert run_script("train_matching.py", _matching_argv(mixed_root, embedder_run, output)) == 0
    return output


def test_matching_skips_missing_and_bad_pair_images(mixed_root: dict, embedder_run: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    code, out, _ = _run("train_matching.py", _matching_argv(mixed_root, embedder_run, tmp_path / "matcher.json"),
                        capsys)
    assert code == 0 and (tmp_path / "matcher.json").is_file()
    report = json.loads((tmp_path / "matching" / "report.json").read_text(encoding="utf-8"))
    assert report["pairs_used"] == 12 and report["pairs_without_face"] == 4
    summary = out[out.index("bad input(s) skipped:"):]
    assert not _names(summary, _pair_images(mixed_root, "val", "bad") + _pair_images(mixed_root, "val", "missing"))
    assert set(_pair_images(mixed_root, "val", "bad")) <= set(report["bad_input_files"])

    error = _strict_error("train_matching.py", _matching_argv(mixed_root, embedder_run, tmp_path / "strict.json"),
                          capsys)
    assert "pairs.txt:2:" in error and mixed_root["val"]["missing"][0] in error


def test_matching_with_aligned_input_defaults_to_the_embedders_validation_pairs(
        mixed_root: dict, embedder_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = _matching_argv(mixed_root, embedder_run, tmp_path / "matcher.json")
    del argv[argv.index("--pairs"):argv.index("--pairs") + 2]
    code, out, _ = _run("train_matching.py", argv, capsys)
    assert code == 0, out[-2000:]
    report = json.loads((tmp_path / "matching" / "report.json").read_text(encoding="utf-8"))
    assert report["pairs_file"] == str(mixed_root["root"] / "aligned" / "synthetic" / "lfw_val" / "pairs.txt")
    assert report["pairs_used"] == 12 and report["pairs_without_face"] == 4
    assert report["chosen_because"] == "the only method fitted"


def _system_argv(mixed_root: dict, embedder_run: Path, matcher: Path, gallery: Path) -> list[str]:
    aligned = mixed_root["root"] / "aligned" / "synthetic"
    return ["--aligned-input", "--embedder", str(embedder_run / "best.pt"), "--matcher", str(matcher),
            "--pairs", str(aligned / "lfw_test" / "pairs.txt"), "--gallery", str(gallery),
            *_sets(mixed_root["root"], ["runtime.device=cpu", *FLOORS_OFF])]


def test_system_check_skips_missing_and_bad_test_images(mixed_root: dict, embedder_run: Path, matcher_file: Path,
                                                        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = _run("test_system.py",
                        _system_argv(mixed_root, embedder_run, matcher_file, tmp_path / "gallery.pt"), capsys)
    assert code == 0, out[-2000:]
    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert report["images"] == 8 * 3 + 2 and report["unreadable"] == 2, "every readable test image is analysed"
    assert report["images_with_face"] == 8 * 3, "grey and CMYK test images are embedded"
    assert report["verification"]["pairs"] == 14, "pairs naming a missing image are left out, the others decided"
    assert set(_pair_images(mixed_root, "test", "bad")) <= set(report["bad_input_files"])
    summary = out[out.index("bad input(s) skipped:"):]
    assert not _names(summary, _pair_images(mixed_root, "test", "bad") + _pair_images(mixed_root, "test", "missing"))

    error = _strict_error("test_system.py",
                          _system_argv(mixed_root, embedder_run, matcher_file, tmp_path / "strict.pt"), capsys)
    assert "pairs.txt:2:" in error and mixed_root["test"]["missing"][0] in error


def test_align_skips_unreadable_photos_and_processes_every_valid_one(mixed_root: dict, pretrained_mtcnn: Path,
                                                                      tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    source = mixed_root["root"] / "synthetic_faces" / "identities"
    nets = [f"paths.{net}={pretrained_mtcnn / (net + '.pt')}" for net in ("pnet", "rnet", "onet")]
    argv = ["--align", "folder", "--align-src", str(source), "--align-dst", str(tmp_path / "out"),
            *_sets(mixed_root["root"], ["runtime.workers=0", "runtime.device=cpu", *nets])]
    code, out, _ = _run("prepare_training_data.py", argv, capsys)
    assert code == 0
    report = json.loads((tmp_path / "out" / "train" / "align_report.json").read_text(encoding="utf-8"))
    photos = len([p for p in source.rglob("*") if p.is_file()])
    assert report["photos"] == photos
    assert sorted(report["unreadable"]) == sorted(map(str, mixed_root["identities"]))
    assert report["aligned"] + len(report["no_face"]) == photos - len(BAD_IMAGES), "every readable photo is processed"
    assert (tmp_path / "out" / "train" / "José María" / "0001.jpg").is_file()
    assert not _names(out[out.index("bad input(s) skipped:"):], mixed_root["identities"])

    argv[argv.index(str(tmp_path / "out"))] = str(tmp_path / "strict")
    error = _strict_error("prepare_training_data.py", argv, capsys)
    assert any(str(p) in error for p in mixed_root["identities"]), error

"""The model zoo (README "Models"): entry names resolve under the weights root from any working directory, an
unknown name lists the entries, SHA256SUMS catches a changed file; ``deploy.package`` turns tiny run folders
(the original MTCNN weights as a cascade run's checkpoints, a randomly initialised embedder) into entries that
load by name and by path with ``weights_only=True`` and find the 6 faces of the shared group photo;
``deploy.evaluate`` prints the README's table. The last test checks every entry committed under weights/."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from config import load_config
from datasets.fddb import FddbAnnotation, write_fddb_ellipses
from datasets.lfw import Pair, write_pairs
from datasets.synthetic import SyntheticSpec, generate_synthetic_set
from datasets.wider import WiderAnnotation, wider_split_paths, write_wider_annotations, write_wider_keep_list
from deploy import evaluate as zoo_evaluate, package as zoo_package
from models.detector import FaceDetector
from models.matcher import ThresholdMatcher, load_matcher
from models.mtcnn import NET_NAMES
from models.system import FaceRecognitionSystem
from models.weights import load_net, resolve_weights
from models.zoo import (
    CASCADE_FILES,
    EMBEDDER_FILE,
    MATCHER_FILE,
    SUMS_FILE,
    WEIGHTS_ENV,
    entry_file,
    has_cascade,
    list_entries,
    resolve_entry,
    sums_text,
    verify_entry,
    weights_root,
)
from tests.conftest import REPO, run_script
from training.facenet.model import architecture, build_model
from training.mtcnn.evaluation import CascadeEvaluation
from utils.atomic import atomic_write_json
from utils.checkpoint import save_checkpoint
from utils.cli import run
from utils.config_io import config_to_dict, save_config
from utils.errors import ConfigError, DataError
from utils.hashing import sha256_file
from utils.images import read_image
from utils.metrics import verification_metrics

COMMITTED = list_entries(REPO / "weights")
PEOPLE = ("Colin_Powell", "George_W_Bush", "Tony_Blair", "Donald_Rumsfeld")
CARD = ["--trained-on", "tiny test runs", "--command", "python make_tiny.py", "--wall-time", "1 s",
        "--machine", "the test machine", "--dataset", "synthetic"]


@pytest.fixture
def weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty weights root, named by $FACE_TOOLKIT_WEIGHTS; the working directory is elsewhere."""
    root = tmp_path / "weights"
    monkeypatch.setenv(WEIGHTS_ENV, str(root))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    return root


def copied_cascade(root: Path, source: Path, name: str = "tiny") -> Path:
    """An entry holding only the three original weight files and their SHA256SUMS."""
    folder = root / name
    folder.mkdir(parents=True)
    for file in CASCADE_FILES:
        shutil.copyfile(source / file, folder / file)
    (folder / SUMS_FILE).write_text(sums_text(folder))
    return folder


@pytest.fixture(scope="module")
def multiface(shared_data: Path) -> np.ndarray:
    return read_image(shared_data / "photos" / "multiface.jpg")


# --- names ------------------------------------------------------------------------------------------------


def test_names_resolve_under_the_weights_root(weights: Path, pretrained_mtcnn: Path) -> None:
    entry = copied_cascade(weights, pretrained_mtcnn)
    (weights / "half_done").mkdir()  # no SHA256SUMS: not an entry
    (weights / ".tiny.1234.tmp").mkdir()
    assert list_entries() == ["tiny"] and weights_root() == weights
    assert resolve_entry("tiny") == resolve_entry("weights/tiny") == resolve_entry(entry) == entry
    assert resolve_weights("tiny", "onet") == resolve_weights("weights/tiny", "onet") == entry / "onet.pt"
    assert entry_file("tiny", "rnet.pt") == entry / "rnet.pt"
    assert entry_file(entry / "pnet.pt", "rnet.pt") == entry / "pnet.pt"  # a file names itself
    assert resolve_entry("runs/mtcnn/pnet/best.pt") == Path("runs/mtcnn/pnet/best.pt")  # a path keeps its own error
    with pytest.raises(DataError, match="pnet weights not found"):
        resolve_weights("runs/mtcnn", "pnet")


def test_the_default_root_is_the_repository_weights_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    assert weights_root() == REPO / "weights"
    assert weights_root("/somewhere") == Path("/somewhere")


def test_an_unknown_name_is_one_line_that_lists_the_entries(weights: Path, pretrained_mtcnn: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    copied_cascade(weights, pretrained_mtcnn, "first")
    copied_cascade(weights, pretrained_mtcnn, "second")
    with pytest.raises(DataError) as caught:
        FaceDetector.from_pretrained("mtcnn_wider")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("mtcnn_wider:") and "first, second" in message
    assert run_script("test_system.py", ["--embedder", "nope", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope" in err and "first, second" in err


def test_checksums_name_a_changed_missing_or_unlisted_file(weights: Path, pretrained_mtcnn: Path) -> None:
    entry = copied_cascade(weights, pretrained_mtcnn)
    assert verify_entry(entry) == sorted(CASCADE_FILES)
    if shutil.which("sha256sum"):  # the file is in sha256sum's own format
        subprocess.run(["sha256sum", "--check", "--quiet", SUMS_FILE], cwd=entry, check=True)
    (entry / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match=r"notes\.txt: not listed in SHA256SUMS"):
        verify_entry(entry)
    (entry / "notes.txt").unlink()
    with open(entry / "onet.pt", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(DataError) as caught:
        verify_entry(entry)
    assert str(caught.value).startswith(str(entry / "onet.pt")) and "\n" not in str(caught.value)
    (entry / "onet.pt").unlink()
    with pytest.raises(DataError, match="onet.pt: listed in SHA256SUMS but missing"):
        verify_entry(entry)


# --- packaging --------------------------------------------------------------------------------------------


def training_state(config_dict: dict) -> dict:
    """What a trainer's checkpoint holds beside the weights (the packaged entry must drop it)."""
    return {"optimizer": {"state": {}, "param_groups": []}, "rng": {"torch": torch.get_rng_state()}, "epoch": 3,
            "config": config_dict}


def fake_mtcnn_run(run_dir: Path, pretrained: Path) -> Path:
    """A train_mtcnn.py output folder whose best checkpoints hold the original weights."""
    config = load_config()
    save_config(config, run_dir / "config.json")
    for net in NET_NAMES:
        save_checkpoint(run_dir / net / "best.pt", {"kind": net, "model": load_net(pretrained, net).state_dict(),
                                                     **training_state(config_to_dict(config))})
        for split in ("train", "val"):
            (run_dir / net / f"metrics_{split}.csv").write_text("epoch,loss\n1,0.5\n")
    evaluation = CascadeEvaluation(NET_NAMES, 0.5, 20.0, (), 0.7)
    face = np.array([[10.0, 10.0, 60.0, 60.0]])
    evaluation.add({net: (face, np.array([0.9])) for net in NET_NAMES}, face, np.array([True]))
    atomic_write_json(run_dir / "onet" / "eval.json", evaluation.report())
    return run_dir


def fake_facenet_run(run_dir: Path) -> Path:
    """A train_facenet.py output folder (random MobileFaceNet of the synthetic preset) with a tuned matcher."""
    config = load_config()
    save_config(config, run_dir / "config.json")
    torch.manual_seed(0)
    save_checkpoint(run_dir / "best.pt", {"kind": "facenet", "model": build_model(config.facenet).state_dict(),
                                          "embedder": architecture(config), **training_state(config_to_dict(config))})
    for split in ("train", "val"):
        (run_dir / f"metrics_{split}.csv").write_text("epoch,loss\n1,0.5\n")
    same = np.arange(20) % 4 < 2
    result = verification_metrics(same + np.linspace(0, 0.5, 20), same, np.arange(20) % 2)
    atomic_write_json(run_dir / "report.json", {"best_validation": result.as_dict()})
    ThresholdMatcher(threshold=0.5, metric="cosine", embedding_size=config.facenet.embedding_size).save(
        run_dir / "matcher.json", sha256_file(run_dir / "best.pt"))
    atomic_write_json(run_dir / "matching" / "report.json", {
        "chosen": "threshold (cosine)", "methods": {"threshold (cosine)": {"accuracy": 0.9, "accuracy_std": 0.05}},
        "pairs_used": 20, "pairs_file": "training_data/synthetic_faces/lfw_val/pairs.txt"})
    return run_dir


def fake_pipeline_runs(runs: Path, pretrained: Path) -> Path:
    """The one-command pipeline's runs/: mtcnn/, facenet/ and test_system.py's report."""
    fake_mtcnn_run(runs / "mtcnn", pretrained)
    fake_facenet_run(runs / "facenet")
    checks = {name: {"value": 0.9, "limit": 0.5, "ceiling": False, "passed": True}
              for name in ("detection recall", "verification accuracy", "identification top-1")}
    checks["impostor acceptance"] = {"value": None, "limit": 0.1, "ceiling": True, "passed": True}
    atomic_write_json(runs / "system" / "report.json", {"checks": checks, "images": 24,
                                                        "test_set": "training_data/synthetic_faces/lfw_test/pairs.txt"})
    return runs


def package_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``python -m deploy.package ARGV``: exit code, stdout, stderr."""
    code = run(zoo_package.main, zoo_package.get_args_parser(), argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def system_entry(weights: Path, tmp_path: Path, pretrained_mtcnn: Path) -> Path:
    """The entry ``tiny_system`` packaged from fake pipeline runs."""
    runs = fake_pipeline_runs(tmp_path / "runs", pretrained_mtcnn)
    return zoo_package.package(runs, "tiny_system", datasets=["synthetic"], trained_on="tiny test runs",
                               command="python make_tiny.py", wall_time="1 s", machine="the test machine")


def test_package_makes_an_entry_that_loads_by_name_and_by_path(weights: Path, tmp_path: Path, pretrained_mtcnn: Path,
                                                               multiface: np.ndarray,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    runs = fake_pipeline_runs(tmp_path / "runs", pretrained_mtcnn)
    code, out, _ = package_cli([str(runs), "--name", "tiny_system", *CARD], capsys)
    entry = weights / "tiny_system"
    assert code == 0 and out.startswith(f"{entry}: 18 files")
    assert sorted(p.name for p in entry.iterdir()) == sorted([
        *CASCADE_FILES, "embedder.pt", "matcher.json", "config.json", "config_mtcnn.json", "eval.json", "MODEL.md",
        SUMS_FILE, *(f"metrics_{part}_{split}.csv" for part in (*NET_NAMES, "embedder") for split in ("train", "val"))])
    assert verify_entry(entry) == sorted(p.name for p in entry.iterdir() if p.name != SUMS_FILE)
    assert [p.name for p in weights.iterdir()] == ["tiny_system"]  # no build folder left behind

    for net in NET_NAMES:  # plain state_dicts, loadable without pickled code
        state = torch.load(entry / f"{net}.pt", weights_only=True)
        assert all(isinstance(v, torch.Tensor) for v in state.values()) and "optimizer" not in state
    record = torch.load(entry / "embedder.pt", weights_only=True)
    assert sorted(record) == ["embedder", "kind", "model"]
    load_matcher(entry / "matcher.json", sha256_file(entry / "embedder.pt"))  # re-tagged for the stripped file
    assert load_config(entry / "config.json") == load_config()

    by_name = FaceDetector.from_pretrained("tiny_system").detect([multiface])[0]
    by_path = FaceDetector.from_pretrained(entry).detect([multiface])[0]
    assert len(by_name) == 6 and torch.equal(by_name.boxes, by_path.boxes)
    system = FaceRecognitionSystem.from_files("tiny_system", detector=("tiny_system",) * 3, matcher="tiny_system")
    assert system.embedder_sha256 == sha256_file(entry / "embedder.pt") and len(system.identify(multiface)) == 6

    card = (entry / "MODEL.md").read_text()
    for text in ("tiny test runs", "python make_tiny.py", "1 s, on the test machine", "synthetic face set",
                 "| entry | task | data | figures |", "| tiny_system | detection |", "| tiny_system | system |"):
        assert text in card
    tasks = [r["task"] for r in json.loads((entry / "eval.json").read_text())["evaluations"]]
    assert tasks == ["detection", "verification", "matching", "system"]

    code, _, err = package_cli([str(runs), "--name", "tiny_system", *CARD], capsys)
    assert code == 2 and "exists; --force replaces it" in err and err.count("\n") == 1
    code, _, _ = package_cli([str(runs / "mtcnn"), "--name", "tiny_system", "--force", *CARD], capsys)
    assert code == 0 and not (entry / "embedder.pt").exists() and (entry / "pnet.pt").is_file()
    assert [p.name for p in weights.iterdir()] == ["tiny_system"]


def test_package_refuses_what_would_make_a_broken_entry(weights: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = fake_facenet_run(tmp_path / "facenet")
    ThresholdMatcher(threshold=0.5, embedding_size=8).save(run_dir / "matcher.json", "0" * 64)
    code, _, err = package_cli([str(run_dir), "--name", "celeb", *CARD], capsys)
    assert code == 2 and "matcher was tuned for embedder" in err
    with pytest.raises(ConfigError, match="entry name"):
        zoo_package.package(run_dir, "../up", trained_on="", command="", wall_time="", machine="")
    with pytest.raises(DataError, match="not a run folder"):
        zoo_package.package(tmp_path, "empty", trained_on="", command="", wall_time="", machine="")
    assert not weights.exists() or not any(weights.iterdir())


# --- evaluation -------------------------------------------------------------------------------------------


def tiny_pairs(lfw12: Path, root: Path) -> Path:
    """4 people x 3 photos in the LFW layout and a 2-fold pairs file of 2 same + 2 different pairs per fold."""
    for person in PEOPLE:
        for i, source in enumerate(sorted((lfw12 / person).glob("*.jpg"))[:3], start=1):
            target = root / "images" / person / f"{person}_{i:04d}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    a, b, c, d = PEOPLE
    write_pairs(root / "pairs.txt", [[Pair(a, 1, a, 2), Pair(b, 1, b, 3), Pair(a, 3, c, 1), Pair(b, 2, d, 1)],
                                     [Pair(c, 2, c, 3), Pair(d, 2, d, 3), Pair(c, 1, d, 1), Pair(a, 2, b, 2)]])
    return root / "pairs.txt"


def photo_sets(photo: Path, faces: np.ndarray, root: Path) -> tuple[Path, Path]:
    """A WIDER-format folder (WIDER_val, with keep-lists) and an FDDB fold, each of one photo and its faces."""
    images, annotations = wider_split_paths(root / "wider", "val")
    (images / "0--Group").mkdir(parents=True)
    shutil.copyfile(photo, images / "0--Group" / "group.jpg")
    write_wider_annotations(annotations, [WiderAnnotation("0--Group/group.jpg", faces)])
    for subset, keep in (("easy", [0, 1, 2]), ("medium", [0, 1, 2, 3]), ("hard", [0, 1, 2, 3, 4, 5])):
        write_wider_keep_list(annotations.parent / f"wider_{subset}_val.txt", {"0--Group/group.jpg": np.array(keep)})
    (root / "fddb" / "pics").mkdir(parents=True)
    shutil.copyfile(photo, root / "fddb" / "pics" / "group.jpg")
    centre, half = (faces[:, :2] + faces[:, 2:]) / 2, (faces[:, 2:] - faces[:, :2]) / 2
    ellipses = np.column_stack([half[:, 1], half[:, 0], np.zeros(len(faces)), centre])
    write_fddb_ellipses(root / "fddb" / "FDDB-fold-01-ellipseList.txt", [FddbAnnotation("group", ellipses)])
    return root / "wider", root / "fddb" / "FDDB-fold-01-ellipseList.txt"


def test_evaluate_prints_the_readme_table(system_entry: Path, tmp_path: Path, shared_data: Path,
                                          multiface: np.ndarray, capsys: pytest.CaptureFixture[str]) -> None:
    faces = FaceDetector.from_pretrained(system_entry).detect([multiface])[0].boxes.numpy()
    wider, fold = photo_sets(shared_data / "photos" / "multiface.jpg", faces, tmp_path / "data")
    pairs = tiny_pairs(shared_data / "lfw_top12_100px" / "images", tmp_path / "lfw")
    out_json = tmp_path / "figures.json"
    argv = ["tiny_system", "--wider", str(wider), "--fddb", str(fold), "--fddb-images", str(fold.parent / "pics"),
            "--pairs", str(pairs), "--json", str(out_json), "--device", "cpu"]
    code = run(zoo_evaluate.main, zoo_evaluate.get_args_parser(), argv)
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"{system_entry}: 17 files match SHA256SUMS" in out
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert table[:2] == ["| entry | task | data | figures |", "|---|---|---|---|"] and len(table) == 5
    detection, fddb, verification = table[2:]
    assert detection.startswith("| tiny_system | detection | WIDER-format `wider`, the WIDER_val split "
                                "(1 image, 6 faces")
    assert "AP@0.5 **1.0000**" in detection and "easy / medium / hard AP 1.0000 / 1.0000 / 1.0000" in detection
    assert "| fddb | FDDB `FDDB-fold-01-ellipseList.txt` (1 image, 6 faces)" in fddb
    assert "| verification | pairs `lfw/pairs.txt` (8 pairs)" in verification
    assert "(2 folds)" in verification and "its matcher (threshold matcher: cosine >= 0.5000): accuracy" in verification
    records = json.loads(out_json.read_text())
    assert records["entry"] == "tiny_system" and [r["task"] for r in records["evaluations"]] == [
        "detection", "fddb", "verification"]

    assert run(zoo_evaluate.main, zoo_evaluate.get_args_parser(), ["tiny_system"]) == 0  # no data: the recorded ones
    recorded = capsys.readouterr().out
    assert "| tiny_system | matching | pairs `lfw_val/pairs.txt` (20 pairs) |" in recorded

    with open(system_entry / "matcher.json", "a") as handle:
        handle.write(" ")
    code = run(zoo_evaluate.main, zoo_evaluate.get_args_parser(), ["tiny_system", "--pairs", str(pairs)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "matcher.json: SHA-256 differs from SHA256SUMS" in err


def test_the_scripts_take_an_entry_by_name(system_entry: Path, tmp_path: Path, shared_data: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    pairs = tiny_pairs(shared_data / "lfw_top12_100px" / "images", tmp_path / "lfw")
    runs = tmp_path / "runs"
    common = ["--pairs", str(pairs), "--detector", "tiny_system", "--embedder", "tiny_system", "--device", "cpu",
              "--set", f"paths.runs_dir={runs}", "--set", "align.eval_size=48"]
    code = run_script("train_matching.py", [*common, "--method", "threshold"])
    assert code == 0, capsys.readouterr().err
    load_matcher(runs / "tiny_system" / "matcher.json", sha256_file(system_entry / "embedder.pt"))
    verify_entry(system_entry)  # the entry itself is left as shipped
    floors = [f"--set=system.{k}=0" for k in ("min_detection_recall", "min_verification_accuracy",
                                              "min_identification_top1")] + ["--set=system.max_impostor_accept_rate=1"]
    capsys.readouterr()
    code = run_script("test_system.py", [*common, *floors])
    out = capsys.readouterr().out
    assert code == 0 and "system: threshold matcher: cosine >= 0.5000" in out  # the entry's own matcher


# --- the entries committed under weights/ -----------------------------------------------------------------


def mean_cosines(embeddings: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Mean cosine similarity of pairs of one person and of pairs of two people (rows without a face left out)."""
    keep = np.isfinite(embeddings).all(axis=1)
    unit = embeddings[keep] / np.linalg.norm(embeddings[keep], axis=1, keepdims=True)
    labels = labels[keep]
    cosine = unit @ unit.T
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~np.eye(len(labels), dtype=bool)
    return float(cosine[same & off_diagonal].mean()), float(cosine[~same].mean())


def two_people_photos(entry: Path, shared_data: Path, tmp_path: Path) -> list[Path]:
    """8 photos each of two people the entry's embedder never saw, from the kind of faces it was trained on:
    LFW's for real-data embedders, newly generated synthetic people (another seed) for synthetic ones."""
    if "synthetic" not in json.loads((entry / "eval.json").read_text()).get("datasets", []):
        lfw12 = shared_data / "lfw_top12_100px" / "images"
        return [p for person in PEOPLE[:2] for p in sorted((lfw12 / person).glob("*.jpg"))[:8]]
    spec = SyntheticSpec(seed=99, train_scenes=0, val_scenes=0, landmark_train=0, landmark_test=0, train_identities=2,
                         images_per_identity=8, val_identities=4, val_images_per_identity=2, val_folds=2,
                         val_pairs_per_fold=1, test_identities=4, test_images_per_identity=2, test_folds=2,
                         test_pairs_per_fold=1)
    generate_synthetic_set(tmp_path / "synthetic", spec, workers=1, progress=False)
    return sorted((tmp_path / "synthetic" / "identities").glob("*/*.jpg"))


@pytest.mark.parametrize("name", COMMITTED or [pytest.param(None,
                                                           marks=pytest.mark.skip(reason="no entries committed"))])
def test_a_committed_entry_loads_and_works(name: str, pretrained_mtcnn: Path, shared_data: Path,
                                           multiface: np.ndarray, tmp_path: Path) -> None:
    """Checksums match; the entry loads by name; its cascade finds the group photo's 6 faces (one miss allowed:
    a trained cascade may trail the original weights a little); its embedder tells two people apart."""
    entry = resolve_entry(name, REPO / "weights")
    assert entry == REPO / "weights" / name and verify_entry(entry)
    if has_cascade(entry):
        reference = FaceDetector.from_pretrained(pretrained_mtcnn).detect([multiface])[0].boxes
        found = FaceDetector.from_pretrained(entry).detect([multiface])[0].boxes
        matched = int((box_iou(reference, found) >= 0.5).any(dim=1).sum()) if len(found) else 0
        assert len(reference) == 6 and matched >= 5, f"{name} finds {matched} of the 6 faces"
    if (entry / EMBEDDER_FILE).is_file():
        detector = entry if has_cascade(entry) else pretrained_mtcnn
        matcher = entry if (entry / MATCHER_FILE).is_file() else None
        system = FaceRecognitionSystem.from_files(entry, detector=(detector,) * 3, matcher=matcher)
        photos = two_people_photos(entry, shared_data, tmp_path)
        embeddings, _ = system.embed_images(photos)
        same, different = mean_cosines(embeddings, np.repeat([0, 1], 8))
        assert same > different + 0.1, f"{name}: same-person cosine {same:.3f}, different-person {different:.3f}"

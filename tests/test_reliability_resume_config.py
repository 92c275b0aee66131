"""Reliability of --resume after a config change: the saved config is compared with the current one before
anything is written. A change the saved state cannot take is refused with one line naming the key and both
values (exit code 2, config.json untouched); a change that can apply takes effect from the resumed step, is
said on the console, recorded in config.json and in the run's resumes.jsonl."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from datasets.synthetic import generate_synthetic_set
from tests.conftest import run_script
from tests.test_reliability_resume import MTCNN_SPEC, MTCNN_TINY, facenet_argv, make_facenet_root

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ONE_EPOCH = ("--set", "facenet.epochs=1", "--set", "facenet.batches_per_epoch=3", "--set", "facenet.accumulate=1",
             "--set", "facenet.schedule=constant")


@pytest.fixture(scope="module")
def facenet_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Tiny aligned data and a finished one-epoch run on it (lr 0.01, constant schedule)."""
    root = tmp_path_factory.mktemp("resume_config")
    aligned = make_facenet_root(root / "aligned")
    assert run_script("train_facenet.py", facenet_argv(aligned, root / "run", *ONE_EPOCH)) == 0
    return aligned, root / "run"


def _copy_run(run: Path, to: Path) -> Path:
    to.mkdir()
    for name in ("last.pt", "best.pt", "config.json", "metrics_train.csv", "metrics_val.csv"):
        (to / name).write_bytes((run / name).read_bytes())
    return to


def _refused(err: str) -> str:
    assert "Traceback" not in err, err[-2000:]
    lines = err.replace("\r", "\n").strip().splitlines()
    assert lines[-1].startswith("error: --resume"), lines[-1]
    return lines[-1]


@pytest.mark.parametrize("change, named", [
    ("facenet.embedding_size=32", "facenet.embedding_size 16 -> 32"),
    ("facenet.optimizer=sgd", 'facenet.optimizer "adam" -> "sgd"'),
])
def test_facenet_resume_refuses_a_change_the_saved_state_cannot_take(
        facenet_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture, change: str, named: str) -> None:
    aligned, finished = facenet_run
    out = _copy_run(finished, tmp_path / "run")
    before = {name: (out / name).read_bytes() for name in ("config.json", "last.pt", "metrics_train.csv")}
    capsys.readouterr()
    argv = facenet_argv(aligned, out, *ONE_EPOCH, "--set", "facenet.epochs=2", "--set", change, "--resume")
    assert run_script("train_facenet.py", argv) == 2
    line = _refused(capsys.readouterr().err)
    assert named in line and "facenet.epochs" not in line, "names the refused key with both values, only it"
    assert all((out / name).read_bytes() == data for name, data in before.items()), "nothing was written"
    assert not (out / "resumes.jsonl").exists()


def test_facenet_resume_applies_a_new_learning_rate_and_records_it(
        facenet_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    aligned, finished = facenet_run
    out = _copy_run(finished, tmp_path / "run")
    capsys.readouterr()
    argv = facenet_argv(aligned, out, *ONE_EPOCH, "--set", "facenet.epochs=2", "--set", "facenet.lr=0.5", "--resume")
    assert run_script("train_facenet.py", argv) == 0
    printed = capsys.readouterr().out
    assert "changed settings apply from step 3: facenet.epochs 1 -> 2, facenet.lr 0.01 -> 0.5" in printed
    saved = torch.load(out / "last.pt", weights_only=True)
    assert saved["epoch"] == 2 and saved["scheduler"]["base_lrs"] == [0.5]
    assert [group["lr"] for group in saved["optimizer"]["param_groups"]] == [0.5]
    rows = list(csv.DictReader((out / "metrics_train.csv").open()))
    assert [(r["epoch"], float(r["lr"])) for r in rows] == [("1", 0.01), ("2", 0.5)], "the new rate trained epoch 2"
    assert json.loads((out / "config.json").read_text())["facenet"]["lr"] == 0.5, "config.json describes the run"
    history = [json.loads(line) for line in (out / "resumes.jsonl").read_text().splitlines()]
    assert len(history) == 1 and history[0]["epoch"] == 1 and history[0]["step"] == 3 and history[0]["time"]
    assert history[0]["changed"] == {"facenet.epochs": [1, 2], "facenet.lr": [0.01, 0.5]}


# --- MTCNN ------------------------------------------------------------------------------------------------------


def _mtcnn_argv(data_root: Path, out: Path, *items: str) -> list[str]:
    """train_mtcnn.py arguments: a tiny one-epoch P-Net stage plus ``items`` (``--set``)."""
    argv = ["--stage", "pnet", "--no-eval", "--output-dir", str(out), "--set", f"paths.data_root={data_root}"]
    for item in MTCNN_TINY + ["mtcnn.pnet.epochs=1", "mtcnn.pnet.steps_per_epoch=4", "mtcnn.pnet.batch_size=32",
                              *items]:
        argv += ["--set", item]
    return argv


def test_mtcnn_resume_refuses_changes_to_a_finished_stage_and_a_new_optimizer(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data_root, out = tmp_path / "data", tmp_path / "run"
    generate_synthetic_set(data_root / "synthetic_faces", MTCNN_SPEC, workers=1, progress=False)
    assert run_script("train_mtcnn.py", _mtcnn_argv(data_root, out)) == 0
    configs = {p: p.read_bytes() for p in (out / "config.json", out / "pnet" / "config.json")}
    capsys.readouterr()
    assert run_script("train_mtcnn.py", [*_mtcnn_argv(data_root, out, "mtcnn.pnet.lr=0.01"), "--resume"]) == 2
    line = _refused(capsys.readouterr().err)
    assert "stage pnet is finished" in line and "mtcnn.pnet.lr 0.003 -> 0.01" in line, "it would never train again"

    (out / "pnet" / "done.json").unlink()  # as if killed after its last checkpoint
    assert run_script("train_mtcnn.py", [*_mtcnn_argv(data_root, out, "mtcnn.pnet.optimizer=sgd"), "--resume"]) == 2
    line = _refused(capsys.readouterr().err)
    assert 'mtcnn.pnet.optimizer "adam" -> "sgd"' in line
    assert all(path.read_bytes() == data for path, data in configs.items()), "config.json files untouched"

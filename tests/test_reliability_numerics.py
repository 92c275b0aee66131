"""Reliability under numerical faults: a NaN or infinite loss (injected into a real training run in this process)
stops each trainer with one clear line and exit code 2, leaving the last good checkpoint byte-for-byte as it was;
with --skip-nonfinite the bad batch is skipped (and counted, and leaves no trace in batch-norm statistics) and
training finishes with finite weights."""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import math
from pathlib import Path

import pytest
import torch

import training.facenet.task as task_module
import training.facenet.triplet as triplet_module
import training.mtcnn.loss as loss_module
from datasets.synthetic import generate_synthetic_set
from tests.conftest import run_script
from tests.test_reliability_resume import MTCNN_SPEC, MTCNN_TINY, make_facenet_root

FACENET = ["facenet.input_size=32", "facenet.width=0.25", "facenet.embedding_size=16", "facenet.identities_per_batch=4",
           "facenet.images_per_identity=4", "facenet.lr=0.01", "facenet.warmup_steps=2", "facenet.val_batch_size=64",
           "facenet.val_loss_batches=1", "facenet.epochs=2", "facenet.batches_per_epoch=4", "align.train_size=36",
           "align.eval_size=32", "runtime.workers=0", "runtime.device=cpu"]
MTCNN_STEPS = 10
MTCNN = MTCNN_TINY + ["mtcnn.pnet.epochs=2", f"mtcnn.pnet.steps_per_epoch={MTCNN_STEPS}", "mtcnn.pnet.batch_size=32",
                      "mtcnn.pnet.warmup_steps=2"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open(newline="", encoding="utf-8")))


class Snapshot:
    """The checkpoint files of a run folder as they were when the fault was injected."""

    def __init__(self) -> None:
        self.hashes: dict[Path, str] = {}

    def take(self, folder: Path) -> None:
        self.hashes = {path: _sha(path) for path in (folder / "last.pt", folder / "best.pt")}

    def unchanged(self) -> bool:
        return bool(self.hashes) and all(_sha(path) == digest for path, digest in self.hashes.items())


def _one_error_line(err: str) -> str:
    """The error line a script printed last on stderr (progress bars before it are drawn with carriage returns)."""
    assert "Traceback" not in err, err[-2000:]
    return err.replace("\r", "\n").strip().splitlines()[-1]


def _all_finite(checkpoint_path: Path) -> bool:
    model = torch.load(checkpoint_path, map_location="cpu", weights_only=True)["model"]
    return all(torch.isfinite(v).all() for v in model.values() if v.is_floating_point())


# --- FaceNet --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def aligned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_facenet_root(tmp_path_factory.mktemp("numerics_facenet") / "aligned")


def _facenet(aligned: Path, out: Path, *flags: str) -> int:
    argv = ["--output-dir", str(out), "--set", f"paths.aligned={aligned}", *flags]
    for item in FACENET:
        argv += ["--set", item]
    return run_script("train_facenet.py", argv)


def _poison_triplet_loss(monkeypatch: pytest.MonkeyPatch, at_call: int, value: float, on_fault) -> None:
    """Make the ``at_call``-th training loss (one with a graph; validation losses have none) ``value``."""
    calls = {"n": 0}

    class PoisonedTripletLoss(triplet_module.TripletLoss):
        def __call__(self, *args, **kwargs):
            loss, stats = super().__call__(*args, **kwargs)
            if loss.requires_grad:
                calls["n"] += 1
                if calls["n"] == at_call:
                    on_fault()
                    loss = loss * value if math.isnan(value) else loss + value
            return loss, stats

    monkeypatch.setattr(triplet_module, "TripletLoss", PoisonedTripletLoss)


def test_facenet_infinite_loss_stops_with_one_line_and_keeps_the_last_checkpoint(
        aligned: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    snapshot = Snapshot()
    _poison_triplet_loss(monkeypatch, at_call=6, value=math.inf, on_fault=lambda: snapshot.take(tmp_path))
    assert _facenet(aligned, tmp_path) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("error: non-finite loss (inf) at epoch 2, step 5;") and "last checkpoint is kept" in line \
        and "--skip-nonfinite" in line, line
    assert snapshot.unchanged(), "last.pt and best.pt are the bytes written after epoch 1"
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 1
    assert not (tmp_path / "report.json").exists(), "the run did not pretend to finish"


def test_facenet_skip_flag_skips_a_nan_batch_without_poisoning_batchnorm(
        aligned: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A NaN batch of images: its forward pass moves the batch-norm running statistics to NaN, which a skip must undo.
    step_for, augment = task_module.EmbedderTask.step_for, task_module.augment
    where = {"epoch": -1, "batch": 0}

    def track_epoch(task, epoch):
        where.update(epoch=epoch, batch=0)
        return step_for(task, epoch)

    def nan_second_batch_of_epoch_two(*args, **kwargs):
        out = augment(*args, **kwargs)
        if where["epoch"] == 1:
            where["batch"] += 1
            if where["batch"] == 2:
                out = torch.full_like(out, math.nan)
        return out

    monkeypatch.setattr(task_module.EmbedderTask, "step_for", track_epoch)
    monkeypatch.setattr(task_module, "augment", nan_second_batch_of_epoch_two)
    with pytest.warns(RuntimeWarning, match=r"skipped a batch with a non-finite loss \(nan\) at epoch 2"):
        assert _facenet(aligned, tmp_path, "--skip-nonfinite") == 0
    rows = _rows(tmp_path / "metrics_train.csv")
    assert [(r["epoch"], r["nonfinite_skipped"], r["batches"]) for r in rows] == [("1", "0", "4"), ("2", "1", "3")]
    assert _all_finite(tmp_path / "last.pt"), "weights and batch-norm statistics stay finite"
    assert math.isfinite(float(_rows(tmp_path / "metrics_val.csv")[-1]["val_accuracy"]))
    assert (tmp_path / "report.json").is_file()


# --- MTCNN ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("numerics_mtcnn")
    generate_synthetic_set(root / "synthetic_faces", MTCNN_SPEC, workers=1, progress=False)
    return root


def _mtcnn(data_root: Path, out: Path, *flags: str) -> int:
    argv = ["--stage", "pnet", "--no-eval", "--output-dir", str(out), "--set", f"paths.data_root={data_root}", *flags]
    for item in MTCNN:
        argv += ["--set", item]
    return run_script("train_mtcnn.py", argv)


def _poison_mtcnn_loss(monkeypatch: pytest.MonkeyPatch, at_call: int, value: float, on_fault=None) -> None:
    """Make the ``at_call``-th training loss (validation runs without a graph) ``value``."""
    calls = {"n": 0}

    class PoisonedMTCNNLoss(loss_module.MTCNNLoss):
        def forward(self, *args, **kwargs):
            parts = super().forward(*args, **kwargs)
            if parts.total.requires_grad:
                calls["n"] += 1
                if calls["n"] == at_call:
                    if on_fault is not None:
                        on_fault()
                    parts = dataclasses.replace(parts, total=parts.total * value)
            return parts

    monkeypatch.setattr(loss_module, "MTCNNLoss", PoisonedMTCNNLoss)


def test_mtcnn_nan_loss_stops_with_one_line_and_keeps_the_last_checkpoint(
        data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    snapshot = Snapshot()
    _poison_mtcnn_loss(monkeypatch, MTCNN_STEPS + 3, math.nan, on_fault=lambda: snapshot.take(tmp_path / "pnet"))
    assert _mtcnn(data_root, tmp_path) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: non-finite loss (nan) at epoch 2, step {MTCNN_STEPS + 2};") \
        and "last checkpoint is kept" in line, line
    assert snapshot.unchanged(), "last.pt and best.pt are the bytes written after epoch 1"
    assert not (tmp_path / "pnet" / "done.json").exists()


def test_mtcnn_skip_flag_skips_an_infinite_loss_batch_and_finishes(
        data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _poison_mtcnn_loss(monkeypatch, MTCNN_STEPS + 3, math.inf)
    with pytest.warns(RuntimeWarning, match=rf"skipped a batch with a non-finite loss \(inf\) at epoch 2, "
                                            rf"step {MTCNN_STEPS + 2}"):
        assert _mtcnn(data_root, tmp_path, "--skip-nonfinite") == 0
    rows = _rows(tmp_path / "pnet" / "metrics_train.csv")
    assert [(r["epoch"], r["nonfinite_skipped"], r["step"]) for r in rows] == \
        [("1", "0", str(MTCNN_STEPS)), ("2", "1", str(2 * MTCNN_STEPS - 1))], "one step fewer: the bad batch"
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    assert _all_finite(tmp_path / "pnet" / "last.pt")
    assert (tmp_path / "pnet" / "done.json").is_file()


def _check_finite_process(rank: int, port: int, out: str) -> None:
    """One gloo process: rank 1 sees a NaN loss, rank 0 a finite one; each writes what check_finite decided."""
    import os

    import torch.distributed as dist

    from training.engine import check_finite
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        loss = torch.tensor(float("nan") if rank == 1 else 0.5)
        with pytest.warns(RuntimeWarning, match="non-finite loss"):
            decided = check_finite(loss, "step 1", skip=True)
        Path(out, f"rank{rank}").write_text(str(decided))
    finally:
        dist.destroy_process_group()


def test_ddp_processes_agree_to_skip_a_batch_one_of_them_found_non_finite(tmp_path: Path) -> None:
    """Under DDP a NaN in one process makes every process skip that batch (else the others would wait in backward)."""
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torch.multiprocessing.start_processes(_check_finite_process, args=(port, str(tmp_path)), nprocs=2,
                                          start_method="fork")
    assert (tmp_path / "rank0").read_text() == "False" and (tmp_path / "rank1").read_text() == "False"

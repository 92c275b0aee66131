"""Reliability of interrupted training: each trainer (FaceNet; MTCNN P, R and O) is started as a real process,
killed with SIGKILL inside its second epoch, resumed with --resume, interrupted with SIGINT inside its third
epoch, resumed again, and must end with exactly the weights and optimizer state of an unbroken run.

Why exact equality holds on CPU: the checkpoint carries model, optimizer, schedule, gradient-scaler and every
RNG state plus any gradients accumulated since the last step; the batch samplers draw their order from
(seed, epoch); a SIGINT checkpoint records how many batches of the epoch were trained and the resumed run skips
them; the data loaders own their generator, so making an iterator does not move the global RNG that
augmentation uses; every process runs one thread, so the float sums are added in the same order.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import training.engine
from datasets.lfw import Pair, write_pairs
from datasets.synthetic import SyntheticSpec, generate_synthetic_set
from models.mtcnn import NET_NAMES
from tests.conftest import REPO, run_script
from utils.images import write_image

THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

# --- tiny data and configurations ---------------------------------------------------------------------------

FACENET_TINY = ["facenet.input_size=32", "facenet.width=0.25", "facenet.embedding_size=16",
                "facenet.identities_per_batch=4", "facenet.images_per_identity=4", "facenet.lr=0.01",
                "facenet.warmup_steps=2", "facenet.val_batch_size=64", "facenet.val_loss_batches=1",
                "facenet.epochs=3", "facenet.batches_per_epoch=10", "facenet.accumulate=3",
                "align.train_size=36", "align.eval_size=32", "runtime.workers=0", "runtime.device=cpu"]

MTCNN_SPEC = SyntheticSpec(seed=1, train_scenes=10, val_scenes=3, scene_sizes=((200, 160), (160, 200)),
                           max_faces_per_scene=4, min_face=16, max_face=80, scene_identities=10, train_identities=2,
                           images_per_identity=2, val_identities=2, val_images_per_identity=2, val_folds=1,
                           val_pairs_per_fold=1, test_identities=2, test_images_per_identity=2, test_folds=1,
                           test_pairs_per_fold=1, landmark_train=20, landmark_test=6, identity_width=(80, 90),
                           identity_height=(90, 100), lfw_image_size=64)
MTCNN_TINY = ["runtime.workers=0", "runtime.device=cpu", "detector.thresholds=0.3,0.3,0.3",
              "mtcnn.mining_thresholds=0.2,0.2", "mtcnn.rnet.mined_negatives_per_image=10",
              "mtcnn.onet.mined_negatives_per_image=10"]
# Per stage: three epochs of about a second each, so that a signal can land inside one.
MTCNN_STAGE = {"pnet": ("epochs=3", "steps_per_epoch=100", "batch_size=64", "warmup_steps=2", "accumulate=2"),
               "rnet": ("epochs=3", "steps_per_epoch=50", "batch_size=32", "warmup_steps=2"),
               "onet": ("epochs=3", "steps_per_epoch=24", "batch_size=16", "warmup_steps=2")}


def identity_pattern(rng: np.random.Generator, side: int) -> np.ndarray:
    """A smooth random colour pattern (float RGB, side x side): what tells one identity from another."""
    coarse = rng.uniform(30, 225, size=(5, 5, 3))
    rows = np.linspace(0, 4, side)
    lower = np.floor(rows).astype(int).clip(0, 3)
    frac = (rows - lower)[:, None]
    band = coarse[lower] * (1 - frac[..., None]) + coarse[lower + 1] * frac[..., None]
    cols = band[:, lower] * (1 - frac[None, :, :]) + band[:, lower + 1] * frac[None, :, :]
    return cols


def write_identity_crops(root: Path, identities: int, images: int, side: int, seed: int,
                         lfw_names: bool = False, prefix: str = "id") -> list[str]:
    """Identity folders of ``side`` px face-crop stand-ins: one smooth pattern per identity, noise per image;
    file names ``<n>.jpg`` or, with ``lfw_names``, ``<Name>_<NNNN>.jpg``. Returns the identity names."""
    rng = np.random.default_rng(seed)
    names = [f"{prefix}{i:03d}" for i in range(identities)]
    for name in names:
        base = identity_pattern(rng, side)
        for k in range(1, images + 1):
            noisy = (base + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)
            file = f"{name}_{k:04d}.jpg" if lfw_names else f"{k}.jpg"
            write_image(root / name / file, noisy)
    return names


def write_pairs_set(folder: Path, identities: int, images: int, side: int, seed: int, folds: int = 2) -> None:
    """An LFW-layout pairs set: ``folder/images/<Name>/<Name>_NNNN.jpg`` and a View-2 ``folder/pairs.txt``."""
    names = write_identity_crops(folder / "images", identities, images, side, seed, lfw_names=True, prefix="Val_")
    per_fold = identities // folds
    result = []
    for fold in range(folds):
        members = names[fold * per_fold:(fold + 1) * per_fold]
        same = [Pair(n, 1, n, 2) for n in members]
        different = [Pair(members[i], 1, members[(i + 1) % len(members)], 3) for i in range(len(members))]
        result.append(same + different)
    write_pairs(folder / "pairs.txt", result)


def make_facenet_root(root: Path) -> Path:
    """``paths.aligned`` for train_facenet.py: train/ identity folders (36 px) and lfw_val/ (32 px) pairs."""
    write_identity_crops(root / "train", identities=12, images=5, side=36, seed=3)
    write_pairs_set(root / "lfw_val", identities=6, images=3, side=32, seed=4)
    return root


def facenet_argv(aligned: Path, out: Path, *extra: str) -> list[str]:
    """train_facenet.py arguments: the tiny settings on ``aligned``, writing to ``out``."""
    argv = ["--output-dir", str(out), "--set", f"paths.aligned={aligned}"]
    for item in FACENET_TINY:
        argv += ["--set", item]
    return argv + list(extra)


def mtcnn_argv(data_root: Path, out: Path, stage: str, *extra: str) -> list[str]:
    """train_mtcnn.py arguments: one stage with the tiny settings, no evaluation, one thread."""
    argv = ["--stage", stage, "--output-dir", str(out), "--no-eval", "--threads", "1",
            "--set", f"paths.data_root={data_root}"]
    for item in MTCNN_TINY + [f"mtcnn.{stage}.{value}" for value in MTCNN_STAGE[stage]]:
        argv += ["--set", item]
    return argv + list(extra)


# --- running a script as a process ----------------------------------------------------------------------------


class Script:
    """A toolkit script running as its own process; stdout and stderr are collected while it runs."""

    def __init__(self, script: str, argv: list[str]) -> None:
        env = {**os.environ, **THREAD_ENV, "PYTHONPATH": str(REPO)}
        self.process = subprocess.Popen([sys.executable, str(REPO / script), *argv], cwd=REPO, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._chunks: dict[str, bytearray] = {"out": bytearray(), "err": bytearray()}
        self._readers = [threading.Thread(target=self._read, args=(stream, name), daemon=True)
                         for stream, name in ((self.process.stdout, "out"), (self.process.stderr, "err"))]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, name: str) -> None:
        while chunk := stream.read1(4096):
            self._chunks[name] += chunk

    def text(self, name: str) -> str:
        """What the process wrote to stdout ("out") or stderr ("err") so far."""
        return bytes(self._chunks[name]).decode("utf-8", errors="replace")

    def wait_for_batches(self, epoch: int, timeout: float = 120.0) -> int:
        """Block until the progress bar shows at least one finished batch of ``epoch``; return that count."""
        pattern = re.compile(rf"epoch {epoch}:\s+\d+%\|[^|]*\|\s*([1-9]\d*)/(\d+)")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = pattern.search(self.text("err"))
            if found:
                return int(found.group(1))
            if self.process.poll() is not None:
                break
            time.sleep(0.005)
        self.stop(signal.SIGKILL)
        pytest.fail(f"no progress in epoch {epoch} (exit {self.process.returncode}):\n{self.text('err')[-3000:]}")

    def stop(self, sig: int, timeout: float = 120.0) -> int:
        """Send ``sig`` and wait for the process to end; returns its exit code (negative: killed by a signal)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout)
        for reader in self._readers:
            reader.join(10)
        return code


def checkpoint(path: Path) -> dict:
    """A checkpoint's contents (loaded as the toolkit loads them: plain data only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_training_state(resumed: dict, unbroken: dict) -> None:
    """Weights, optimizer moments, schedule and position of two checkpoints are bit-for-bit equal."""
    assert (resumed["epoch"], resumed["step"]) == (unbroken["epoch"], unbroken["step"])
    assert resumed["model"].keys() == unbroken["model"].keys()
    differ = [k for k in unbroken["model"] if not torch.equal(resumed["model"][k], unbroken["model"][k])]
    assert not differ, f"weights differ from the unbroken run in {differ}"
    for index, moments in unbroken["optimizer"]["state"].items():
        for name, value in moments.items():
            other = resumed["optimizer"]["state"][index][name]
            assert torch.equal(torch.as_tensor(other), torch.as_tensor(value)), \
                f"optimizer state {index}.{name} differs"
    assert resumed["scheduler"] == unbroken["scheduler"]


def sigint_after(target: object, name: str, calls: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``target.name`` (called once per training batch) send this process SIGINT on its ``calls``-th call;
    the trainer's own handler turns it into a checkpoint and a clean stop."""
    original = getattr(target, name)
    count = {"n": 0}

    def wrapped(*args, **kwargs):
        count["n"] += 1
        if count["n"] == calls:
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                pytest.fail("the trainer's SIGINT handler is not installed here")  # never interrupt pytest itself
            os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, wrapped)


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """One torch thread in this process, as in the script processes (the same float summation order)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


# --- FaceNet ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def facenet_unbroken(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny data and an unbroken 3-epoch run on it (in this process)."""
    root = tmp_path_factory.mktemp("facenet_resume")
    aligned = make_facenet_root(root / "aligned")
    with one_torch_thread():
        assert run_script("train_facenet.py", facenet_argv(aligned, root / "unbroken")) == 0
    return aligned, root / "unbroken"


def test_facenet_sigkill_then_sigint_resume_to_the_same_weights(facenet_unbroken: tuple[Path, Path], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    aligned, unbroken = facenet_unbroken
    out = tmp_path / "run"
    killed = Script("train_facenet.py", facenet_argv(aligned, out))
    killed.wait_for_batches(epoch=2)
    assert killed.stop(signal.SIGKILL) == -signal.SIGKILL
    saved = checkpoint(out / "last.pt")
    assert (saved["epoch"], saved["batches_done"]) == (1, 0), "killed inside epoch 2: last.pt is epoch 1's"

    interrupted = Script("train_facenet.py", facenet_argv(aligned, out, "--resume"))
    interrupted.wait_for_batches(epoch=3)
    assert interrupted.stop(signal.SIGINT) == 130, interrupted.text("err")[-2000:]
    err = interrupted.text("err")
    assert re.search(r"stopped by signal in epoch 3 after \d+ batch\(es\); "
                     r"saved .*last\.pt \(continue with --resume\)", err)
    assert err.rstrip().endswith("interrupted")
    assert "epoch 1/3" not in interrupted.text("out") and "epoch 2/3" in interrupted.text("out"), \
        "the resumed run starts at epoch 2, after the last checkpoint"
    saved = checkpoint(out / "last.pt")
    assert saved["epoch"] == 2 and 1 <= saved["batches_done"] < 10, "SIGINT saved the state inside epoch 3"

    capsys.readouterr()
    assert run_script("train_facenet.py", facenet_argv(aligned, out, "--resume")) == 0
    assert "epoch 3/3" in capsys.readouterr().out
    assert_same_training_state(checkpoint(out / "last.pt"), checkpoint(unbroken / "last.pt"))
    rows = (out / "metrics_train.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"], "one metrics row per epoch, none repeated"


# --- MTCNN, each stage ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mtcnn_unbroken(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny synthetic WIDER-layout set and unbroken runs of --stage pnet, then rnet, then onet (in this process)."""
    root = tmp_path_factory.mktemp("mtcnn_resume")
    generate_synthetic_set(root / "data" / "synthetic_faces", MTCNN_SPEC, workers=1, progress=False)
    with one_torch_thread():
        for stage in NET_NAMES:
            argv = mtcnn_argv(root / "data", root / "unbroken", stage)
            assert run_script("train_mtcnn.py", argv) == 0
    return root / "data", root / "unbroken"


def _copy_inputs(stage: str, unbroken: Path, out: Path) -> None:
    """Give a new run folder the unbroken run's earlier nets and this stage's finished sample stores (the same
    bytes a fresh run would write: a store is regenerated only when its settings or earlier nets differ)."""
    for earlier in NET_NAMES[:NET_NAMES.index(stage)]:
        (out / earlier).mkdir(parents=True)
        shutil.copy2(unbroken / earlier / "best.pt", out / earlier / "best.pt")
    for split in ("train", "val"):
        shutil.copytree(unbroken / "samples" / f"{stage}_{split}", out / "samples" / f"{stage}_{split}")


@pytest.mark.parametrize("stage", NET_NAMES)
def test_mtcnn_stage_sigkill_then_sigint_resume_to_the_same_weights(stage: str, mtcnn_unbroken: tuple[Path, Path],
                                                                    tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    data_root, unbroken = mtcnn_unbroken
    out = tmp_path / "run"
    _copy_inputs(stage, unbroken, out)
    steps = int(next(v for v in MTCNN_STAGE[stage] if v.startswith("steps_per_epoch=")).split("=")[1])

    killed = Script("train_mtcnn.py", mtcnn_argv(data_root, out, stage))
    killed.wait_for_batches(epoch=2)
    assert killed.stop(signal.SIGKILL) == -signal.SIGKILL
    saved = checkpoint(out / stage / "last.pt")
    assert (saved["epoch"], saved["batches_done"]) == (1, 0), "killed inside epoch 2: last.pt is epoch 1's"
    assert not (out / stage / "done.json").exists()

    if stage == "pnet":  # the command line's own answer to Ctrl-C: exit code 130 and a message
        interrupted = Script("train_mtcnn.py", mtcnn_argv(data_root, out, stage, "--resume"))
        interrupted.wait_for_batches(epoch=3)
        assert interrupted.stop(signal.SIGINT) == 130, interrupted.text("err")[-2000:]
        err, printed = interrupted.text("err"), interrupted.text("out")
        assert err.rstrip().endswith("interrupted")
    else:  # the same handler, the signal sent by this process to itself in the 5th batch of epoch 3
        sigint_after(training.engine, "check_finite", steps + 5, monkeypatch)
        capsys.readouterr()
        code = run_script("train_mtcnn.py", mtcnn_argv(data_root, out, stage, "--resume"))
        monkeypatch.undo()
        printed, err = capsys.readouterr()
        assert code == 130, err[-2000:]
    assert re.search(rf"stopped by signal in epoch 3 after \d+ batch\(es\); saved .*{stage}.last\.pt", err), err[-2000:]
    assert f"[{stage}] epoch 1/3" not in printed and f"[{stage}] epoch 2/3" in printed, \
        "the resumed run starts at epoch 2, after the last checkpoint"
    saved = checkpoint(out / stage / "last.pt")
    assert saved["epoch"] == 2 and 1 <= saved["batches_done"] < steps, "SIGINT saved the state inside epoch 3"
    assert stage == "pnet" or saved["batches_done"] == 5, "the batch the signal came in is finished, then it stops"

    capsys.readouterr()
    argv = mtcnn_argv(data_root, out, stage, "--resume")
    assert run_script("train_mtcnn.py", argv) == 0
    assert f"[{stage}] epoch 3/3" in capsys.readouterr().out
    assert (out / stage / "done.json").is_file()
    assert_same_training_state(checkpoint(out / stage / "last.pt"), checkpoint(unbroken / stage / "last.pt"))
    epochs = [r.split(",")[0] for r in (out / stage / "metrics_train.csv").read_text().splitlines()[1:]]
    assert epochs == ["1", "2", "3"], "one metrics row per epoch, none repeated"


def test_a_kill_between_checkpoint_writes_never_leaves_last_without_best(tmp_path, monkeypatch):
    """The epoch's two files are written best.pt first: killed after the first write, the run has the previous
    last.pt (it resumes from there) and a best.pt; never a last.pt whose best.pt is missing."""
    import training.engine as engine
    checkpointer = engine.Checkpointer(tmp_path)
    real_save, writes = engine.save_checkpoint, []

    def killed_after_first_write(path, payload):
        if writes:
            raise KeyboardInterrupt("killed")
        writes.append(Path(path).name)
        real_save(path, payload)

    monkeypatch.setattr(engine, "save_checkpoint", killed_after_first_write)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.write({"model": {}}, engine.TrainingState(epoch=1), metric=0.5)
    assert writes == ["best.pt"] and not (tmp_path / "last.pt").exists()

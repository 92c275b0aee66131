"""Training and mining on every device this machine has: the CPU always, CUDA when present.

Each test runs once per device; without CUDA its cases show as skipped, with the reason. On the CPU they
repeat, briefly, what other tests check in depth; on a GPU they are the checks of the CUDA paths: AMP and the
gradient scaler's state in checkpoints, CUDA RNG state across a resume, the margin head and the on-device
augmentation under AMP, the cascade mining on the device and the sample crops cut from its tables there.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import training.engine
from datasets.synthetic import generate_synthetic_set
from models.detector import FaceDetector
from models.mtcnn import NET_NAMES, ONet, PNet, RNet
from tests.conftest import run_script
from tests.test_reliability_resume import (
    MTCNN_SPEC,
    checkpoint,
    facenet_argv,
    make_facenet_root,
    mtcnn_argv,
    one_torch_thread,
    sigint_after,
)
from utils.area_resize import crop_resize

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                 reason="CUDA is not available on this machine"))]


@pytest.fixture(autouse=True)
def one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def mtcnn_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("devices_mtcnn")
    generate_synthetic_set(root / "synthetic_faces", MTCNN_SPEC, workers=1, progress=False)
    return root


def _losses(path: Path) -> list[float]:
    return [float(row["loss"]) for row in csv.DictReader(path.open(newline="", encoding="utf-8"))]


def _assert_scaler_matches(saved: dict, device: str) -> None:
    """AMP runs on CUDA only: there the checkpoint carries a live gradient scale, on the CPU an empty state."""
    scaler = saved["steps"]["scaler"]
    if device == "cuda":
        assert scaler["scale"] > 0 and math.isfinite(scaler["scale"])
    else:
        assert not scaler


@pytest.mark.parametrize("device", DEVICES)
def test_mtcnn_stages_train_stop_resume_and_mine_on(device: str, mtcnn_data: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    on_device = ("--set", f"runtime.device={device}", "--set", "runtime.amp=true")
    sigint_after(training.engine, "check_finite", 100 + 7, monkeypatch)  # P-Net: 100 steps per epoch, stop in epoch 2
    assert run_script("train_mtcnn.py", mtcnn_argv(mtcnn_data, out, "pnet", *on_device)) == 130
    monkeypatch.undo()
    assert checkpoint(out / "pnet" / "last.pt")["batches_done"] == 7
    for stage in NET_NAMES:  # P-Net resumes; R and O mine with the nets before them, on the device
        assert run_script("train_mtcnn.py", mtcnn_argv(mtcnn_data, out, stage, "--resume", *on_device)) == 0
        losses = _losses(out / stage / "metrics_train.csv")
        assert len(losses) == 3 and all(map(math.isfinite, losses)) and losses[-1] < losses[0], (stage, losses)
        saved = checkpoint(out / stage / "last.pt")
        assert saved["epoch"] == 3
        _assert_scaler_matches(saved, device)


# The real-photo recipe's parts: a margin head (then triplet fine-tuning) and every on-device augmentation
MARGIN_AND_AUGMENTATION = ("facenet.loss=cosface", "facenet.triplet_finetune_epochs=1", "facenet.random_scale=0.2",
                           "facenet.random_rotate=10", "facenet.greyscale=0.3", "facenet.blur=0.3",
                           "facenet.low_resolution=0.3", "facenet.random_erase=0.3")


@pytest.mark.parametrize("recipe", [(), MARGIN_AND_AUGMENTATION], ids=["triplet", "cosface_then_triplet_augmented"])
@pytest.mark.parametrize("device", DEVICES)
def test_facenet_trains_stops_and_resumes_on(device: str, recipe: tuple[str, ...], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    aligned = make_facenet_root(tmp_path / "aligned")
    out = tmp_path / "run"
    on_device = ("--set", f"runtime.device={device}", "--set", "runtime.amp=true")
    for item in recipe:
        on_device += ("--set", item)
    sigint_after(training.engine, "check_finite", 10 + 4, monkeypatch)  # 10 batches per epoch: stop inside epoch 2
    assert run_script("train_facenet.py", facenet_argv(aligned, out, *on_device)) == 130
    monkeypatch.undo()
    assert run_script("train_facenet.py", facenet_argv(aligned, out, "--resume", *on_device)) == 0
    losses = _losses(out / "metrics_train.csv")
    same_loss = losses[:2] if recipe else losses  # with the recipe epoch 3 is triplet fine-tuning: another scale
    assert len(losses) == 3 and all(map(math.isfinite, losses)) and same_loss[-1] < same_loss[0], losses
    saved = checkpoint(out / "last.pt")
    assert saved["epoch"] == 3
    _assert_scaler_matches(saved, device)


@pytest.mark.parametrize("device", DEVICES)
def test_mining_crops_from_the_device_tables_equal_the_cpu_crops(device: str) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)]
    nets = (PNet().eval(), RNet().eval(), ONet().eval())
    on_cpu = FaceDetector(*nets, device="cpu").prepare(images)
    on_device = FaceDetector(*nets, device=device).prepare(images)
    regions = np.array([[0, 0, 128, 96], [10, 5, 60, 70], [-6, -6, 20, 20], [70, 40, 128, 96]])
    for index in range(len(images)):
        assert on_device.integral(index).device.type == device
        for size in (24, 48):
            expected = crop_resize(on_cpu.integral(index), regions, size)
            assert np.array_equal(crop_resize(on_device.integral(index), regions, size), expected)

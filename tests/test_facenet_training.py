"""train_facenet.py: a reduced synthetic preset learns (held-out pair accuracy well above chance, triplet loss
falls), so do the margin losses (their head kept in last.pt, never in best.pt), an interrupted run resumes
exactly (also across the switch from a margin loss to triplet fine-tuning), bad data is handled as DESIGN.md
says, several training roots stay apart, DDP runs under torchrun."""
from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import training.facenet.task as task_module
from datasets.align_dataset import framing_margins
from datasets.landmarks import landmark_image_path, read_landmark_list
from datasets.synthetic import SyntheticSpec, generate_synthetic_set
from models.alignment import align_faces
from models.system import load_embedder
from tests.conftest import run_script
from training.facenet.augment import AugmentSettings, augment
from training.facenet.crops import FaceCrops, load_pairs_set
from training.facenet.model import architecture, build_model
from utils.errors import BadInputLog
from utils.images import read_image, write_image

TRAIN_SIZE, EVAL_SIZE = 36, 32
SPEC = SyntheticSpec(seed=5, train_scenes=0, val_scenes=0, landmark_train=0, landmark_test=0, train_identities=16,
                     images_per_identity=5, val_identities=8, val_images_per_identity=5, val_folds=2,
                     val_pairs_per_fold=20, test_identities=4, test_images_per_identity=2, test_folds=2,
                     test_pairs_per_fold=1, identity_width=(80, 90), identity_height=(90, 100), lfw_image_size=64)
TINY = ["facenet.input_size=32", "facenet.width=0.25", "facenet.embedding_size=32", "facenet.identities_per_batch=8",
        "facenet.images_per_identity=4", "facenet.lr=0.005", "facenet.warmup_steps=2", "facenet.val_batch_size=64",
        "facenet.val_loss_batches=2", f"align.train_size={TRAIN_SIZE}", f"align.eval_size={EVAL_SIZE}",
        "runtime.workers=0", "runtime.device=cpu"]

# 120 steps at the tiny preset's learning rate: from 16 training people, 80 held-out pairs that measure 0.0125 a
# pair. Shorter or faster runs learn on some CPUs and seeds and stall on others (kernels differ in rounding).
LEARNING_RUN = ("facenet.epochs=24", "facenet.batches_per_epoch=5")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _align_list(list_path: Path, out_root: Path, size: int, margin: float, rename: bool) -> None:
    """Write crops of every face in a landmark list, aligned by its true landmarks (the detector is tested
    elsewhere)."""
    for face in read_landmark_list(list_path):
        source = landmark_image_path(list_path, face)
        crop = align_faces(read_image(source), torch.tensor(face.landmarks)[None], size=size, margin=margin)[0]
        target = (out_root / source.parent.name / source.name if rename
                  else out_root / source.relative_to(list_path.parent / "identities"))
        write_image(target, crop.permute(1, 2, 0).numpy())


@pytest.fixture(scope="module")
def aligned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic set, aligned as prepare_training_data.py --align lays it out, plus awkward training data:
    an identity with one image, one with fewer than K images, and a corrupt file."""
    root = tmp_path_factory.mktemp("facenet")
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # as the generator's own worker processes do
    try:
        generate_synthetic_set(root / "synthetic", SPEC, workers=1, progress=False)
    finally:
        cv2.setNumThreads(threads)
    train_margin, eval_margin = framing_margins(TRAIN_SIZE, EVAL_SIZE, 0.0)
    _align_list(root / "synthetic" / "identity_landmarks.txt", root / "aligned" / "train", TRAIN_SIZE, train_margin,
                False)
    val = root / "synthetic" / "lfw_val"
    _align_list(val / "landmarks.txt", root / "aligned" / "lfw_val" / "images", EVAL_SIZE, eval_margin, True)
    (root / "aligned" / "lfw_val" / "pairs.txt").write_bytes((val / "pairs.txt").read_bytes())
    train = root / "aligned" / "train"
    lone, small = train / "zz_single", train / "zz_small"
    lone.mkdir()
    small.mkdir()
    for target in (lone / "1.jpg", small / "1.jpg", small / "2.jpg"):
        target.write_bytes((train / "n000001" / "0001.jpg").read_bytes())
    (train / "n000002" / "9999.jpg").write_bytes(b"\xff\xd8\xff truncated")
    return root / "aligned"


def _train(aligned: Path, out: Path, *items: str, flags: tuple[str, ...] = ()) -> int:
    """Run train_facenet.py in this process with the tiny settings plus ``items`` (``--set``) and ``flags``."""
    argv = [*flags, "--output-dir", str(out), "--set", f"paths.aligned={aligned}"]
    for item in TINY + list(items):
        argv += ["--set", item]
    return run_script("train_facenet.py", argv)


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


@contextlib.contextmanager
def _ctrl_c_in_first_batch_of(epoch: int, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """SIGINT to this process during the first batch of ``epoch`` (0-based) of the run inside the block."""
    seen = {"epoch": -1, "batches": 0}
    augment, step_for = task_module.augment, task_module.EmbedderTask.step_for

    def epoch_of(task, number):
        seen.update(epoch=number, batches=0)
        return step_for(task, number)

    def ctrl_c(*args, **kwargs):
        if seen["epoch"] == epoch:
            seen["batches"] += 1
            if seen["batches"] == 1:
                os.kill(os.getpid(), signal.SIGINT)
        return augment(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(task_module.EmbedderTask, "step_for", epoch_of)
        patch.setattr(task_module, "augment", ctrl_c)
        yield


def test_reduced_synthetic_preset_learns(aligned: Path, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="9999.jpg"):
        assert _train(aligned, tmp_path, *LEARNING_RUN) == 0
    train, val = _rows(tmp_path / "metrics_train.csv"), _rows(tmp_path / "metrics_val.csv")
    assert len(train) == len(val) == 24
    losses = [float(r["loss"]) for r in train]
    accuracy = [float(r["val_accuracy"]) for r in val]
    assert np.mean(losses[-2:]) < 0.8 * np.mean(losses[:2]), f"triplet loss should fall: {losses}"
    assert accuracy[-1] >= 0.75 and np.mean(accuracy[-3:]) > np.mean(accuracy[:3]) + 0.1, \
        f"held-out pair accuracy should rise well above chance (0.5): {accuracy}"
    assert float(train[-1]["triplet_accuracy"]) > float(train[0]["triplet_accuracy"])
    for column in ("active_fraction", "mean_pos_dist", "mean_neg_dist", "images_per_s"):
        assert column in train[0]
    for column in ("val_loss", "val_auc", "val_val", "val_eer", "val_threshold", "val_accuracy_std"):
        assert column in val[0]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["bad_inputs"] == 1, "the corrupt crop is skipped and counted"
    assert report["best_validation"]["accuracy"] == pytest.approx(max(accuracy), abs=1e-9)
    for name in ("best.pt", "last.pt", "roc.png", "loss_curves.png", "config.json"):
        assert (tmp_path / name).is_file(), name

    model = load_embedder(tmp_path / "best.pt", torch.device("cpu"))  # what the system loads
    assert model.input_size == 32 and model.embedding_size == 32
    assert _train(aligned, tmp_path, flags=("--test-only", "--flip")) == 0
    evaluation = json.loads((tmp_path / "test_lfw_val" / "eval.json").read_text())
    assert evaluation["flip"] is True and evaluation["num_folds"] == 2 and evaluation["accuracy"] > 0.6


def test_interrupted_run_resumes_exactly(aligned: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    common = ("facenet.epochs=2", "facenet.batches_per_epoch=2", "facenet.accumulate=2", "facenet.val_every=5")
    with pytest.warns(UserWarning):
        assert _train(aligned, tmp_path / "straight", *common) == 0

    with _ctrl_c_in_first_batch_of(1, monkeypatch), pytest.warns(UserWarning):  # mid-accumulation
        assert _train(aligned, tmp_path / "broken", *common) == 130
    saved = torch.load(tmp_path / "broken" / "last.pt", weights_only=True)
    assert saved["epoch"] == 1 and saved["batches_done"] == 1 and saved["pending_grads"], "stopped between two steps"
    with pytest.warns(UserWarning):
        assert _train(aligned, tmp_path / "broken", *common, flags=("--resume",)) == 0
    straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["model"]
    resumed = torch.load(tmp_path / "broken" / "last.pt", weights_only=True)["model"]
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight), \
        "the resumed run ends where the unbroken one does"
    assert [r["epoch"] for r in _rows(tmp_path / "broken" / "metrics_train.csv")] == ["1", "2"]


def test_moving_average_of_the_weights_learns_and_is_what_validation_and_best_pt_see(aligned: Path,
                                                                                    tmp_path: Path) -> None:
    with pytest.warns(UserWarning):
        assert _train(aligned, tmp_path, *LEARNING_RUN, "facenet.ema_decay=0.8") == 0
    accuracy = [float(r["val_accuracy"]) for r in _rows(tmp_path / "metrics_val.csv")]
    assert accuracy[-1] >= 0.75 and np.mean(accuracy[-3:]) > np.mean(accuracy[:3]) + 0.1, f"should learn: {accuracy}"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["best_validation"]["accuracy"] == pytest.approx(max(accuracy), abs=1e-9), \
        "best.pt holds the weights validation measured: the moving average"
    last, best = (torch.load(tmp_path / name, weights_only=True) for name in ("last.pt", "best.pt"))
    assert last["ema_updates"] == last["step"] == 120 and "trained_model" not in best
    assert any(not torch.equal(last["model"][k], last["trained_model"][k]) for k in last["model"])


@pytest.mark.parametrize("loss", ["cosface", "arcface"])
def test_margin_loss_learns_and_its_head_stays_out_of_the_embedder(aligned: Path, tmp_path: Path, loss: str) -> None:
    with pytest.warns(UserWarning, match="9999.jpg"):
        assert _train(aligned, tmp_path, f"facenet.loss={loss}", "facenet.epochs=20", "facenet.batches_per_epoch=5",
                      "facenet.optimizer=sgd", "facenet.lr=0.1", "facenet.head_scale=16", "facenet.head_margin=0.2",
                      "facenet.margin_warmup_steps=10") == 0
    train, val = _rows(tmp_path / "metrics_train.csv"), _rows(tmp_path / "metrics_val.csv")
    losses = [float(r["loss"]) for r in train]
    head_accuracy = [float(r["train_accuracy"]) for r in train]
    accuracy = [float(r["val_accuracy"]) for r in val]
    auc = [float(r["val_auc"]) for r in val]
    assert np.mean(losses[-2:]) < 0.8 * np.mean(losses[:2]), f"{loss} loss should fall: {losses}"
    assert head_accuracy[-1] > head_accuracy[0] + 0.2, f"the head should learn the training people: {head_accuracy}"
    assert max(accuracy) >= 0.65 and np.mean(auc[-3:]) > auc[0] + 0.08, \
        f"held-out pairs should separate better than at the start (chance: 0.5): {accuracy}, AUC {auc}"
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert last["modules"]["head"]["weight"].shape == (18, 32), "one weight per training identity (16 + 2 small)"
    assert "modules" not in best and "module_grads" not in best, "inference never sees the head"
    model = load_embedder(tmp_path / "best.pt", torch.device("cpu"))
    assert model.embedding_size == 32

    from bench.bench_recipes import summarize, table  # the recipe table and curve read this run as it is
    row = summarize(tmp_path)
    assert row["recipe"].startswith(f"{loss} (s 16, m 0.2)") and row["steps"] == 100
    assert row["held_out"] == pytest.approx(max(accuracy), abs=1e-9) and len(row["curve"][0]) == 20
    assert row["curve"][0] == sorted(row["curve"][0]) and f"| {tmp_path.name} | {loss}" in table([row])


def test_margin_then_triplet_resumes_exactly_across_the_switch(aligned: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    common = ("facenet.loss=arcface", "facenet.triplet_finetune_epochs=2", "facenet.epochs=4",
              "facenet.batches_per_epoch=3", "facenet.accumulate=2", "facenet.head_scale=16",
              "facenet.head_margin=0.3", "facenet.margin_warmup_steps=3")
    with pytest.warns(UserWarning):
        assert _train(aligned, tmp_path / "straight", *common) == 0
    rows = _rows(tmp_path / "straight" / "metrics_train.csv")
    assert [bool(r["train_accuracy"]) for r in rows] == [True, True, False, False], "2 arcface epochs, then triplet"
    assert [bool(r.get("triplet_accuracy")) for r in rows] == [False, False, True, True]

    with _ctrl_c_in_first_batch_of(2, monkeypatch), pytest.warns(UserWarning):  # the first triplet epoch
        assert _train(aligned, tmp_path / "broken", *common) == 130
    with pytest.warns(UserWarning):
        assert _train(aligned, tmp_path / "broken", *common, flags=("--resume",)) == 0
    straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "broken" / "last.pt", weights_only=True)
    for part in ("model", "head"):
        a = straight["model"] if part == "model" else straight["modules"]["head"]
        b = resumed["model"] if part == "model" else resumed["modules"]["head"]
        assert all(torch.equal(a[k], b[k]) for k in a), f"the resumed run's {part} ends where the unbroken one does"


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")


@pytest.mark.parametrize("setting", ["runtime.compile=true", "runtime.channels_last=true"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_compiled_or_channels_last_steps_train_as_the_eager_ones(device: str, setting: str, aligned: Path,
                                                                 tmp_path: Path) -> None:
    # A smooth loss and SGD: semi-hard mining picks other triplets after the least rounding difference, and Adam
    # divides by the root of tiny second moments; either turns kernel rounding into different steps
    common = ("facenet.epochs=1", "facenet.batches_per_epoch=3", "facenet.val_loss_batches=0", "facenet.loss=cosface",
              "facenet.optimizer=sgd", "facenet.lr=0.05", "facenet.head_scale=16", f"runtime.device={device}")
    with pytest.warns(UserWarning):
        assert _train(aligned, tmp_path / "eager", *common) == 0
    with pytest.warns(UserWarning):
        assert _train(aligned, tmp_path / "other", *common, setting) == 0
    eager = torch.load(tmp_path / "eager" / "last.pt", weights_only=True)["model"]
    other = torch.load(tmp_path / "other" / "last.pt", weights_only=True)["model"]
    assert eager.keys() == other.keys(), "the checkpoint keeps the model's own names"
    weights = [k for k in eager if eager[k].is_floating_point()]
    gap = float(torch.cat([(eager[k] - other[k]).flatten() for k in weights]).norm()
                / torch.cat([eager[k].flatten() for k in weights]).norm())
    assert gap < 0.02, f"three steps with {setting} end where three eager ones do, up to kernel rounding ({gap:.2g})"
    losses = [float(_rows(tmp_path / run / "metrics_train.csv")[0]["loss"]) for run in ("eager", "other")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-3), f"the same losses on the way: {losses}"
    faces = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    embedded = [load_embedder(tmp_path / run / "best.pt", "cpu").embed(faces) for run in ("eager", "other")]
    agreement = float(torch.nn.functional.cosine_similarity(embedded[0], embedded[1]).min())
    assert agreement > 0.95, f"its best.pt loads as a plain embedder and embeds as the eager run's ({agreement:.3f})"


def test_several_training_roots_keep_their_people_apart(aligned: Path, tmp_path: Path) -> None:
    from config import load_config
    from training.facenet.crops import load_training_crops
    config = load_config(None, [f"paths.aligned={aligned}", *TINY])
    one, one_classes = load_training_crops(config, config.train_roots(), 0, BadInputLog(), False)
    config.facenet.train_images = [str(aligned / "train"), str(aligned / "train")]
    two, two_classes = load_training_crops(config, config.train_roots(), 0, BadInputLog(), False)
    assert len(two) == 2 * len(one) and len(two_classes) == 2 * len(one_classes)
    assert two_classes[0] == f"0/{one_classes[0]}" and two_classes[len(one_classes)] == f"1/{one_classes[0]}"
    assert set(two.labels[len(one):].tolist()) == {label + len(one_classes) for label in set(one.labels.tolist())}


def test_triplet_finetuning_needs_a_margin_loss_first() -> None:
    from config import load_config
    from utils.errors import ConfigError
    with pytest.raises(ConfigError, match="triplet_finetune_epochs"):
        load_config(None, ["facenet.triplet_finetune_epochs=2"])
    with pytest.raises(ConfigError, match="leaves no epoch"):
        load_config(None, ["facenet.loss=cosface", "facenet.epochs=3", "facenet.triplet_finetune_epochs=3"])


def test_bad_inputs_and_small_identities(aligned: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _train(aligned, tmp_path / "strict", "facenet.epochs=1", "runtime.strict=true") == 2
    assert "9999.jpg" in capsys.readouterr().err
    with pytest.warns(UserWarning):
        assert _train(aligned, tmp_path / "skip", "facenet.epochs=1", "facenet.small_identities=skip",
                      "facenet.val_loss_batches=0") == 0
    out = capsys.readouterr().out
    assert "1 single-image identities left out" in out and "1 identities with fewer than K images left out" in out
    crops = FaceCrops([aligned / "train" / "n000002" / "9999.jpg", aligned / "train" / "n000002" / "0001.jpg"], [0, 0],
                      16, preload=False)
    batch = crops.__getitems__([0, 1])
    assert batch.valid.tolist() == [False, True] and "9999.jpg" in batch.errors[0][0]
    log = BadInputLog()
    pairs = load_pairs_set(aligned / "lfw_val" / "pairs.txt", aligned / "lfw_val" / "images", 16, log)
    assert pairs.dropped == 0 and pairs.num_folds == 2 and sorted(set(pairs.folds.tolist())) == [0, 1]


def test_augment_crops_flips_and_jitters_on_the_batch() -> None:
    torch.manual_seed(0)
    images = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6).to(torch.uint8)
    out = augment(images, 4, AugmentSettings(random_crop=True, flip=False))
    assert out.shape == (2, 3, 4, 4) and out.dtype == torch.float32
    for b in range(2):
        windows = [images[b, :, y:y + 4, x:x + 4].float() for y in range(3) for x in range(3)]
        assert any(torch.equal(out[b], w) for w in windows), "a random crop is a window of its own image"
    centre = augment(images, 4, AugmentSettings(random_crop=False, flip=False))
    assert torch.equal(centre, images[:, :, 1:5, 1:5].float())
    flips = torch.stack([augment(images[:1], 6, AugmentSettings(random_crop=False, flip=True)) for _ in range(20)])
    assert (any(torch.equal(f[0], images[0].float().flip(-1)) for f in flips)
            and any(torch.equal(f[0], images[0].float()) for f in flips))
    jittered = augment(images, 6, AugmentSettings(random_crop=False, flip=False, jitter=0.4))
    assert jittered.min() >= 0 and jittered.max() <= 255 and not torch.equal(jittered, images.float())


def _ddp_process(rank: int, port: int, argv: list[str]) -> None:
    """One process of a 2-process job with the environment torchrun sets."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    code = run_script("train_facenet.py", argv)
    if code:
        raise SystemExit(code)


TWO_GPUS = pytest.mark.skipif(torch.cuda.device_count() < 2,
                              reason="NCCL needs one GPU per process: fewer than 2 CUDA devices here")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=TWO_GPUS)], ids=["gloo_cpu", "nccl_cuda"])
def test_ddp_with_two_processes(device: str, aligned: Path, tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = ["--output-dir", str(tmp_path), "--set", f"paths.aligned={aligned}", "--set", "facenet.epochs=2",
            "--set", "facenet.batches_per_epoch=4", "--set", "facenet.preload=false",
            "--set", "facenet.loss=cosface", "--set", "facenet.triplet_finetune_epochs=1"]  # the head replicated
    for item in TINY + [f"runtime.device={device}", "runtime.amp=true"]:  # AMP acts on CUDA only
        argv += ["--set", item]
    # spawn, not fork: once an earlier test in this process made autograd start its device threads (the int8
    # export test does), a forked child cannot run backward ("autograd's threading ... fork-based multiprocessing").
    torch.multiprocessing.start_processes(_ddp_process, args=(port, argv), nprocs=2, start_method="spawn")
    rows = _rows(tmp_path / "metrics_train.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"] and int(rows[-1]["step"]) == 4, "4 batches shared by 2 processes"
    assert (tmp_path / "best.pt").is_file() and len(_rows(tmp_path / "metrics_val.csv")) == 2
    assert "bad_inputs" in json.loads((tmp_path / "report.json").read_text())
    assert rows[0]["train_accuracy"] and rows[1]["triplet_accuracy"], "a cosface epoch, then a triplet epoch"


def test_checkpoint_records_the_input_standardization(tmp_path: Path) -> None:
    """The system rebuilds the embedder with the standardization it was trained with (per_image here)."""
    from config import load_config
    from utils.checkpoint import save_checkpoint
    config = load_config(None, ["facenet.standardization=per_image", "facenet.input_size=32", "facenet.width=0.25",
                                "facenet.embedding_size=16"])
    model = build_model(config.facenet)
    save_checkpoint(tmp_path / "e.pt", {"model": model.state_dict(), "embedder": architecture(config)})
    loaded = load_embedder(tmp_path / "e.pt", torch.device("cpu"))
    assert loaded.standardization == "per_image"
    images = torch.rand(2, 3, 32, 32) * 255
    torch.testing.assert_close(loaded.embed(images), loaded.embed(images * 0.4 + 10), rtol=1e-4, atol=1e-4)

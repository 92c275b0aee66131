"""The training engine on a toy problem: the loss falls, an extra trainable module (a classification head over
the training identities) is optimised, saved apart from the model and restored, the step may change between
epochs, a run stopped by a signal inside an epoch and resumed ends bit for bit where an unbroken one does, and
the moving average of the weights (``ema_decay``) is the one validated, saved as the model and resumed."""
from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from training.engine import EpochLoader, OptimSettings, StepFn, StepOutput, Task, Trainer, unwrap
from training.run import open_run
from utils.distributed import DistInfo
from utils.errors import DataError
from utils.seed import seed_everything

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = DistInfo(0, 1, 0, torch.device("cpu"))


class EpochBatches(torch.utils.data.Sampler[list[int]]):
    """Batches in an order drawn from (seed, epoch), as the toolkit's samplers draw theirs."""

    def __init__(self, size: int, batch: int, seed: int = 0) -> None:
        self.size, self.batch, self.seed, self.epoch = size, batch, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size // self.batch

    def __iter__(self) -> Iterator[list[int]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
        for i in range(len(self)):
            yield order[i * self.batch:(i + 1) * self.batch].tolist()


@dataclass
class ToySection:
    epochs: int = 4
    optimizer: str = "adam"
    lr: float = 0.05
    accumulate: int = 2
    warmup_steps: int = 2
    ema_decay: float = 0.0


@dataclass
class ToyConfig:
    toy: ToySection = field(default_factory=ToySection)


class ToyTask(Task):
    """Embed 8-d points with ``model`` and classify them into 4 identities with the extra ``head``: cross-entropy
    in the first two epochs, then a centre-pull loss on the embeddings (a stand-in for triplet fine-tuning).
    Noise from the global RNG makes an exact resume depend on the restored RNG state."""

    def __init__(self, trainer: Trainer, interrupt_at: int = 0) -> None:
        self.trainer, self.interrupt_at, self.calls = trainer, interrupt_at, 0
        self.phases: list[str] = []

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)  # the engine finishes this batch, saves, and stops
        return F.normalize(self.trainer.model(x + 0.05 * torch.randn_like(x)), dim=1)

    def margin_step(self, batch: list[torch.Tensor]) -> StepOutput:
        x, y = batch
        logits = self.trainer.modules["head"](self._embed(x))
        loss = F.cross_entropy(logits * 8.0, y)
        return StepOutput(loss, {"accuracy": (logits.argmax(1) == y).float().mean()}, len(y))

    def pull_step(self, batch: list[torch.Tensor]) -> StepOutput:
        x, y = batch
        e = self._embed(x)
        centres = F.normalize(unwrap(self.trainer.modules["head"]).weight[y], dim=1).detach()
        loss = (1 - (e * centres).sum(1)).mean()
        return StepOutput(loss, {}, len(y))

    def step_for(self, epoch: int) -> StepFn:
        self.phases.append("margin" if epoch < 2 else "pull")
        return self.margin_step if epoch < 2 else self.pull_step


def toy_data(seed: int = 0) -> TensorDataset:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (4, 8))
    labels = rng.integers(0, 4, 96)
    points = centres[labels] + rng.normal(0, 0.3, (96, 8))
    return TensorDataset(torch.tensor(points, dtype=torch.float32), torch.tensor(labels))


def toy_trainer(folder: Path, resume: bool = False, ema_decay: float = 0.0) -> Trainer:
    """The same model, head, data and settings each call (seeded), in run folder ``folder``."""
    config = ToyConfig(ToySection(ema_decay=ema_decay))
    seed_everything(0)
    model, head = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 6)), nn.Linear(6, 4, bias=False)
    run = open_run(folder, "toy", config, resume=resume)
    data = EpochLoader(toy_data(), EpochBatches(96, 12), seed=0)
    return Trainer(model, OptimSettings.of(config.toy), data, dist_info=CPU, run=run, modules={"head": head},
                   amp=False)


def test_the_loss_falls_and_the_step_may_change_between_epochs(tmp_path: Path) -> None:
    trainer = toy_trainer(tmp_path)
    task = ToyTask(trainer)
    state = trainer.fit(task)
    assert (state.epoch, state.step) == (4, 4 * 8 // 2)
    assert task.phases == ["margin", "margin", "pull", "pull"]
    rows = trainer.run.logger.rows("train")
    losses = [row["loss"] for row in rows]
    assert losses[1] < 0.8 * losses[0], f"cross-entropy should fall: {losses}"
    assert rows[1]["accuracy"] > 0.8 and "accuracy" not in rows[3]
    assert losses[3] < losses[2], f"the second phase's loss should fall too: {losses}"


def test_the_extra_module_is_trained_saved_apart_from_the_model_and_restored(tmp_path: Path) -> None:
    trainer = toy_trainer(tmp_path)
    before = trainer.modules["head"].weight.detach().clone()
    trainer.fit(ToyTask(trainer))
    head = trainer.modules["head"].weight.detach()
    assert not torch.equal(before, head), "the head's parameters are in the optimizer"
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert torch.equal(last["modules"]["head"]["weight"], head)
    assert "modules" not in best and set(best["model"]) == set(last["model"]) == {"0.weight", "0.bias",
                                                                                  "2.weight", "2.bias"}

    resumed = toy_trainer(tmp_path, resume=True)
    assert torch.equal(resumed.modules["head"].weight, head), "restored from last.pt"
    assert resumed.state.epoch == 4


@pytest.mark.parametrize("ema_decay", [0.0, 0.8], ids=["trained weights", "moving average"])
def test_a_run_stopped_by_a_signal_mid_epoch_resumes_bit_for_bit(tmp_path: Path, ema_decay: float) -> None:
    unbroken = toy_trainer(tmp_path / "unbroken", ema_decay=ema_decay)
    unbroken.fit(ToyTask(unbroken))

    broken = toy_trainer(tmp_path / "broken", ema_decay=ema_decay)
    with pytest.raises(KeyboardInterrupt):
        broken.fit(ToyTask(broken, interrupt_at=8 + 3))  # the third batch of epoch 2: between two steps
    saved = torch.load(tmp_path / "broken" / "last.pt", weights_only=True)
    assert (saved["epoch"], saved["batches_done"]) == (1, 3) and saved["module_grads"]["head"], "mid-accumulation"
    resumed = toy_trainer(tmp_path / "broken", resume=True, ema_decay=ema_decay)
    task = ToyTask(resumed)
    resumed.fit(task)
    assert task.phases == ["margin", "pull", "pull"], "the resumed run starts in epoch 2, with that epoch's step"

    final = [torch.load(tmp_path / name / "last.pt", weights_only=True) for name in ("unbroken", "broken")]
    for key in ("model", "modules", *(("trained_model",) if ema_decay else ())):
        flat = [dict(_leaves(f[key])) for f in final]
        assert flat[0].keys() == flat[1].keys()
        assert all(torch.equal(flat[0][k], flat[1][k]) for k in flat[0]), key
    assert final[0]["scheduler"] == final[1]["scheduler"] and final[0]["step"] == final[1]["step"]
    rows = [open(tmp_path / name / "metrics_train.csv").read().splitlines() for name in ("unbroken", "broken")]
    assert [r.split(",")[0] for r in rows[1]] == ["epoch", "1", "2", "3", "4"]
    assert [r.split(",")[3] for r in rows[0]] == [r.split(",")[3] for r in rows[1]], "the same losses"


def _leaves(tree: dict, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


class RecordingTask(ToyTask):
    """The toy task, keeping the model's weights as each batch finds them."""

    def __init__(self, trainer: Trainer) -> None:
        super().__init__(trainer)
        self.seen: list[torch.Tensor] = []

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(_flat(self.trainer.model))
        return super()._embed(x)


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in unwrap(model).parameters()])


def test_the_moving_average_of_the_weights_is_validated_and_saved_as_the_model(tmp_path: Path) -> None:
    trainer = toy_trainer(tmp_path, ema_decay=0.8)
    task = RecordingTask(trainer)
    state = trainer.fit(task)
    # the weights after each optimizer step (every second batch): those the next batch found, then the final ones
    after_steps = task.seen[2::2] + [_flat(trainer.model)]
    assert len(after_steps) == state.step == 16
    expected = after_steps[0]
    for weights in after_steps[1:]:
        expected = 0.8 * expected + 0.2 * weights
    average = _flat(trainer.eval_model)
    assert torch.allclose(average, expected, atol=1e-6) and not torch.allclose(average, after_steps[-1], atol=1e-3)

    last = torch.load(tmp_path / "last.pt", weights_only=True)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert torch.equal(torch.cat([v.flatten() for v in last["model"].values()]), average), "inference reads the average"
    assert torch.equal(torch.cat([v.flatten() for v in last["trained_model"].values()]), after_steps[-1])
    assert last["ema_updates"] == 16 and "trained_model" not in best and best["model"].keys() == last["model"].keys()
    with pytest.raises(DataError, match="moving average"):
        toy_trainer(tmp_path, resume=True)  # resumed without the average it was trained with: refused

"""The training engine both trainers share: ``Trainer.fit`` runs the epochs of a :class:`Task`.

Modelled on torchvision's ``references/classification/train.py`` and insightface's ``arcface_torch``: the
task supplies the model, any extra trainable modules (a margin-softmax head over the training identities,
say: its parameters join the optimizer, it is wrapped for DDP like the model, and its state is saved in
``last.pt`` under ``modules`` and restored on resume, never mixed into the ``model`` entry that
``models.system.load_embedder`` and the export read), the per-batch step (forward pass and loss; the task
may hand a different one for each epoch, e.g. margin loss first, then triplet fine-tuning), validation and
the epoch summary. The engine owns the rest, once: optimizer and schedule, AMP, gradient accumulation and
clipping, DDP, the non-finite loss guard (every process agrees to skip or stop), metric rows (written
before the checkpoint), ``best.pt``/``last.pt``, early stopping, and a clean stop on SIGINT/SIGTERM.

With ``ema_decay`` the engine also keeps an exponential moving average of the model's weights (and batch-norm
statistics), updated after every optimizer step (``torch.optim.swa_utils.AveragedModel``, as torchvision's
``--model-ema``): the task validates it, and it is the ``model`` entry of the checkpoints, so ``best.pt`` and
everything that reads it get the averaged weights; the trained weights go to ``trained_model``, for resume.

Resume is exact: the checkpoint holds model (and its average), modules, optimizer, scheduler, gradient scaler,
every RNG state and the gradients accumulated since the last optimizer step; samplers draw their order from (seed,
epoch), and a checkpoint written on a signal inside an epoch records how many of its batches were
trained, which :class:`EpochLoader` skips on resume. Its data loader owns its generator, so creating an
iterator does not draw from the global RNG that augmentation uses. Settings that may change on resume
(``training.run``) take effect from the resumed step: the optimizer's learning rate, weight decay and
momentum come from the current settings, not from the checkpoint.
"""
from __future__ import annotations

import itertools
import math
import signal
import sys
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, Sampler

from training.run import Run
from utils.checkpoint import load_model_state, save_checkpoint
from utils.distributed import DistInfo, all_reduce_mean
from utils.errors import DataError, ToolkitError
from utils.seed import get_rng_state, set_rng_state


class NonFiniteLossError(ToolkitError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# --- optimizer and schedule -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptimSettings:
    """How a model is optimised: the fields a trainer's config section shares (``facenet``, ``mtcnn.<stage>``)."""

    epochs: int
    optimizer: str = "adam"  # sgd | adam | adamw
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # SGD only
    schedule: str = "cosine"  # cosine | step | constant, per optimizer step, after linear warm-up
    warmup_steps: int = 0
    accumulate: int = 1  # gradient accumulation: optimizer steps every this many batches
    clip_grad_norm: float = 0.0
    early_stopping_patience: int = 0  # stop after this many validations without a better metric; 0 = never
    ema_decay: float = 0.0  # validate and save a moving average of the weights with this decay per step; 0 = off

    @classmethod
    def of(cls, section: Any) -> OptimSettings:
        """The settings of a config section with (some of) these fields; the others keep their defaults."""
        return cls(**{f.name: getattr(section, f.name) for f in fields(cls) if hasattr(section, f.name)})


def build_optimizer(params: Any, name: str, lr: float, weight_decay: float = 0.0,
                    momentum: float = 0.9) -> torch.optim.Optimizer:
    """SGD (with momentum) or Adam/AdamW by name."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ToolkitError(f"unknown optimizer {name!r} (sgd, adam, adamw)")


def build_scheduler(optimizer: torch.optim.Optimizer, name: str, total_steps: int, warmup_steps: int = 0,
                    milestones: tuple[float, ...] = (0.5, 0.75),
                    gamma: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step schedule: ``cosine``, ``step`` (milestones as fractions of training) or ``constant``, after
    linear warm-up."""
    total_steps = max(1, total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if name == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if name == "step":
            return gamma ** sum(progress >= m for m in milestones)
        if name == "constant":
            return 1.0
        raise ToolkitError(f"unknown schedule {name!r} (cosine, step, constant)")

    factor(0)  # validates the name before training starts
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def apply_settings(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
                   settings: OptimSettings) -> None:
    """Put the current learning rate, weight decay and momentum into an optimizer and schedule just loaded from a
    checkpoint (which carry the values they were saved with): the schedule continues at its step from the new
    base rate. With unchanged settings every value is the one already there."""
    for group in optimizer.param_groups:
        group["initial_lr"] = settings.lr
        group["weight_decay"] = settings.weight_decay
        if "momentum" in group:
            group["momentum"] = settings.momentum
    scheduler.base_lrs = [settings.lr] * len(optimizer.param_groups)
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


# --- plumbing of one step ---------------------------------------------------------------------------------------


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module inside DistributedDataParallel (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def check_finite(loss: Tensor, where: str, skip: bool) -> bool:
    """True when ``loss`` is finite in every process; otherwise False with ``skip`` (the batch is skipped, with a
    warning naming it) or NonFiniteLossError. Under DDP the processes agree first, so that all of them skip the
    same batch (one process skipping a backward pass the others run would leave them waiting forever)."""
    finite_here = torch.isfinite(loss).all()
    finite = finite_here
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        flag = finite_here.to(torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        finite = flag.bool()
    if finite:
        return True
    value = "in another process" if finite_here else f"{loss.item()}"
    if skip:
        warnings.warn(f"skipped a batch with a non-finite loss ({value}) at {where}", RuntimeWarning, stacklevel=2)
        return False
    raise NonFiniteLossError(f"non-finite loss ({value}) at {where}; stopped, the last checkpoint is kept "
                             "(lower the learning rate, or pass --skip-nonfinite to skip such batches)")


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's decision, on every process (the value itself in a single process)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device if device.type == "cuda" else "cpu")
    dist.broadcast(value, src=0)
    return bool(value.item())


class StepRunner:
    """Backward and optimizer step with AMP (on CUDA), gradient accumulation and optional clipping."""

    def __init__(self, optimizer: torch.optim.Optimizer, scheduler: Any, device: torch.device, amp: bool,
                 accumulate: int = 1, clip_grad_norm: float = 0.0) -> None:
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.device = device
        self.amp = amp and device.type == "cuda"
        self.accumulate = max(1, accumulate)
        self.clip_grad_norm = clip_grad_norm
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self._micro = 0

    def autocast(self) -> torch.autocast:
        """Mixed-precision context for the forward pass (a no-op on the CPU)."""
        return torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp)

    def backward(self, loss: Tensor, parameters: Any) -> bool:
        """Accumulate gradients of ``loss``; step the optimizer every ``accumulate`` calls. True when it stepped."""
        self.scaler.scale(loss / self.accumulate).backward()
        self._micro += 1
        if self._micro % self.accumulate:
            return False
        if self.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(parameters, self.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        return True

    def state_dict(self) -> dict[str, Any]:
        """The gradient scaler's state and the batches accumulated since the last optimizer step."""
        return {"scaler": self.scaler.state_dict(), "micro": self._micro}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; a scaler saved without AMP (on the CPU) leaves a fresh one when AMP is on now."""
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self._micro = state["micro"]


def pending_gradients(model: nn.Module) -> dict[str, Tensor]:
    """Gradients accumulated but not yet applied (gradient accumulation between optimizer steps), by parameter."""
    return {name: p.grad.detach().clone() for name, p in unwrap(model).named_parameters() if p.grad is not None}


def restore_gradients(model: nn.Module, grads: dict[str, Tensor]) -> None:
    """Put back gradients saved by :func:`pending_gradients` (an exact resume in mid-accumulation)."""
    params = dict(unwrap(model).named_parameters())
    for name, grad in grads.items():
        params[name].grad = grad.to(params[name].device)


def buffer_snapshot(model: nn.Module) -> dict[str, Tensor]:
    """Copies of the model's buffers (batch-norm running statistics), taken before a forward pass so that a batch
    skipped for a non-finite loss can leave them as they were (its forward pass already moved them)."""
    return {name: buffer.detach().clone() for name, buffer in unwrap(model).named_buffers()}


def restore_buffers(model: nn.Module, saved: dict[str, Tensor]) -> None:
    """Put back buffers saved by :func:`buffer_snapshot`."""
    buffers = dict(unwrap(model).named_buffers())
    with torch.no_grad():
        for name, value in saved.items():
            buffers[name].copy_(value)


# --- data -----------------------------------------------------------------------------------------------------


def loader_generator(seed: int) -> torch.Generator:
    """A seeded generator for a DataLoader: iterators then draw their worker seeds from it, not from the global
    RNG, so a run resumed inside an epoch draws the same augmentation numbers as an unbroken one."""
    return torch.Generator().manual_seed(seed)


class ResumableBatches(Sampler[list[int]]):
    """A batch sampler's batches for the current epoch, minus the first ``skip`` (trained before an interruption)."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler
        self.skip = 0

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)

    def __iter__(self) -> Iterator[list[int]]:
        return itertools.islice(iter(self.sampler), self.skip, None)


class EpochLoader:
    """The batches of one epoch at a time: a batch sampler whose order follows (seed, epoch) (``set_epoch``), read
    by a DataLoader that owns its generator; an epoch can start after its first ``skip`` batches (a resume)."""

    def __init__(self, dataset: Dataset, sampler: Any, seed: int, **loader_args: Any) -> None:
        self.sampler = sampler
        self.batches = ResumableBatches(sampler)
        self.loader = DataLoader(dataset, batch_sampler=self.batches, generator=loader_generator(seed), **loader_args)

    def __len__(self) -> int:
        """Batches in a whole epoch (of this process)."""
        return len(self.sampler)

    def epoch(self, epoch: int, skip: int = 0) -> DataLoader:
        """The loader set to yield epoch ``epoch`` from its batch ``skip`` on."""
        self.sampler.set_epoch(epoch)
        self.batches.skip = skip
        return self.loader


# --- statistics -----------------------------------------------------------------------------------------------


class StepOutput(NamedTuple):
    """What a task's step returns: the loss to minimise, statistics to average over the epoch (0-dim tensors,
    summed on the device: no sync per batch), and how many samples the batch held (for the throughput)."""

    loss: Tensor
    stats: dict[str, Tensor]
    samples: int


StepFn = Callable[[Any], StepOutput]


class StatSums:
    """Running sums of the loss and statistics of the trained batches, kept on the device (one sync per epoch),
    and the count of batches skipped for a non-finite loss."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.batches = 0
        self.skipped = 0

    def add(self, loss: Tensor, stats: Mapping[str, Tensor]) -> None:
        """Add one batch: its loss (as ``loss``) and every statistic."""
        values = {"loss": loss, **stats}
        for key, value in values.items():
            value = value.detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.batches += 1

    def state_dict(self) -> dict[str, Any]:
        """The sums so far (saved with a checkpoint written inside an epoch, so the epoch's row covers all of it)."""
        return {"sums": {k: v.cpu() for k, v in self.sums.items()}, "batches": self.batches, "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        """Continue from :meth:`state_dict`."""
        self.sums = {k: v.to(device) for k, v in state["sums"].items()}
        self.batches, self.skipped = int(state["batches"]), int(state["skipped"])

    def reduced(self, device: torch.device) -> tuple[dict[str, float], float]:
        """(sums, batches), each averaged over the processes (the values themselves in a single process); reduced
        on ``device``, the process's training device, because NCCL reduces CUDA tensors only (also when no batch
        was trained, e.g. every one skipped as non-finite)."""
        values = [value.to(device, torch.float64) for value in self.sums.values()]
        stacked = torch.stack([*values, torch.tensor(float(self.batches), dtype=torch.float64, device=device)])
        reduced = all_reduce_mean(stacked).tolist()
        return dict(zip(self.sums, reduced[:-1])), reduced[-1]


def means(sums: Mapping[str, float], batches: float) -> dict[str, float]:
    """Each summed statistic divided by the number of batches (the default epoch summary)."""
    return {key: value / max(batches, 1.0) for key, value in sums.items()}


# --- the task ---------------------------------------------------------------------------------------------------


class Task(ABC):
    """What a trainer supplies to the engine. Override :meth:`step_for` (required) and what else the task needs."""

    unit = "samples"  # the throughput column is <unit>_per_s

    @abstractmethod
    def step_for(self, epoch: int) -> StepFn:
        """The per-batch step of epoch ``epoch`` (0-based): batch -> :class:`StepOutput`; it may differ by epoch."""

    def validate(self, epoch: int) -> tuple[float | None, dict[str, Any]]:
        """After ``epoch`` epochs: (metric, higher is better; None when not validated here) and the row of
        ``metrics_val.csv`` (empty: no row)."""
        return None, {}

    def summarize(self, sums: dict[str, float], batches: float) -> dict[str, float]:
        """The epoch's training figures from the summed loss and statistics (default: their means)."""
        return means(sums, batches)

    def on_best(self, epoch: int) -> None:
        """Called after ``best.pt`` was written for a better metric (e.g. to plot that validation); default: nothing."""
        return None

    def checkpoint_extra(self) -> dict[str, Any]:
        """Entries added to every checkpoint (e.g. what rebuilds the model for inference)."""
        return {}

    def describe(self, epoch: int, train: dict[str, float], val: dict[str, Any]) -> str:
        """The console line of a finished epoch (``epoch`` counts from 1)."""
        return f"epoch {epoch}: loss {train.get('loss', float('nan')):.4f}"


# --- checkpoints ------------------------------------------------------------------------------------------------


@dataclass
class TrainingState:
    """What the loop needs to continue: where it is, the best validation metric so far, and how many
    validations since it improved (early stopping)."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    best_metric: float = -math.inf
    batches_done: int = 0  # batches of epoch ``epoch`` already trained (a checkpoint written inside an epoch)
    stale: int = 0  # validations without a better metric


class Checkpointer:
    """Writes ``last.pt`` (the full state) and, when the validation metric improves, ``best.pt`` (the same
    without the extra modules' state and the trained weights behind a moving average: only what inference
    needs beside it)."""

    def __init__(self, run_dir: str | Path, enabled: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled

    @property
    def last_path(self) -> Path:
        """The full state of the latest checkpoint (what ``--resume`` reads)."""
        return self.run_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        """The checkpoint of the best validation metric (what inference reads)."""
        return self.run_dir / "best.pt"

    def write(self, payload: dict[str, Any], state: TrainingState, metric: float | None = None) -> bool:
        """Save ``payload`` to last.pt, and to best.pt when ``metric`` beats the best (or when there is no metric
        and no best.pt yet); True when the best improved (``state.best_metric`` is updated)."""
        improved = metric is not None and metric > state.best_metric
        if improved:
            state.best_metric = metric
        if not self.enabled:
            return improved
        payload = {**payload, "best_metric": state.best_metric, "metric": metric}
        # best.pt first: a run killed between the two writes resumes from the previous last.pt and, resuming
        # exactly, rewrites the same best.pt; the other order could leave a last.pt whose best.pt was never written.
        if improved or (metric is None and not self.best_path.exists()):
            save_checkpoint(self.best_path, {k: v for k, v in payload.items()
                                             if k not in ("modules", "module_grads", "trained_model")})
        save_checkpoint(self.last_path, payload)
        return improved


class StopOnSignal:
    """Turns the first SIGINT/SIGTERM into a flag so the loop can checkpoint and exit cleanly; a second one kills."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopOnSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# --- the trainer ------------------------------------------------------------------------------------------------


def _wrap(module: nn.Module, info: DistInfo) -> nn.Module:
    """``module`` in DistributedDataParallel when the job has several processes and it has trainable parameters."""
    if not info.distributed or not any(p.requires_grad for p in module.parameters()):
        return module
    return nn.parallel.DistributedDataParallel(module,
                                               device_ids=[info.device.index] if info.device.type == "cuda" else None)


class Trainer:
    """The fit loop of one model (and its extra trainable ``modules``) over an :class:`EpochLoader`.

    ``run`` is the run folder opened by :func:`training.run.open_run` (None: nothing is logged or written, as in
    a benchmark); when it resumes, the state of its ``last.pt`` is restored here. ``trainer.model`` and
    ``trainer.modules`` are the (DDP-wrapped) modules the task's steps call.
    """

    def __init__(self, model: nn.Module, settings: OptimSettings, data: EpochLoader, *, dist_info: DistInfo,
                 run: Run | None = None, modules: Mapping[str, nn.Module] | None = None, amp: bool = True,
                 skip_nonfinite: bool = False) -> None:
        self.settings = settings
        self.data = data
        self.dist = dist_info
        self.device = dist_info.device
        self.run = run
        self.skip_nonfinite = skip_nonfinite
        self.model = _wrap(model.to(self.device), dist_info)
        self.modules = {name: _wrap(module.to(self.device), dist_info) for name, module in (modules or {}).items()}
        params = [p for m in (self.model, *self.modules.values()) for p in m.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(params, settings.optimizer, settings.lr, settings.weight_decay,
                                         settings.momentum)
        total_steps = math.ceil(settings.epochs * len(data) / settings.accumulate)
        self.scheduler = build_scheduler(self.optimizer, settings.schedule, total_steps,
                                         min(settings.warmup_steps, total_steps // 4))
        self.steps = StepRunner(self.optimizer, self.scheduler, self.device, amp, settings.accumulate,
                                settings.clip_grad_norm)
        self.ema = (AveragedModel(unwrap(self.model), multi_avg_fn=get_ema_multi_avg_fn(settings.ema_decay),
                                  use_buffers=True) if settings.ema_decay > 0 else None)
        self.checkpointer = Checkpointer(run.folder if run else ".", enabled=run is not None and run.is_main)
        self.state = TrainingState()
        self.sums = StatSums()  # of the epoch in progress (restored with a checkpoint written inside it)
        if run is not None and run.checkpoint is not None:
            self._restore(run.checkpoint, run.folder / "last.pt")

    def autocast(self) -> torch.autocast:
        """Mixed-precision context for a step's forward pass (a no-op on the CPU or without AMP)."""
        return self.steps.autocast()

    @property
    def eval_model(self) -> nn.Module:
        """The model to validate: the moving average of the weights with ``ema_decay``, else the trained model."""
        return self.ema.module if self.ema is not None else self.model

    def _trained(self) -> list[nn.Module]:
        return [self.model, *self.modules.values()]

    def _parameters(self) -> Iterator[nn.Parameter]:
        return (p for group in self.optimizer.param_groups for p in group["params"])

    # --- checkpoints ----------------------------------------------------------------------------------------
    def _payload(self, extra: dict[str, Any]) -> dict[str, Any]:
        run = self.run
        payload = {
            "kind": run.kind if run else "",
            # what inference reads: the moving average when there is one (the trained weights then in trained_model)
            "model": (self.ema.module if self.ema is not None else unwrap(self.model)).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "steps": self.steps.state_dict(),
            "epoch": self.state.epoch,
            "step": self.state.step,
            "batches_done": self.state.batches_done,
            "pending_grads": pending_gradients(self.model),
            "stale_validations": self.state.stale,
            "rng": get_rng_state(),
            "config": run.config if run else {},
            **extra,
        }
        if self.ema is not None:  # training resumes from the trained weights
            payload["trained_model"] = unwrap(self.model).state_dict()
            payload["ema_updates"] = int(self.ema.n_averaged)
        if self.modules:
            payload["modules"] = {name: unwrap(m).state_dict() for name, m in self.modules.items()}
            payload["module_grads"] = {name: pending_gradients(m) for name, m in self.modules.items()}
        return payload

    def save(self, extra: dict[str, Any], metric: float | None = None) -> bool:
        """Write last.pt (and best.pt when ``metric`` improves on the best); True when it improved."""
        return self.checkpointer.write(self._payload(extra), self.state, metric)

    def _restore(self, checkpoint: dict[str, Any], path: Path) -> None:
        """Everything :meth:`save` wrote; the optimizer then takes the current settings (see :func:`apply_settings`)."""
        trained = checkpoint.get("trained_model")
        if (trained is None) != (self.ema is None):
            raise DataError(path, f"the run was trained {'without' if trained is None else 'with'} a moving average "
                                  f"of its weights and is resumed {'with' if trained is None else 'without'} one; "
                                  "keep ema_decay on (or off) as it was, or start a new run")
        load_model_state(unwrap(self.model), checkpoint["model"] if trained is None else trained, path)
        if self.ema is not None:
            load_model_state(self.ema.module, checkpoint["model"], path)
            self.ema.n_averaged.fill_(int(checkpoint["ema_updates"]))
        saved_modules = checkpoint.get("modules", {})
        for name, module in self.modules.items():
            if name not in saved_modules:
                raise DataError(path, f"the checkpoint holds no state of the trainable module {name!r} (it was "
                                      "trained without it); start a new run")
            load_model_state(unwrap(module), saved_modules[name], path)
            restore_gradients(module, checkpoint.get("module_grads", {}).get(name, {}))
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        apply_settings(self.optimizer, self.scheduler, self.settings)
        self.steps.load_state_dict(checkpoint["steps"])
        restore_gradients(self.model, checkpoint.get("pending_grads", {}))
        set_rng_state(checkpoint["rng"])
        self.state = TrainingState(epoch=checkpoint["epoch"], step=checkpoint["step"],
                                   best_metric=checkpoint["best_metric"],
                                   batches_done=int(checkpoint.get("batches_done", 0)),
                                   stale=int(checkpoint.get("stale_validations", 0)))
        if self.state.batches_done and "epoch_sums" in checkpoint:
            self.sums.load_state_dict(checkpoint["epoch_sums"], self.device)

    def _save_and_stop(self, extra: dict[str, Any], batches_done: int) -> NoReturn:
        """On SIGINT/SIGTERM: save the state after the last trained batch (``batches_done`` of epoch
        ``state.epoch``) to last.pt, say so on stderr, and raise KeyboardInterrupt (exit code 130)."""
        self.state.batches_done = batches_done
        self.save({**extra, "epoch_sums": self.sums.state_dict()})
        if self.checkpointer.enabled:
            print(f"stopped by signal in epoch {self.state.epoch + 1} after {batches_done} batch(es); saved "
                  f"{self.checkpointer.last_path} (continue with --resume)", file=sys.stderr, flush=True)
        raise KeyboardInterrupt

    # --- the loop -------------------------------------------------------------------------------------------
    def train_epoch(self, task: Task, epoch: int, stop: StopOnSignal | None = None, skip: int = 0) -> dict[str, Any]:
        """Train one epoch (from its batch ``skip`` on, adding to the sums restored with a checkpoint written inside
        it) with the task's step for it; returns the task's summary of it plus batches trained, batches taken from
        the loader, batches skipped for a non-finite loss (with ``skip_nonfinite``; their forward pass leaves no
        trace in the buffers), throughput (of this session) and learning rate."""
        step = task.step_for(epoch)
        for module in self._trained():
            module.train()
        sums = self.sums if skip else StatSums()
        self.sums = sums
        loader = self.data.epoch(epoch, skip)
        show = self.run is not None and self.run.is_main
        bar = self.run.logger.progress(loader, desc=f"epoch {epoch + 1}", total=len(loader)) if show else loader
        seen, started = 0, time.perf_counter()
        taken = 0  # batches drawn from the loader, trained or skipped (what a resume inside the epoch skips)
        for batch in bar:
            taken += 1
            buffers = [buffer_snapshot(m) for m in self._trained()] if self.skip_nonfinite else []
            out = step(batch)
            if check_finite(out.loss, f"epoch {epoch + 1}, step {self.state.step}", self.skip_nonfinite):
                if self.steps.backward(out.loss, self._parameters()):
                    self.state.step += 1
                    if self.ema is not None:
                        self.ema.update_parameters(unwrap(self.model))
                sums.add(out.loss, out.stats)
                seen += out.samples
                if show and sums.batches % 10 == 0:
                    bar.set_postfix(loss=f"{float(out.loss.detach()):.4f}")
            else:
                for module, saved in zip(self._trained(), buffers):
                    restore_buffers(module, saved)
                sums.skipped += 1
            if stop is not None and stop.requested:
                break
        totals, batches = sums.reduced(self.device)
        stats = task.summarize(totals, batches)
        stats.update({"batches": sums.batches, "batches_taken": taken, "nonfinite_skipped": sums.skipped,
                      f"{task.unit}_per_s": seen / max(time.perf_counter() - started, 1e-9),
                      "lr": self.optimizer.param_groups[0]["lr"]})
        return stats

    def fit(self, task: Task) -> TrainingState:
        """Train from the current state to ``settings.epochs``: per epoch the task's step, then its validation,
        the metric rows, the checkpoints and the console line; stops early after ``early_stopping_patience``
        validations without a better metric, and on SIGINT/SIGTERM after saving the state inside the epoch."""
        logger = self.run.logger if self.run is not None else None
        patience = self.settings.early_stopping_patience
        with StopOnSignal() as stop:
            for epoch in range(self.state.epoch, self.settings.epochs):
                skip = self.state.batches_done  # > 0: the checkpoint was written inside this epoch
                started = time.perf_counter()
                stats = self.train_epoch(task, epoch, stop, skip)
                if stop.requested:  # keep the state after the last finished batch, then exit
                    self._save_and_stop(task.checkpoint_extra(), skip + stats["batches_taken"])
                seconds = time.perf_counter() - started
                self.state.epoch, self.state.batches_done = epoch + 1, 0
                metric, row = task.validate(self.state.epoch)
                if metric is not None:
                    self.state.stale = 0 if metric > self.state.best_metric else self.state.stale + 1
                if logger is not None:  # rows before the checkpoint: a kill between the two never loses them
                    logger.log("train", epoch=self.state.epoch, step=self.state.step, seconds=round(seconds, 2),
                               **stats)
                    if row:
                        logger.log("val", epoch=self.state.epoch, **row)
                if self.save(task.checkpoint_extra(), metric=metric):
                    task.on_best(self.state.epoch)
                if logger is not None:
                    logger.info(task.describe(self.state.epoch, stats, row))
                stop_early = self.dist.is_main and patience > 0 and self.state.stale >= patience
                if broadcast_flag(stop_early, self.device):
                    if logger is not None:
                        logger.info(f"early stopping: no better validation metric for {self.state.stale} validations")
                    break
        return self.state

"""The pieces every trainer shares: optimizer and schedule, AMP, gradient accumulation, non-finite loss
guard, full-state checkpoints with exact resume, and a clean stop on SIGINT.

The trainers (train_mtcnn.py, train_facenet.py) differ in data, model and loss; the loop plumbing lives
here once. Resume is exact: the checkpoint holds model, optimizer, scheduler, scaler, every RNG state and the
gradients accumulated since the last optimizer step; samplers draw their order from (seed, epoch), and a checkpoint
written on SIGINT inside an epoch records how many of its batches were trained, which ``ResumableBatches``
skips on resume. Data loaders must own their generator (``loader_generator``) so that creating an iterator
does not draw from the global RNG that augmentation uses.
"""
from __future__ import annotations

import itertools
import math
import signal
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from utils.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from utils.errors import ToolkitError
from utils.seed import get_rng_state, set_rng_state


class NonFiniteLossError(ToolkitError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def build_optimizer(params: Any, name: str, lr: float, weight_decay: float = 0.0, momentum: float = 0.9) -> torch.optim.Optimizer:
    """SGD (with momentum) or Adam/AdamW by name."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ToolkitError(f"unknown optimizer {name!r} (sgd, adam, adamw)")


def build_scheduler(optimizer: torch.optim.Optimizer, name: str, total_steps: int, warmup_steps: int = 0,
                    milestones: tuple[float, ...] = (0.5, 0.75), gamma: float = 0.1) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step schedule: ``cosine``, ``step`` (milestones as fractions of training) or ``constant``, after linear warm-up."""
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


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module inside DistributedDataParallel (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def check_finite(loss: torch.Tensor, where: str, skip: bool) -> bool:
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

    def backward(self, loss: torch.Tensor, parameters: Any) -> bool:
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
        return {"scaler": self.scaler.state_dict(), "micro": self._micro}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scaler.load_state_dict(state["scaler"])
        self._micro = state["micro"]


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


def pending_gradients(model: nn.Module) -> dict[str, torch.Tensor]:
    """Gradients accumulated but not yet applied (gradient accumulation between optimizer steps), by parameter."""
    return {name: p.grad.detach().clone() for name, p in unwrap(model).named_parameters() if p.grad is not None}


def restore_gradients(model: nn.Module, grads: dict[str, torch.Tensor]) -> None:
    """Put back gradients saved by :func:`pending_gradients` (an exact resume in mid-accumulation)."""
    params = dict(unwrap(model).named_parameters())
    for name, grad in grads.items():
        params[name].grad = grad.to(params[name].device)


def buffer_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the model's buffers (batch-norm running statistics), taken before a forward pass so that a batch
    skipped for a non-finite loss can leave them as they were (its forward pass already moved them)."""
    return {name: buffer.detach().clone() for name, buffer in unwrap(model).named_buffers()}


def restore_buffers(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Put back buffers saved by :func:`buffer_snapshot`."""
    buffers = dict(unwrap(model).named_buffers())
    with torch.no_grad():
        for name, value in saved.items():
            buffers[name].copy_(value)


@dataclass
class TrainingState:
    """What the loop needs to continue: where it is and the best validation score so far."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    best_metric: float = -math.inf
    batches_done: int = 0  # batches of epoch ``epoch`` already trained (a checkpoint written inside an epoch)


class Checkpointer:
    """Writes ``last.pt`` every epoch (and on SIGINT) and ``best.pt`` when the validation metric improves."""

    def __init__(self, run_dir: str | Path, kind: str, config: dict[str, Any], enabled: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.kind = kind
        self.config = config
        self.enabled = enabled

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.run_dir / "best.pt"

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, steps: StepRunner, state: TrainingState,
             metric: float | None = None, extra: dict[str, Any] | None = None) -> bool:
        """Save the full state to last.pt; also best.pt when ``metric`` beats the best. True when best improved."""
        improved = metric is not None and metric > state.best_metric
        if improved:
            state.best_metric = metric
        if not self.enabled:
            return improved
        payload = {
            "kind": self.kind,
            "model": unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": steps.scheduler.state_dict() if steps.scheduler is not None else None,
            "steps": steps.state_dict(),
            "epoch": state.epoch,
            "step": state.step,
            "batches_done": state.batches_done,
            "pending_grads": pending_gradients(model),
            "best_metric": state.best_metric,
            "metric": metric,
            "rng": get_rng_state(),
            "config": self.config,
            **(extra or {}),
        }
        # best.pt first: a run killed between the two writes resumes from the previous last.pt and, resuming
        # exactly, rewrites the same best.pt; the other order could leave a last.pt whose best.pt was never written.
        if improved or (metric is None and not self.best_path.exists()):
            save_checkpoint(self.best_path, payload)
        save_checkpoint(self.last_path, payload)
        return improved

    def save_and_stop(self, model: nn.Module, optimizer: torch.optim.Optimizer, steps: StepRunner,
                      state: TrainingState, batches_done: int, extra: dict[str, Any] | None = None) -> NoReturn:
        """On SIGINT/SIGTERM: save the state after the last trained batch (``batches_done`` of epoch
        ``state.epoch``) to last.pt, say so on stderr, and raise KeyboardInterrupt (exit code 130)."""
        state.batches_done = batches_done
        self.save(model, optimizer, steps, state, extra=extra)
        if self.enabled:
            print(f"stopped by signal in epoch {state.epoch + 1} after {batches_done} batch(es); saved "
                  f"{self.last_path} (continue with --resume)", file=sys.stderr, flush=True)
        raise KeyboardInterrupt

    def resume(self, path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, steps: StepRunner) -> TrainingState:
        """Restore everything saved by ``save``; the loop continues with epoch ``state.epoch``, skipping its first
        ``state.batches_done`` batches when the checkpoint was written inside it."""
        checkpoint = load_checkpoint(path, kind=self.kind)
        load_model_state(unwrap(model), checkpoint["model"], path)
        optimizer.load_state_dict(checkpoint["optimizer"])
        if steps.scheduler is not None and checkpoint.get("scheduler") is not None:
            steps.scheduler.load_state_dict(checkpoint["scheduler"])
        steps.load_state_dict(checkpoint["steps"])
        restore_gradients(model, checkpoint.get("pending_grads", {}))
        set_rng_state(checkpoint["rng"])
        return TrainingState(epoch=checkpoint["epoch"], step=checkpoint["step"], best_metric=checkpoint["best_metric"],
                             batches_done=int(checkpoint.get("batches_done", 0)))


class StopOnSignal:
    """Turns the first SIGINT/SIGTERM into a flag so the loop can checkpoint and exit cleanly; a second one kills."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "StopOnSignal":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

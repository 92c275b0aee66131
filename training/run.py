"""A training run's folder: starting it, or resuming it from its ``last.pt``.

:func:`open_run` is the first thing a trainer does with its folder: on ``--resume`` it loads ``last.pt``;
then it writes ``config.json`` and opens the run's logger (dropping metric rows past the checkpoint).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.checkpoint import load_checkpoint
from utils.config_io import config_to_dict, save_config
from utils.logger import RunLogger


@dataclass
class Run:
    """An opened run folder: the kind of model its checkpoints hold, the resolved config they record, its
    logger, and the contents of the ``last.pt`` it resumes from (None: a fresh start)."""

    folder: Path
    kind: str
    config: dict[str, Any]
    logger: RunLogger
    checkpoint: dict[str, Any] | None = None
    is_main: bool = True


def open_run(folder: str | Path, kind: str, config: Any, *, resume: bool, is_main: bool = True) -> Run:
    """Open the run folder of a trainer whose checkpoints hold ``kind`` models; with ``resume`` and a
    ``last.pt`` there, continue it, else start afresh."""
    folder = Path(folder)
    last = folder / "last.pt"
    checkpoint = load_checkpoint(last, kind=kind) if resume and last.is_file() else None
    logger = RunLogger(folder, enabled=is_main, resume_epoch=checkpoint["epoch"] if checkpoint is not None else None)
    if is_main:
        save_config(config, folder / "config.json")
    return Run(folder, kind, config_to_dict(config), logger, checkpoint, is_main)

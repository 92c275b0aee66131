"""A training run's folder: starting it, or resuming it after checking what changed in the config.

:func:`open_run` is the first thing a trainer does with its folder. On ``--resume`` it loads ``last.pt`` and
compares the config it was trained with against the current one before anything is written: a change
that cannot apply to the saved state (the network's shape, the optimizer kind, the loss kind, ...: the
trainer's ``fixed`` keys) is refused with one line naming each key and both values; every other change
takes effect from the resumed step (the engine gives the optimizer the current learning rate, weight
decay and momentum), and a line says so. Then ``config.json`` is written (it always describes what runs),
the resume is appended to ``resumes.jsonl`` (when, from which epoch and step, which keys changed), and the
run's logger opens (dropping metric rows past the checkpoint).
"""
from __future__ import annotations

import datetime
import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.checkpoint import load_checkpoint
from utils.config_io import config_to_dict, save_config
from utils.errors import ConfigError
from utils.logger import RunLogger

RESUMES_FILE = "resumes.jsonl"


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


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config sections as ``{"section.key": value}`` with JSON values (tuples become lists)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.loads(json.dumps(value))
    return flat


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved value, current value)}`` for every key whose value differs (or exists in one only)."""
    old, new = flatten(saved), flatten(current)
    keys = sorted(old.keys() | new.keys())
    return {key: (old.get(key), new.get(key)) for key in keys if old.get(key) != new.get(key)}


def describe_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    """``key old -> new`` items, comma-separated."""
    return ", ".join(f"{key} {json.dumps(old)} -> {json.dumps(new)}" for key, (old, new) in changes.items())


def refused_changes(changes: dict[str, tuple[Any, Any]], fixed: tuple[str, ...]) -> dict[str, tuple[Any, Any]]:
    """The changes to keys that match one of the ``fixed`` patterns (``fnmatch``: ``facenet.*`` etc.)."""
    return {key: values for key, values in changes.items() if any(fnmatch.fnmatchcase(key, p) for p in fixed)}


def check_resume(checkpoint: dict[str, Any], current: dict[str, Any], fixed: tuple[str, ...], where: Path
                 ) -> dict[str, tuple[Any, Any]]:
    """The config changes since ``checkpoint`` was saved; ConfigError naming every key in ``fixed`` that changed."""
    changes = config_changes(checkpoint.get("config") or {}, current)
    refused = refused_changes(changes, fixed)
    if refused:
        raise ConfigError(f"--resume {where}: the saved state cannot take these changed settings: "
                          f"{describe_changes(refused)} (restore them, or start a new run in another --output-dir)")
    return changes


def open_run(folder: str | Path, kind: str, config: Any, *, resume: bool, fixed: tuple[str, ...] = (),
             is_main: bool = True) -> Run:
    """Open the run folder of a trainer whose checkpoints hold ``kind`` models; with ``resume`` and a
    ``last.pt`` there, continue it (see the module docstring), else start afresh. Writes only after the checks."""
    folder = Path(folder)
    current = config_to_dict(config)
    last = folder / "last.pt"
    checkpoint = load_checkpoint(last, kind=kind) if resume and last.is_file() else None
    changes = check_resume(checkpoint, current, fixed, last) if checkpoint is not None else {}
    logger = RunLogger(folder, enabled=is_main, resume_epoch=checkpoint["epoch"] if checkpoint is not None else None)
    if is_main:
        save_config(config, folder / "config.json")
    if checkpoint is not None:
        where = f"epoch {checkpoint['epoch']} (+{checkpoint.get('batches_done', 0)} batches), step {checkpoint['step']}"
        if is_main:
            entry = {"time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                     "epoch": checkpoint["epoch"], "batches_done": checkpoint.get("batches_done", 0),
                     "step": checkpoint["step"], "changed": {key: [old, new] for key, (old, new) in changes.items()}}
            with open(folder / RESUMES_FILE, "a", encoding="utf-8") as history:
                history.write(json.dumps(entry) + "\n")
        logger.info(f"resuming {folder} from {where}"
                    + (f"; changed settings apply from step {checkpoint['step']}: {describe_changes(changes)}"
                       if changes else ""))
    return Run(folder, kind, current, logger, checkpoint, is_main)

"""Full-state checkpoints: written atomically, loaded safely, checked against what the caller expects.

A checkpoint is a dict with at least ``model`` (a state_dict) and ``kind`` (what net it holds, e.g. "pnet"
or "facenet"), plus whatever the trainer needs to continue exactly: optimizer, scheduler, scaler,
epoch, step, RNG states, the resolved config. ``torch.load(weights_only=True)`` refuses pickles that
carry code, so a downloaded checkpoint cannot run anything.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils.atomic import atomic_path
from utils.errors import DataError


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temp file + rename): a crash leaves the old file intact. Saved
    through an open handle, so the archive does not carry the temp file's random name: the same state gives
    the same bytes, and the SHA-256 that matchers and galleries are tagged with stays that of the weights."""
    with atomic_path(path, suffix=".pt") as tmp, open(tmp, "wb") as handle:
        torch.save(state, handle)


def load_checkpoint(path: str | Path, kind: str | None = None,
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely; with ``kind`` set, refuse one that holds another kind of model."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe content"
        raise DataError(path, f"refused to load: not a plain-data checkpoint ({first})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise DataError(path, f"unreadable or truncated checkpoint ({exc})") from None
    if not isinstance(state, dict):
        raise DataError(path, f"expected a checkpoint dict, found {type(state).__name__}")
    if kind is not None and "model" in state and state.get("kind") != kind:
        raise DataError(path, f"checkpoint holds a {state.get('kind')!r} model, expected {kind!r}")
    return state


def load_model_state(model: nn.Module, state_dict: dict[str, torch.Tensor], path: str | Path,
                     strict: bool = True) -> list[str]:
    """Load weights with a one-line error on a key or shape mismatch; return the missing keys when not strict."""
    own = model.state_dict()
    wrong_shape = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)
    ]
    if wrong_shape:
        raise DataError(path,
                        f"weights do not fit {type(model).__name__}: shape mismatch in {', '.join(wrong_shape[:3])}")
    unexpected = sorted(set(state_dict) - set(own))
    missing = sorted(set(own) - set(state_dict))
    if unexpected or (strict and missing):
        parts = []
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:4]}")
        if strict and missing:
            parts.append(f"missing keys {missing[:4]}")
        raise DataError(path, f"weights do not fit {type(model).__name__}: {'; '.join(parts)}")
    model.load_state_dict(state_dict, strict=False)
    return missing

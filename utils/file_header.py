"""The format/version header of the files the toolkit saves (matcher JSON, gallery ``.pt``), checked in one place."""
from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

from utils.errors import DataError


def check_header(state: Any, path: str | Path, fmt: str, version: int | Collection[int], kind: str) -> dict[str, Any]:
    """``state`` when it is a dict headed ``format: fmt`` and a ``version`` this toolkit reads (``version``: one
    or several); otherwise a DataError naming the file's ``kind``, so a foreign or newer file is refused before
    any of it is read."""
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise DataError(path, f"not a {kind} file (no 'format: {fmt}' header)")
    readable = (version,) if isinstance(version, int) else tuple(version)
    if state.get("version") not in readable:
        names = " or ".join(str(v) for v in readable)
        raise DataError(path, f"{kind} file version {state.get('version')!r}; this toolkit reads version {names}")
    return state

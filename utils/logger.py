"""Run logging: tqdm progress bars on the main process and one metrics CSV per run phase.

Each phase ("train", "val", ...) gets ``<run_dir>/metrics_<phase>.csv`` with one row per call. On resume,
rows past the checkpoint's epoch are dropped so the CSV matches the weights. TensorBoard event files are
written too when the ``tensorboard`` package is installed (optional).
"""
from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

from tqdm.auto import tqdm

from utils.atomic import atomic_write_text

T = TypeVar("T")


class RunLogger:
    """Progress bars and metrics CSVs for one run folder; silent on ranks other than 0."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, resume_epoch: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._rows: dict[str, list[dict[str, Any]]] = {}
        self._tensorboard = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for csv_path in self.run_dir.glob("metrics_*.csv"):
            phase = csv_path.stem[len("metrics_"):]
            rows = list(csv.DictReader(csv_path.open(newline="", encoding="utf-8")))
            if resume_epoch is None:
                rows = []
            else:
                rows = [r for r in rows if r.get("epoch", "") == "" or int(float(r["epoch"])) <= resume_epoch]
            self._rows[phase] = rows
            self._write(phase)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"))
        except ImportError:
            self._tensorboard = None

    def progress(self, iterable: Iterable[T], desc: str, total: int | None = None, leave: bool = False) -> Iterable[T]:
        """A tqdm bar over ``iterable`` (a plain iterator on non-main ranks)."""
        return tqdm(iterable, desc=desc, total=total, leave=leave, disable=not self.enabled, dynamic_ncols=True)

    def log(self, phase: str, **metrics: Any) -> None:
        """Append one row of ``metrics`` to ``metrics_<phase>.csv`` (new columns extend the header)."""
        if not self.enabled:
            return
        self._rows.setdefault(phase, []).append(metrics)
        self._write(phase)
        if self._tensorboard is not None:
            step = metrics.get("step", metrics.get("epoch", len(self._rows[phase])))
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                    self._tensorboard.add_scalar(f"{phase}/{key}", value, step)

    def rows(self, phase: str) -> list[dict[str, Any]]:
        """The rows logged so far for ``phase`` (as read back or logged)."""
        return list(self._rows.get(phase, []))

    def info(self, message: str) -> None:
        """Print a line without breaking the progress bars."""
        if self.enabled:
            tqdm.write(message)

    def _write(self, phase: str) -> None:
        rows = self._rows[phase]
        columns: list[str] = []
        for row in rows:
            columns += [k for k in row if k not in columns]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.run_dir / f"metrics_{phase}.csv", buffer.getvalue())

    def close(self) -> None:
        """Flush TensorBoard files."""
        if self._tensorboard is not None:
            self._tensorboard.close()

"""Errors that reach the user as one clear line, and the skip-or-stop policy for bad inputs."""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


class ToolkitError(Exception):
    """Base of every error the scripts turn into a one-line message and a non-zero exit."""


class ConfigError(ToolkitError):
    """A config key, value or file is wrong."""


class DataError(ToolkitError):
    """An input file (image, annotation, checkpoint, archive) is missing, unreadable or malformed."""

    def __init__(self, path: str | Path, message: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        self.reason = message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


@dataclass
class BadInputLog:
    """Collects bad inputs: with ``strict`` the first one is raised, otherwise each is counted and skipped."""

    strict: bool = False
    problems: list[DataError] = field(default_factory=list)

    def report(self, error: DataError) -> None:
        """Raise ``error`` when strict; otherwise remember it and warn once per file."""
        if self.strict:
            raise error
        if all(p.path != error.path for p in self.problems):
            warnings.warn(f"skipped {error}", stacklevel=2)
        self.problems.append(error)

    def __len__(self) -> int:
        return len(self.problems)

    def summary(self) -> str:
        """One line per skipped input, for the end-of-run report."""
        if not self.problems:
            return "no bad inputs"
        lines = [f"{len(self.problems)} bad input(s) skipped:"]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


def name_some(items: Sequence[str], limit: int = 10) -> str:
    """``items`` joined with commas for a console line, at most ``limit`` of them ("..., and N more")."""
    shown = ", ".join(items[:limit])
    return f"{shown}, and {len(items) - limit} more" if len(items) > limit else shown

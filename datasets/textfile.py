"""Plain-text annotation plumbing shared by the format readers: lines with numbers, counted records.

WIDER FACE and FDDB share one record shape (an image path line, a count line, then one line of numbers
per face); CelebA, lfw_5590 and pairs files are whitespace-separated tables. Errors name file and line.
In a counted-record file the path is the whole line, so it may hold spaces.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.atomic import atomic_write_text
from utils.errors import BadInputLog, DataError


def read_text_lines(path: str | Path) -> list[str]:
    """Return the lines of a UTF-8 text file (BOM and line ends stripped); DataError when unreadable."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found")
    if not path.is_file():
        raise DataError(path, "expected a text file, found a folder")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(path, f"cannot read the file ({exc.strerror})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(path, f"not UTF-8 text (byte {data[exc.start]:#04x})", line=line) from None
    lines = text.replace("\r\n", "\n").split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def report(log: BadInputLog | None, error: DataError) -> None:
    """Raise ``error`` without a log (strict by default), otherwise let the log count or raise it."""
    if log is None:
        raise error
    log.report(error)


def parse_number(token: str, path: str | Path, line: int) -> float:
    """Parse one finite number; DataError naming file, line and token otherwise."""
    try:
        value = float(token)
    except ValueError:
        raise DataError(path, f"not a number: {token!r}", line=line) from None
    if not math.isfinite(value):
        raise DataError(path, f"not a finite number: {token!r}", line=line)
    return value


def parse_numbers(tokens: Sequence[str], count: int, path: str | Path, line: int, what: str) -> np.ndarray:
    """Parse exactly ``count`` finite numbers (float64); DataError naming file and line otherwise."""
    if len(tokens) != count:
        raise DataError(path, f"expected {count} numbers for {what}, found {len(tokens)} fields", line=line)
    return np.array([parse_number(t, path, line) for t in tokens], dtype=np.float64)


def parse_int(token: str, path: str | Path, line: int, what: str, minimum: int = 0) -> int:
    """Parse a whole number >= ``minimum``; DataError naming file and line otherwise."""
    try:
        value = int(token)
    except ValueError:
        raise DataError(path, f"{what} must be a whole number, found {token!r}", line=line) from None
    if value < minimum:
        raise DataError(path, f"{what} must be >= {minimum}, found {value}", line=line)
    return value


def format_number(value: float) -> str:
    """Shortest text that reads back to the same float32 value ("12" for whole numbers, "26.88")."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"cannot write non-finite number {value}")
    return np.format_float_positional(np.float32(value), trim="-")


def format_exact(value: float) -> str:
    """Shortest text that reads back to the same float64 value; for derived values such as widths."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"cannot write non-finite number {value}")
    return np.format_float_positional(np.float64(value), trim="-")


def format_xywh(box: Sequence[float]) -> list[str]:
    """``x y w h`` text for a box ``x1 y1 x2 y2``, written so that ``x + w`` reads back as the same float32 x2."""
    x1, y1, x2, y2 = (float(v) for v in box)
    x_text, y_text = format_number(x1), format_number(y1)
    width = format_exact(float(np.float32(x2)) - float(x_text))
    height = format_exact(float(np.float32(y2)) - float(y_text))
    return [x_text, y_text, width, height]


def _is_name_line(tokens: list[str]) -> bool:
    """A record starts at a line whose first token is not a number: an image path (which may hold spaces)."""
    try:
        float(tokens[0])
    except ValueError:
        return True
    return False


@dataclass
class CountedRecord:
    """One image of a counted-record file: its name, the line it is on, and one row of numbers per face."""

    name: str
    line: int
    rows: np.ndarray  # float64 [count, fields]
    row_lines: list[int]


def _parse_record(path: Path, chunk: list[tuple[int, list[str]]], fields: int, zero_row: bool,
                  at_end: bool) -> CountedRecord:
    """Check one record (path line, count line, ``count`` face lines up to the next path) and parse its rows."""
    (name_line, (name,)), body = chunk[0], chunk[1:]
    if not body:
        where = "the file ends" if at_end else "the next image path follows"
        raise DataError(path, f"record {name!r} has no face count ({where})", line=name_line)
    count_line, count_tokens = body[0]
    if len(count_tokens) != 1:
        raise DataError(path, f"expected the face count of {name!r}, found {len(count_tokens)} fields",
                        line=count_line)
    count = parse_int(count_tokens[0], path, count_line, f"face count of {name!r}")
    rows = body[1:]
    if count == 0 and zero_row and len(rows) == 1:
        filler = parse_numbers(rows[0][1], fields, path, rows[0][0], "the all-zero line after a zero count")
        if np.any(filler != 0):
            raise DataError(path, f"{name!r} declares 0 faces but has a non-zero face line", line=rows[0][0])
        rows = []
    if len(rows) != count:
        if at_end and len(rows) < count:
            problem = f"the file ends after {len(rows)} of the {count} face lines of {name!r}"
        else:
            problem = f"{name!r} declares {count} face(s) but {len(rows)} face line(s) follow"
        raise DataError(path, problem, line=count_line)
    values = np.empty((count, fields), dtype=np.float64)
    for i, (line, tokens) in enumerate(rows):
        values[i] = parse_numbers(tokens, fields, path, line, f"a face of {name!r}")
    return CountedRecord(name, name_line, values, [line for line, _ in rows])


def read_counted_records(path: str | Path, fields: int, *, zero_row: bool = False,
                         log: BadInputLog | None = None) -> list[CountedRecord]:
    """Read ``name / count / count rows of fields numbers`` records (WIDER, FDDB); blank lines are ignored.

    The records are read by structure: a path line (the whole line: a path may hold spaces), a count line,
    then the face lines, each starting with a number; the next line starting with anything else is the next
    path. ``zero_row``: a count of 0 may be followed by one all-zero filler line (as WIDER writes it). A bad
    record raises DataError (``log`` None or strict) or is reported and skipped; parsing resumes at the next
    image path line, so one bad record never shifts the ones after it.
    """
    path = Path(path)
    chunks: list[list[tuple[int, list[str]]]] = []
    stray: list[int] = []
    for number, text in enumerate(read_text_lines(path), start=1):
        tokens = text.split()
        if not tokens:
            continue
        if _is_name_line(tokens):
            chunks.append([(number, [text.strip()])])
        elif chunks:
            chunks[-1].append((number, tokens))
        else:
            stray.append(number)
    if stray:
        report(log, DataError(path, "expected an image path, found a line of numbers", line=stray[0]))
    records = []
    for index, chunk in enumerate(chunks):
        try:
            records.append(_parse_record(path, chunk, fields, zero_row, at_end=index == len(chunks) - 1))
        except DataError as error:
            report(log, error)
    return records


def write_counted_records(path: str | Path, records: Sequence[tuple[str, Sequence[Sequence[str]]]],
                          zero_row_fields: int | None = None) -> None:
    """Atomically write ``(name, rows of already formatted fields)`` records, one line per row.

    ``zero_row_fields``: when set, an image without faces gets one line of that many zeros (WIDER).
    """
    lines: list[str] = []
    for name, rows in records:
        if not name or name != name.strip() or "\n" in name or not _is_name_line(name.split()):
            raise ValueError(f"image path {name!r} must be one line, without spaces around it, not starting with "
                             "a number")
        lines += [name, str(len(rows))]
        lines += [" ".join(row) for row in rows]
        if not rows and zero_row_fields:
            lines.append(" ".join(["0"] * zero_row_fields))
    atomic_write_text(path, "".join(line + "\n" for line in lines))

"""The model zoo: trained models shipped in the repository's ``weights/`` folder, one folder (an *entry*) per model.

An entry holds its weights (``pnet.pt``, ``rnet.pt``, ``onet.pt``: plain state_dicts; ``embedder.pt``: the
embedder record ``models.system.load_embedder`` reads; ``matcher.json``), the ``config.json`` it was trained
with, its ``metrics_*.csv``, ``eval.json`` and ``MODEL.md``, and ``SHA256SUMS`` (``sha256sum`` format, one
line per other file). Every option that takes a model path also takes an entry's name (``mtcnn_wider``) or
``weights/<name>``, found under the ``weights/`` folder beside this package (not the working directory),
or under ``$FACE_TOOLKIT_WEIGHTS`` when that is set. ``python -m deploy.package`` makes entries.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from utils.errors import DataError
from utils.hashing import sha256_file

WEIGHTS_ENV = "FACE_TOOLKIT_WEIGHTS"
WEIGHTS_DIR = "weights"
SUMS_FILE = "SHA256SUMS"
EMBEDDER_FILE = "embedder.pt"
MATCHER_FILE = "matcher.json"
CASCADE_FILES = ("pnet.pt", "rnet.pt", "onet.pt")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_SUM_LINE = re.compile(r"([0-9a-f]{64}) [ *](.+)")


def weights_root(root: str | Path | None = None) -> Path:
    """The folder of entries: ``root`` when given, else ``$FACE_TOOLKIT_WEIGHTS``, else ``<repository>/weights``."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get(WEIGHTS_ENV) or Path(__file__).resolve().parents[1] / WEIGHTS_DIR)


def is_entry(folder: str | Path) -> bool:
    """Whether ``folder`` is a zoo entry (a folder with a SHA256SUMS file)."""
    return (Path(folder) / SUMS_FILE).is_file()


def has_cascade(folder: str | Path) -> bool:
    """Whether ``folder`` holds P-Net, R-Net and O-Net."""
    return all((Path(folder) / name).is_file() for name in CASCADE_FILES)


def list_entries(root: str | Path | None = None) -> list[str]:
    """The names of the entries under the weights root, sorted (none when the folder is absent)."""
    folder = weights_root(root)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if NAME_PATTERN.fullmatch(p.name) and is_entry(p))


def resolve_entry(name_or_path: str | Path, root: str | Path | None = None) -> Path:
    """An existing path as it is; an entry name (or ``weights/<name>``) as its folder under the weights root.

    Any other missing path is returned unchanged, for the caller's own not-found error; a missing single name
    raises DataError listing the entries present.
    """
    path = Path(name_or_path)
    if path.exists():
        return path
    parts = path.parts
    if len(parts) == 2 and parts[0] == WEIGHTS_DIR:
        parts = parts[1:]
    if len(parts) != 1:
        return path
    folder = weights_root(root)
    if is_entry(folder / parts[0]):
        return folder / parts[0]
    present = ", ".join(list_entries(folder)) or "none"
    raise DataError(name_or_path, f"no such file, folder or model entry (entries in {folder}: {present})")


def entry_file(source: str | Path, filename: str, root: str | Path | None = None) -> Path:
    """The file ``source`` names: a file path as it is; an entry name or any folder as its ``filename``."""
    path = resolve_entry(source, root)
    return path / filename if path.is_dir() else path


def entry_matcher(embedder: str | Path | None, root: str | Path | None = None) -> Path | None:
    """The matcher of the entry an embedder option names (None: not an entry, or an entry without a matcher)."""
    if not embedder:
        return None
    folder = resolve_entry(embedder, root)
    return folder / MATCHER_FILE if is_entry(folder) and (folder / MATCHER_FILE).is_file() else None


def sums_text(folder: str | Path) -> str:
    """SHA256SUMS content for every file in ``folder`` except SHA256SUMS itself, sorted by name."""
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.name != SUMS_FILE)
    return "".join(f"{sha256_file(p)}  {p.name}\n" for p in files)


def verify_entry(folder: str | Path) -> list[str]:
    """Check every file of an entry against its SHA256SUMS; returns the names checked.

    A file whose digest differs, a listed file that is missing and a file that is not listed each raise
    DataError naming the file.
    """
    folder = Path(folder)
    sums = folder / SUMS_FILE
    if not sums.is_file():
        raise DataError(folder, f"not a model entry: no {SUMS_FILE}")
    listed = {}
    for number, line in enumerate(sums.read_text(encoding="utf-8").splitlines(), start=1):
        match = _SUM_LINE.fullmatch(line.strip())
        if match is None or "/" in match.group(2):
            raise DataError(sums, "expected '<64 hex digits>  <file name>'", line=number)
        listed[match.group(2)] = match.group(1)
    for name, digest in listed.items():
        if not (folder / name).is_file():
            raise DataError(folder / name, f"listed in {SUMS_FILE} but missing")
        if sha256_file(folder / name) != digest:
            raise DataError(folder / name, f"SHA-256 differs from {SUMS_FILE}: the file was changed or damaged")
    extra = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != SUMS_FILE and p.name not in listed)
    if extra:
        raise DataError(folder / extra[0], f"not listed in {SUMS_FILE}")
    return sorted(listed)

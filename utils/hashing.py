"""Content fingerprints of files, so gallery and matcher files can record which checkpoint made them."""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from utils.errors import DataError

HASH_ALGORITHMS = ("sha256", "md5")


def hash_file(
    path: str | Path, algorithms: Iterable[str] = HASH_ALGORITHMS, chunk_size: int = 1 << 20
) -> dict[str, str]:
    """Hex digests of a file's bytes for each named hashlib algorithm, computed in one streaming pass."""
    hashers = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            for hasher in hashers.values():
                hasher.update(chunk)
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


def sha256_file(path: str | Path) -> str:
    """Full SHA-256 hex digest of the file's bytes (streamed, so memory stays flat for large checkpoints)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file to fingerprint not found")
    return hash_file(path, ("sha256",))["sha256"]


def file_fingerprint(path: str | Path, length: int = 12) -> str:
    """Short content hash (first ``length`` hex digits of SHA-256) identifying a checkpoint file in reports."""
    if not 1 <= length <= 64:
        raise ValueError(f"fingerprint length must be 1..64 hex digits, got {length}")
    return sha256_file(path)[:length]

"""Resumable, retried, checksum-verified HTTP downloads.

Bytes are streamed into ``<dest>.part`` beside the destination. An interrupted transfer is resumed with an
HTTP ``Range`` request (by the same call's next attempt or by a later call); connection errors, timeouts,
408, 429 and 5xx are retried with capped exponential backoff; other 4xx fail at once. Only when the size
and checksums match is the part file renamed onto ``dest``, so ``dest`` is either absent or complete.
"""
from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

import requests
from tqdm import tqdm

from utils.errors import DataError
from utils.hashing import hash_file

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 60.0  # no single wait between attempts is longer than this
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")


class DownloadError(DataError):
    """A download failed for good (bad status, checksum mismatch, retries used up); the message names the URL."""

    def __init__(self, url: str, message: str) -> None:
        super().__init__(url, message)
        self.url = url


class _Retryable(Exception):
    """One attempt failed in a way another attempt may fix (connection cut, timeout, 408/429/5xx)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def part_path(dest: str | Path) -> Path:
    """Where the unfinished bytes of ``dest`` live: ``<dest>.part`` in the same folder."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".part")


def retry_delay(failures: int, backoff: float, cap: float = MAX_BACKOFF_S) -> float:
    """Seconds to wait after the ``failures``-th failed attempt in a row (1-based): backoff * 2**(n-1), capped."""
    return min(cap, backoff * 2.0 ** max(0, failures - 1))


def _mismatch(path: Path, expected: dict[str, str], size: int | None) -> str | None:
    """Describe how ``path`` differs from the expected size and digests, or None when it matches them all."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        return f"size mismatch: expected {size} bytes, got {actual_size}"
    if not expected:
        return None
    digests = hash_file(path, expected)
    for name, want in expected.items():
        if digests[name] != want:
            return f"{name} mismatch: expected {want}, got {digests[name]}"
    return None


def _describe(exc: BaseException) -> str:
    """A short one-line reason for a requests/urllib3 failure, e.g. 'ConnectionError: Connection refused'."""
    seen: set[int] = set()
    message: str | None = None
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if isinstance(node, OSError) and not isinstance(node, requests.RequestException) and node.strerror:
            return f"{type(exc).__name__}: {node.strerror}"
        if message is None and node.args and isinstance(node.args[0], str):
            message = node.args[0]
        nested = node.args[0] if node.args and isinstance(node.args[0], BaseException) else None
        node = node.__cause__ or getattr(node, "reason", None) or nested or node.__context__
        if node is not None and not isinstance(node, BaseException):
            node = None
    text = " ".join((message or str(exc)).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:200]}"


def _retry_after(response: requests.Response) -> float | None:
    """The server's Retry-After in seconds when it gives a number, else None."""
    value = response.headers.get("Retry-After", "").strip()
    return float(value) if value.isdigit() else None


def _attempt(
    session: requests.Session, url: str, part: Path, size: int | None, timeout: float,
    chunk_size: int, progress: bool, label: str,
) -> None:
    """Fetch what ``part`` lacks; return once the file is whole, else raise _Retryable or DownloadError."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        log.warning("%s is longer than the expected %d bytes; starting again", part, size)
        part.unlink()
        offset = 0
    if size is not None and offset == size and offset > 0:
        return
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = session.get(url, headers=headers, stream=True, timeout=timeout)
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise _Retryable(_describe(exc)) from exc
    except requests.RequestException as exc:
        raise DownloadError(url, _describe(exc)) from exc
    with response:
        status = response.status_code
        if status == 416 and offset:
            found = _UNSATISFIED_RANGE.search(response.headers.get("Content-Range", ""))
            if found is None or int(found.group(1)) == offset:
                return  # the part already holds the whole file (or the server will not say): verify it
            part.unlink()
            raise _Retryable(f"HTTP 416: the partial file ({offset} bytes) does not fit the remote file "
                             f"({found.group(1)} bytes); starting again")
        if status in (408, 429) or status >= 500:
            raise _Retryable(f"HTTP {status} {response.reason}", _retry_after(response))
        if status not in (200, 206):
            raise DownloadError(url, f"HTTP {status} {response.reason}")
        total: int | None
        if status == 206:
            found = _CONTENT_RANGE.search(response.headers.get("Content-Range", ""))
            if found is None or int(found.group(1)) != offset:
                part.unlink()
                raise _Retryable("the server answered the resume request with the wrong byte range; starting again")
            total = int(found.group(3)) if found.group(3) != "*" else None
            mode = "ab"
        else:
            if offset:
                log.info("%s: the server ignored the Range request; downloading again from byte 0", url)
            offset, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        if size is not None and total is not None and total != size:
            raise DownloadError(url, f"size mismatch: expected {size} bytes, the server announces {total}")
        length = response.headers.get("Content-Length")
        announced = int(length) if length and length.isdigit() else None
        received = 0
        with open(part, mode) as handle, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=label, disable=not progress, dynamic_ncols=True,
        ) as bar:
            try:
                for chunk in response.iter_content(chunk_size if size is None else min(chunk_size, size - offset + 1)):
                    if size is not None and offset + received + len(chunk) > size:
                        part.unlink()
                        raise DownloadError(url, f"the server sent more than the expected {size} bytes; "
                                                 "stopped and deleted the partial file")
                    handle.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except requests.RequestException as exc:
                raise _Retryable(f"transfer cut after {offset + received} bytes ({_describe(exc)})") from exc
            except OSError as exc:
                raise DownloadError(url, f"cannot write {part}: {exc.strerror or exc}") from exc
    if announced is not None and received < announced:
        raise _Retryable(f"connection closed after {offset + received} of {offset + announced} bytes")
    if size is not None and offset + received < size:
        raise _Retryable(f"transfer ended after {offset + received} of {size} bytes")


def download(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    size: int | None = None,
    retries: int = 5,
    backoff: float = 0.5,
    timeout: float = 30,
    chunk_size: int = 1 << 20,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` (resuming ``<dest>.part``), verify size and checksums, then rename into place.

    An existing ``dest`` that verifies is returned without any request. Up to ``retries`` failed attempts are
    retried (each resuming where the last stopped, give or take the ``chunk_size`` bytes in flight at the cut);
    when they are used up the part file is kept for a later call. A checksum or size mismatch deletes the part
    file and raises :class:`DownloadError`; so does a non-retryable status (4xx other than 408/429), at once,
    and a server that sends more than a known ``size`` (with or without Content-Length): the transfer stops at
    the chunk that passes it, and nothing past ``size`` is written.
    """
    dest = Path(dest)
    part = part_path(dest)
    expected = {name: value.strip().lower() for name, value in (("sha256", sha256), ("md5", md5)) if value}
    if dest.is_file():
        problem = _mismatch(dest, expected, size)
        if problem is None:
            return dest
        log.warning("%s exists but does not verify (%s); downloading it again", dest, problem)
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = 0
    with requests.Session() as session:
        while True:
            try:
                _attempt(session, url, part, size, timeout, chunk_size, progress, dest.name)
                break
            except _Retryable as exc:
                failures += 1
                if failures > retries:
                    kept = f" ({part.stat().st_size} bytes kept in {part.name} to resume)" if part.exists() else ""
                    raise DownloadError(url, f"gave up after {failures} failed attempt(s): {exc}{kept}") from None
                wait = retry_delay(failures, backoff)
                if exc.retry_after is not None:
                    wait = min(MAX_BACKOFF_S, max(wait, exc.retry_after))
                log.warning("%s: %s; retrying in %.2g s", url, exc, wait)
                time.sleep(wait)
    problem = _mismatch(part, expected, size)
    if problem is not None:
        part.unlink(missing_ok=True)
        raise DownloadError(url, f"{problem}; the downloaded file was deleted")
    with open(part, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(part, dest)
    return dest

"""MXNet RecordIO (``.rec`` + ``.idx``) as insightface packs its face sets (MS1M-ArcFace, Glint360K, ...), read
without mxnet.

The byte layout (dmlc-core ``recordio.h``, little-endian): every record is a run of *parts*. A part is
the magic ``0xced7230a`` (uint32), a uint32 ``lrec`` whose top 3 bits are the continuation flag and whose
low 29 bits are the part's length, the part's bytes, and zero padding to a multiple of 4. The writer
cuts a record at every 4-byte-aligned occurrence of the magic in its data (dropping those 4 bytes), so
flags say: 0 = whole record, 1 = first part, 2 = middle part, 3 = last part; the reader joins the
parts with the magic between them. The ``.idx`` file is text, one ``key<TAB>byte offset`` per record.

A record's payload (``mx.recordio.pack``) is the header ``IRHeader`` = ``flag`` (uint32), ``label``
(float32), ``id`` and ``id2`` (uint64), 24 bytes; when ``flag > 0`` the label is instead the ``flag``
float32 values that follow the header. The image (JPEG/PNG bytes) comes last.

insightface's convention: when record 0's header has ``flag > 0``, its label ``(a, b)`` says that image
records are keys ``1 .. a-1`` (and keys ``a .. b-1`` are per-identity records, not images); otherwise
every key is an image. An image's identity is its label (the first value when it carries several).
"""
from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from utils.atomic import atomic_path
from utils.errors import DataError
from utils.images import decode_image

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LENGTH_BITS = 29
_LENGTH_MASK = (1 << _LENGTH_BITS) - 1
_HEADER = struct.Struct("<IfQQ")  # IRHeader: flag, label, id, id2


@dataclass(frozen=True)
class RecordHeader:
    """The ``IRHeader`` of a packed record; ``label`` holds one value, or ``flag`` values when flag > 0."""

    flag: int
    label: tuple[float, ...]
    id: int
    id2: int


def _padded(length: int) -> int:
    return (length + 3) & ~3


def read_record_at(handle: BinaryIO, offset: int, source: str | Path = "<stream>") -> bytes:
    """The record starting at byte ``offset``: its parts joined; DataError on a bad magic or a short read."""
    handle.seek(offset)
    chunks: list[bytes] = []
    while True:
        head = handle.read(8)
        if len(head) < 8:
            raise DataError(source, f"record at byte {offset} is cut short (end of file inside its header)")
        magic, lrec = struct.unpack("<II", head)
        if magic != MAGIC:
            raise DataError(source, f"no RecordIO magic at byte {handle.tell() - 8} (found 0x{magic:08x}); "
                                    "wrong offset in the .idx file, or not a .rec file")
        flag, length = lrec >> _LENGTH_BITS, lrec & _LENGTH_MASK
        body = handle.read(_padded(length))
        if len(body) < length:
            raise DataError(source, f"record at byte {offset} is cut short ({len(body)} of {length} bytes)")
        if chunks and flag in (0, 1):
            raise DataError(source, f"record at byte {offset}: a new record starts before the last part of this one")
        if not chunks and flag in (2, 3):
            raise DataError(source, f"byte {offset} holds the middle or end of a record, not its start")
        chunks.append(body[:length])
        if flag in (0, 3):
            return _MAGIC_BYTES.join(chunks)
        if flag not in (1, 2):
            raise DataError(source, f"record at byte {offset}: unknown part flag {flag}")


def read_header_at(handle: BinaryIO, offset: int, source: str | Path = "<stream>") -> RecordHeader:
    """Only the ``IRHeader`` of the record at ``offset`` (reads a few bytes, not the image)."""
    handle.seek(offset)
    head = handle.read(8 + _HEADER.size)
    if len(head) == 8 + _HEADER.size:
        magic, lrec = struct.unpack_from("<II", head)
        flag, length = lrec >> _LENGTH_BITS, lrec & _LENGTH_MASK
        if magic == MAGIC and flag in (0, 1) and length >= _HEADER.size:
            label_flag = _HEADER.unpack_from(head, 8)[0]
            if label_flag == 0:
                return unpack_record(head[8:], source)[0]
    return unpack_record(read_record_at(handle, offset, source), source)[0]


def unpack_record(record: bytes, source: str | Path = "<record>") -> tuple[RecordHeader, bytes]:
    """Split a packed record into its header and payload (the image bytes)."""
    if len(record) < _HEADER.size:
        raise DataError(source, f"record of {len(record)} bytes is shorter than the {_HEADER.size}-byte header")
    flag, label, id1, id2 = _HEADER.unpack_from(record)
    rest = record[_HEADER.size:]
    if flag > 0:
        if len(rest) < 4 * flag:
            raise DataError(source, f"header promises {flag} label values, record too short")
        labels = tuple(float(v) for v in np.frombuffer(rest[:4 * flag], dtype="<f4"))
        return RecordHeader(flag, labels, id1, id2), rest[4 * flag:]
    return RecordHeader(flag, (float(label),), id1, id2), rest


def pack_record(header: RecordHeader, payload: bytes) -> bytes:
    """The inverse of :func:`unpack_record` (``mx.recordio.pack``'s layout)."""
    if header.flag > 0:
        if len(header.label) != header.flag:
            raise ValueError(f"flag {header.flag} needs that many label values, got {len(header.label)}")
        return (_HEADER.pack(header.flag, 0.0, header.id, header.id2)
                + np.asarray(header.label, dtype="<f4").tobytes() + payload)
    return _HEADER.pack(0, header.label[0], header.id, header.id2) + payload


def encode_record(data: bytes) -> bytes:
    """``data`` as RecordIO parts (cut at 4-byte-aligned magics, padded), ready to append to a .rec file."""
    out = bytearray()
    start = 0
    cuts = [i for i in range(0, len(data) - len(data) % 4, 4) if data[i:i + 4] == _MAGIC_BYTES]
    for i in cuts:
        out += struct.pack("<II", MAGIC, ((1 if start == 0 else 2) << _LENGTH_BITS) | (i - start)) + data[start:i]
        start = i + 4
    tail = len(data) - start
    out += struct.pack("<II", MAGIC, ((3 if cuts else 0) << _LENGTH_BITS) | tail) + data[start:]
    out += b"\0" * (_padded(tail) - tail)
    return bytes(out)


def write_recordio(rec_path: str | Path, records: list[tuple[int, bytes]], idx_path: str | Path | None = None) -> None:
    """Write ``(key, record bytes)`` pairs as a .rec file and its .idx (both atomically): for tests and exports."""
    rec_path = Path(rec_path)
    idx_path = Path(idx_path) if idx_path is not None else rec_path.with_suffix(".idx")
    lines, blob = [], bytearray()
    for key, record in records:
        lines.append(f"{key}\t{len(blob)}\n")
        blob += encode_record(record)
    with atomic_path(rec_path, suffix=".rec") as tmp:
        tmp.write_bytes(bytes(blob))
    with atomic_path(idx_path, suffix=".idx") as tmp:
        tmp.write_text("".join(lines), encoding="utf-8")


def read_index(idx_path: str | Path) -> dict[int, int]:
    """The .idx file as {key: byte offset}; a malformed line is a DataError naming its line."""
    idx_path = Path(idx_path)
    if not idx_path.is_file():
        raise DataError(idx_path, "RecordIO index (.idx) not found")
    index: dict[int, int] = {}
    for number, line in enumerate(idx_path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not all(f.isdigit() for f in fields):
            raise DataError(idx_path, f"expected 'key<TAB>offset', found {line.strip()!r}", line=number)
        index[int(fields[0])] = int(fields[1])
    if not index:
        raise DataError(idx_path, "RecordIO index is empty")
    return index


class RecordIOReader:
    """Random access to the records of a ``.rec`` file through its ``.idx`` (``reader[key]`` -> record bytes).

    The file is opened lazily per process, so a reader can be handed to DataLoader workers.
    """

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None) -> None:
        self.rec_path = Path(rec_path)
        if not self.rec_path.is_file():
            raise DataError(self.rec_path, "RecordIO file (.rec) not found")
        self.idx_path = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        self.index = read_index(self.idx_path)
        size = self.rec_path.stat().st_size
        beyond = [key for key, offset in self.index.items() if offset >= size]
        if beyond:
            raise DataError(self.idx_path,
                            f"key {beyond[0]} points past the end of {self.rec_path.name} ({size} bytes)")
        self._handle: BinaryIO | None = None

    @property
    def keys(self) -> list[int]:
        """Record keys in index order."""
        return list(self.index)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: int) -> bytes:
        return read_record_at(self._file(), self._offset(key), self.rec_path)

    def _offset(self, key: int) -> int:
        if key not in self.index:
            raise DataError(self.idx_path, f"no record with key {key}")
        return self.index[key]

    def _file(self) -> BinaryIO:
        if self._handle is None:
            self._handle = open(self.rec_path, "rb")  # noqa: SIM115 - kept open for the reader's life
        return self._handle

    def header(self, key: int) -> RecordHeader:
        """The packed header of record ``key`` without reading its payload."""
        return read_header_at(self._file(), self._offset(key), self.rec_path)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handle"] = None  # each process opens its own
        return state

    def close(self) -> None:
        """Close the file handle (reopened on the next read)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class FaceRecordSet:
    """An insightface face set (``train.rec`` + ``train.idx``): image keys, their identity labels, decoding."""

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None) -> None:
        self.reader = RecordIOReader(rec_path, idx_path)
        keys = self.reader.keys
        first = self.reader.header(keys[0])
        if first.flag > 0 and keys[0] == 0:
            end = int(first.label[0])
            self.image_keys = [k for k in keys if 1 <= k < end]
        else:
            self.image_keys = keys
        self._labels: list[int] | None = None

    def __len__(self) -> int:
        return len(self.image_keys)

    def where(self, key: int) -> str:
        """A name for error messages: ``<file.rec>#<key>``."""
        return f"{self.reader.rec_path}#{key}"

    def record(self, key: int) -> tuple[int, bytes]:
        """(identity label, image bytes) of image record ``key``."""
        header, payload = unpack_record(self.reader[key], self.where(key))
        return int(header.label[0]), payload

    def labels(self) -> list[int]:
        """Identity label of every image record, in ``image_keys`` order (reads every header once)."""
        if self._labels is None:
            self._labels = [int(self.reader.header(key).label[0]) for key in self.image_keys]
        return self._labels

    def image(self, key: int) -> np.ndarray:
        """The decoded RGB image of record ``key`` (as ``read_image`` decodes files: pixel limit, EXIF orientation)."""
        return decode_image(self.record(key)[1], self.where(key))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """(key, label) of every image record."""
        return iter(zip(self.image_keys, self.labels()))

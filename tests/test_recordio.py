"""insightface RecordIO (.rec/.idx) without mxnet: bytes laid out by hand, round trips, multi-part records, bad
files."""
from __future__ import annotations

import pickle
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets.recordio import (
    MAGIC,
    FaceRecordSet,
    RecordHeader,
    RecordIOReader,
    encode_record,
    pack_record,
    read_index,
    unpack_record,
    write_recordio,
)
from utils.errors import DataError

MAGIC_BYTES = struct.pack("<I", MAGIC)


def _png(seed: int, size: int = 12) -> tuple[np.ndarray, bytes]:
    rgb = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(".png", rgb[:, :, ::-1])
    assert ok
    return rgb, encoded.tobytes()


def _part(flag: int, data: bytes) -> bytes:
    """One RecordIO part written out by hand: magic, (flag << 29 | length), data, zero padding to 4 bytes."""
    padding = b"\0" * ((4 - len(data) % 4) % 4)
    return struct.pack("<II", MAGIC, (flag << 29) | len(data)) + data + padding


def _header(flag: int, label: float, id1: int = 0, id2: int = 0) -> bytes:
    return struct.pack("<IfQQ", flag, label, id1, id2)


def test_hand_laid_insightface_file_reads_images_labels_and_split_records(tmp_path: Path) -> None:
    image_a, png_a = _png(1)
    image_b, png_b = _png(2)
    # Record 0: insightface's header record (flag 2: label = [first identity record, end]); images are keys 1..2.
    records = {0: _part(0, _header(2, 0.0) + struct.pack("<2f", 3.0, 5.0))}
    records[1] = _part(0, _header(0, 7.0, 1) + png_a)
    # Record 2's header holds the magic at an aligned offset (its id): the writer splits it there (flags 1, 3).
    payload_b = _header(0, 9.0, MAGIC) + png_b
    records[2] = _part(1, payload_b[:8]) + _part(3, payload_b[12:])
    records[3] = _part(0, _header(2, 0.0) + struct.pack("<2f", 1.0, 2.0))  # per-identity record, not an image
    records[4] = _part(0, _header(2, 0.0) + struct.pack("<2f", 2.0, 3.0))
    blob, index = b"", []
    for key in sorted(records):
        index.append(f"{key}\t{len(blob)}\n")
        blob += records[key]
    (tmp_path / "train.rec").write_bytes(blob)
    (tmp_path / "train.idx").write_text("".join(index))

    faces = FaceRecordSet(tmp_path / "train.rec")
    assert faces.image_keys == [1, 2] and len(faces) == 2
    assert faces.labels() == [7, 9] and list(faces) == [(1, 7), (2, 9)]
    np.testing.assert_array_equal(faces.image(1), image_a)
    np.testing.assert_array_equal(faces.image(2), image_b)
    header, rest = unpack_record(faces.reader[2])
    assert header == RecordHeader(0, (9.0,), MAGIC, 0) and rest == png_b
    assert faces.reader.header(2) == header
    header0 = faces.reader.header(0)
    assert header0.flag == 2 and header0.label == (3.0, 5.0)


def test_round_trip_with_magic_anywhere_in_the_data(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    payloads = [b"", b"x", MAGIC_BYTES, b"ab" + MAGIC_BYTES + b"cd", MAGIC_BYTES * 3 + b"z",
                b"1234" + MAGIC_BYTES + b"5678" + MAGIC_BYTES, rng.bytes(1001)]
    write_recordio(tmp_path / "d.rec", list(enumerate(payloads)))
    reader = RecordIOReader(tmp_path / "d.rec")
    assert reader.keys == list(range(len(payloads)))
    assert [reader[k] for k in reader.keys] == payloads
    encoded = encode_record(b"1234" + MAGIC_BYTES + b"5678")
    assert struct.unpack_from("<I", encoded, 4)[0] >> 29 == 1, "an aligned magic starts a multi-part record"
    assert len(encoded) % 4 == 0
    assert pickle.loads(pickle.dumps(reader))[6] == payloads[6], "readers travel to DataLoader workers"


def test_label_arrays_and_header_only_reads_agree_with_full_unpack(tmp_path: Path) -> None:
    items = [RecordHeader(0, (4.0,), 11, 0), RecordHeader(3, (1.0, 2.5, -3.0), 12, 5)]
    write_recordio(tmp_path / "h.rec", [(k, pack_record(h, b"payload")) for k, h in enumerate(items)])
    reader = RecordIOReader(tmp_path / "h.rec")
    for key, header in enumerate(items):
        assert unpack_record(reader[key]) == (header, b"payload")
        assert reader.header(key) == header
    with pytest.raises(ValueError, match="label values"):
        pack_record(RecordHeader(2, (1.0,), 0, 0), b"")


def test_bad_files_give_one_line_errors_naming_the_file(tmp_path: Path) -> None:
    write_recordio(tmp_path / "a.rec", [(0, pack_record(RecordHeader(0, (1.0,), 0, 0), b"not an image")),
                                        (1, b"abcdefgh" * 4)])
    faces = FaceRecordSet(tmp_path / "a.rec")
    with pytest.raises(DataError, match=r"a\.rec#0: not an image record"):
        faces.image(0)
    with pytest.raises(DataError, match="no record with key 9"):
        faces.reader[9]
    data = (tmp_path / "a.rec").read_bytes()
    (tmp_path / "cut.rec").write_bytes(data[:-10])
    (tmp_path / "cut.idx").write_text((tmp_path / "a.idx").read_text())
    with pytest.raises(DataError, match="cut short"):
        RecordIOReader(tmp_path / "cut.rec")[1]
    (tmp_path / "moved.rec").write_bytes(data)
    (tmp_path / "moved.idx").write_text("0\t0\n1\t6\n")
    with pytest.raises(DataError, match="no RecordIO magic at byte 6"):
        RecordIOReader(tmp_path / "moved.rec")[1]
    (tmp_path / "past.rec").write_bytes(data)
    (tmp_path / "past.idx").write_text(f"0\t0\n1\t{len(data) + 4}\n")
    with pytest.raises(DataError, match="points past the end"):
        RecordIOReader(tmp_path / "past.rec")
    (tmp_path / "bad.idx").write_text("0\t0\nseven 12\n")
    with pytest.raises(DataError, match=r"bad\.idx:2: expected 'key<TAB>offset'"):
        read_index(tmp_path / "bad.idx")
    with pytest.raises(DataError, match="not found"):
        RecordIOReader(tmp_path / "missing.rec")

"""Reliability of image and folder input: EXIF orientation and the pixel limit in every image reader, symbolic
links and empty folders in identity trees."""
from __future__ import annotations

import io
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets.identity import IdentityFolder
from datasets.recordio import FaceRecordSet, RecordHeader, pack_record, write_recordio
from datasets.verify import verify_identities
from utils.errors import DataError
from utils.images import IMAGE_EXTENSIONS, read_image


def _jpeg(rgb: np.ndarray, orientation: int | None = None) -> bytes:
    """JPEG bytes of ``rgb``, with an EXIF orientation tag when given."""
    image = Image.fromarray(rgb)
    exif = image.getexif()
    if orientation is not None:
        exif[0x0112] = orientation
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=95, exif=exif)
    return out.getvalue()


def _claiming(jpeg: bytes, width: int, height: int) -> bytes:
    """The JPEG with its frame header (SOF) rewritten to claim ``width`` x ``height`` pixels."""
    at = 2
    while jpeg[at + 1] not in (0xC0, 0xC1, 0xC2):
        at += 2 + struct.unpack_from(">H", jpeg, at + 2)[0]
    return jpeg[:at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9:]


def _record_set(folder: Path, payloads: list[bytes]) -> FaceRecordSet:
    records = [(key, pack_record(RecordHeader(0, (float(key),), key, 0), data)) for key, data in enumerate(payloads)]
    write_recordio(folder / "train.rec", records)
    return FaceRecordSet(folder / "train.rec")


def test_reliability_exif_orientation_is_applied_by_every_reader(tmp_path: Path) -> None:
    rgb = np.zeros((40, 64, 3), dtype=np.uint8)
    rgb[:10, :20] = (255, 0, 0)  # a red block top left: where it lands shows the rotation
    rgb[30:, 44:] = (0, 0, 255)
    data = _jpeg(rgb, orientation=6)  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))  # the pixels as stored, unrotated
    from_file = read_image(path)
    from_record = _record_set(tmp_path, [data]).image(0)
    assert from_file.shape == from_record.shape == (64, 40, 3)
    np.testing.assert_array_equal(from_file, np.rot90(stored, k=-1))
    np.testing.assert_array_equal(from_record, from_file)
    assert from_file[:10, -10:, 0].mean() > 200 and from_file[:10, -10:, 2].mean() < 50  # red now top right


@pytest.mark.parametrize("width, height, message", [
    (12_000, 10_000, "image is 12000x10000, over the 100000000 pixel limit"),  # read_image's limit
    (20_000, 20_000, r"image is too large \(Image size \(400000000 pixels\) exceeds"),  # PIL's own, past 179 M
])
def test_reliability_recordio_refuses_a_huge_header_before_decoding(tmp_path: Path, width: int, height: int,
                                                                   message: str) -> None:
    small = _jpeg(np.full((16, 16, 3), 128, dtype=np.uint8))
    faces = _record_set(tmp_path, [small, _claiming(small, width, height)])
    assert faces.image(0).shape == (16, 16, 3)
    started = time.perf_counter()
    with pytest.raises(DataError, match=rf"train\.rec#1: {message}"):
        faces.image(1)
    assert time.perf_counter() - started < 0.5  # refused from the header: decoding would take seconds and GBs
    path = tmp_path / "huge.jpg"
    path.write_bytes(_claiming(small, width, height))
    with pytest.raises(DataError, match=message):
        read_image(path)  # the same limit, the same message


def _people(root: Path, layout: dict[str, int]) -> None:
    for name, count in layout.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            (root / name / f"{i}.jpg").write_bytes(b"x")  # listing never decodes


def test_reliability_identity_links_never_lend_another_persons_photos(tmp_path: Path) -> None:
    root = tmp_path / "people"
    _people(root, {"Ann": 1, "Bob": 2, "Cid": 1})
    (root / "Ann" / "sub").mkdir()
    (root / "Ann" / "sub" / "deep.jpg").write_bytes(b"x")
    (root / "Ann" / "loop").symlink_to("..")  # a loop through the root: everyone's photos
    (root / "Ann" / "again").symlink_to("sub")  # a second path to her own photos
    (root / "Ann" / "bob.jpg").symlink_to("../Bob/0.jpg")  # a photo of someone else
    (root / "Ann" / "same.jpg").symlink_to("0.jpg")  # her own photo under another name: followed
    (root / "Ann" / "gone.jpg").symlink_to("missing.jpg")
    (root / "Dan").symlink_to("Cid")  # an identity that is another identity's folder
    elsewhere = tmp_path / "store" / "Eve"
    _people(tmp_path / "store", {"Eve": 2})
    (root / "Eve").symlink_to(elsewhere)  # an identity folder kept elsewhere: followed
    folder = IdentityFolder(root)
    assert folder.classes == ["Ann", "Bob", "Cid", "Eve"]
    listed = {(path.relative_to(root).as_posix(), folder.classes[label]) for path, label in folder.samples}
    assert listed == {("Ann/0.jpg", "Ann"), ("Ann/same.jpg", "Ann"), ("Ann/sub/deep.jpg", "Ann"),
                      ("Bob/0.jpg", "Bob"), ("Bob/1.jpg", "Bob"), ("Cid/0.jpg", "Cid"),
                      ("Eve/0.jpg", "Eve"), ("Eve/1.jpg", "Eve")}
    reasons = {Path(path).relative_to(root).as_posix(): reason for path, reason in folder.left_out().items()}
    assert sorted(reasons) == ["Ann/again", "Ann/bob.jpg", "Ann/gone.jpg", "Ann/loop", "Dan"]
    assert reasons["Ann/loop"] == f"link to the folder {root.resolve()}, outside Ann's folder: not followed"
    assert reasons["Ann/bob.jpg"] == f"link to {root.resolve() / 'Bob' / '0.jpg'}, outside Ann's folder: not followed"
    assert reasons["Ann/again"].endswith("inside Ann's folder: not followed")
    assert reasons["Dan"] == f"link to {root.resolve() / 'Cid'}, inside this tree: not followed"


def test_reliability_identity_empty_folder_is_named_with_its_reason(tmp_path: Path) -> None:
    _people(tmp_path, {"Ann": 2, "Bob": 0, "Cid": 1})
    (tmp_path / "Bob" / "notes.txt").write_text("no photos yet")
    folder = IdentityFolder(tmp_path, min_images=2)
    assert folder.classes == ["Ann"]
    assert folder.left_out() == {str(tmp_path / "Bob"): f"no images ({', '.join(IMAGE_EXTENSIONS)})",
                                 str(tmp_path / "Cid"): "1 image(s), fewer than min_images 2"}
    report = verify_identities(tmp_path)  # prepare_training_data.py --verify names it too
    assert report.status == "problems" and report.problems == [f"{tmp_path / 'Bob'}: left out (no images ("
                                                                f"{', '.join(IMAGE_EXTENSIONS)}))"]

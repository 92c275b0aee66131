"""Reliability of archive extraction: crafted malicious zips and tars are refused whole, good ones land atomically."""
from __future__ import annotations

import io
import json
import stat
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

import utils.archive as archive_module
from utils.archive import DEFAULT_LIMITS, MARKER_NAME, ExtractLimits, archive_format, extract_archive, read_marker
from utils.errors import DataError
from utils.hashing import hash_file

_TYPES = (tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE)


def _tar(path: Path, members: list[tuple], mode: str = "w:gz") -> Path:
    """Write a tar whose members are (name, bytes) files or (name, type, linkname) links/specials."""
    with tarfile.open(path, mode) as tar:
        for member in members:
            info = tarfile.TarInfo(member[0])
            if member[1] not in _TYPES:
                info.size = len(member[1])
                tar.addfile(info, io.BytesIO(member[1]))
            else:
                info.type = member[1]
                info.linkname = member[2] if len(member) > 2 else ""
                if member[1] == tarfile.DIRTYPE:
                    info.mode = 0o755
                tar.addfile(info)
    return path


def _zip(path: Path, members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, content in members.items():
            bundle.writestr(name, content)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            bundle.writestr(info, target)
    return path


def _tree(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` as relative path -> content (the marker left out)."""
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != MARKER_NAME}


GOOD = [("data/", tarfile.DIRTYPE), ("data/a.txt", b"alpha"), ("data/sub/b.txt", b"beta")]


@pytest.fixture
def work(tmp_path):
    """An archive folder and an output folder side by side, so escapes would be visible in ``tmp_path``."""
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    return tmp_path


def _assert_refused_cleanly(work: Path, target: Path) -> None:
    assert not target.exists()
    assert list((work / "out").iterdir()) == []  # no target, no temp folder, nothing escaped beside it
    assert sorted(p.name for p in work.iterdir()) == ["in", "out"]


# ---------------------------------------------------------------- good archives

@pytest.mark.parametrize("mode, name", [("w:gz", "x.tar.gz"), ("w", "x.tar"), ("w:bz2", "x.tbz"), ("w:xz", "x.txz"),
                                        ("w:gz", "misnamed.zip")])
def test_reliability_archive_tar_variants_by_content(work, mode, name):
    archive = _tar(work / "in" / name, GOOD, mode)
    assert archive_format(archive) == "tar"
    target = extract_archive(archive, work / "out" / "t")
    assert _tree(target) == {"data/a.txt": b"alpha", "data/sub/b.txt": b"beta"}
    record = read_marker(target)
    assert record["archive"] == name and record["format"] == "tar" and record["members"] == 3
    assert len(record["sha256"]) == 64 and len(record["md5"]) == 32
    assert [p.name for p in (work / "out").iterdir()] == ["t"]  # the temp folder was renamed, not copied


def test_reliability_archive_zip_by_content_with_strip(work):
    archive = _zip(work / "in" / "data.tar.gz", {"top/a.txt": b"alpha", "top/sub/b.txt": b"beta", "top/empty/": b""})
    assert archive_format(archive) == "zip"
    target = extract_archive(archive, work / "out" / "t", strip_components=1)
    assert _tree(target) == {"a.txt": b"alpha", "sub/b.txt": b"beta"}
    assert (target / "empty").is_dir()
    assert stat.S_IMODE(target.stat().st_mode) == 0o755


def test_reliability_archive_tar_strip_and_internal_hardlink(work):
    members = [("lfw/", tarfile.DIRTYPE), ("lfw/Ann/Ann_0001.jpg", b"ann"),
               ("lfw/Ann/Ann_0002.jpg", tarfile.LNKTYPE, "lfw/Ann/Ann_0001.jpg")]
    target = extract_archive(_tar(work / "in" / "lfw.tgz", members), work / "out" / "images", strip_components=1)
    assert _tree(target) == {"Ann/Ann_0001.jpg": b"ann", "Ann/Ann_0002.jpg": b"ann"}
    assert (target / "Ann" / "Ann_0002.jpg").stat().st_nlink == 2


def test_reliability_archive_strip_refuses_file_above_strip_depth(work):
    archive = _tar(work / "in" / "x.tgz", [("top/a.txt", b"a"), ("stray.txt", b"s")])
    with pytest.raises(DataError, match=r"x\.tgz: refused member 'stray\.txt': not inside 1 leading folder"):
        extract_archive(archive, work / "out" / "t", strip_components=1)
    _assert_refused_cleanly(work, work / "out" / "t")


# ---------------------------------------------------------------- malicious tars

@pytest.mark.parametrize("members, reason", [
    ([("/tmp/evil_abs.txt", b"x")], "absolute path"),
    ([("ok.txt", b"ok"), ("../evil.txt", b"x")], r"'\.\.' in its path"),
    ([("a/../../evil.txt", b"x")], r"'\.\.' in its path"),
    ([("link", tarfile.SYMTYPE, "/etc/passwd")], "symbolic link"),
    ([("link", tarfile.SYMTYPE, "../../outside")], "symbolic link"),
    ([("b.txt", b"b"), ("a/link", tarfile.SYMTYPE, "../b.txt")], "symbolic link"),  # inside, still refused
    ([("hard", tarfile.LNKTYPE, "/etc/passwd")], "hard link to '/etc/passwd' \\(absolute path\\)"),
    ([("hard", tarfile.LNKTYPE, "../outside.txt")], "hard link to '../outside.txt'"),
    ([("hard", tarfile.LNKTYPE, "not_stored.txt")], "not a file stored earlier"),
    ([("later", tarfile.LNKTYPE, "x.txt"), ("x.txt", b"x")], "not a file stored earlier"),
    ([("dev/null", tarfile.CHRTYPE)], "device file"),
    ([("dev/sda", tarfile.BLKTYPE)], "device file"),
    ([("pipe", tarfile.FIFOTYPE)], "FIFO"),
    ([(MARKER_NAME, b"{}")], "reserved"),
])
def test_reliability_archive_malicious_tar_refused_whole(work, members, reason):
    archive = _tar(work / "in" / "evil.tar.gz", [("first.txt", b"written first?")] + members)
    target = work / "out" / "t"
    with pytest.raises(DataError, match=reason) as caught:
        extract_archive(archive, target)
    assert str(caught.value).startswith(f"{archive}: refused member ") and "\n" not in str(caught.value)
    _assert_refused_cleanly(work, target)


def test_reliability_archive_data_filter_is_a_second_guard(work, monkeypatch):
    """With the policy check switched off, tarfile's data filter still stops an escaping link."""
    monkeypatch.setattr(archive_module, "_plan_tar", lambda members, archive, strip: list(members))
    archive = _tar(work / "in" / "evil.tgz", [("ok.txt", b"ok"), ("link", tarfile.SYMTYPE, "../../outside")])
    target = work / "out" / "t"
    with pytest.raises(DataError, match="refused member: 'link' would link to .* outside the destination"):
        extract_archive(archive, target)
    _assert_refused_cleanly(work, target)


# ---------------------------------------------------------------- malicious zips

@pytest.mark.parametrize("name, reason", [
    ("../evil.txt", r"'\.\.' in its path"),
    ("/abs/evil.txt", "absolute path"),
    ("..\\evil.txt", r"'\.\.' in its path"),
    ("C:/evil.txt", "absolute path"),
    ("a/./../../evil.txt", r"'\.\.' in its path"),
])
def test_reliability_archive_malicious_zip_names_refused(work, name, reason):
    archive = work / "in" / "evil.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("fine.txt", b"fine")
        bundle.writestr(zipfile.ZipInfo(name), b"x")  # ZipInfo keeps the crafted name as given
    assert any(info.filename.endswith("evil.txt") for info in zipfile.ZipFile(archive).infolist())
    with pytest.raises(DataError, match=reason):
        extract_archive(archive, work / "out" / "t")
    _assert_refused_cleanly(work, work / "out" / "t")


def test_reliability_archive_zip_symlink_and_special_refused(work):
    archive = _zip(work / "in" / "link.zip", {"a.txt": b"a"}, symlinks={"link": "/etc/passwd"})
    with pytest.raises(DataError, match="refused member 'link': symbolic link"):
        extract_archive(archive, work / "out" / "t")
    fifo = work / "in" / "fifo.zip"
    with zipfile.ZipFile(fifo, "w") as bundle:
        info = zipfile.ZipInfo("pipe")
        info.create_system = 3
        info.external_attr = (stat.S_IFIFO | 0o644) << 16
        bundle.writestr(info, b"")
    with pytest.raises(DataError, match="FIFO"):
        extract_archive(fifo, work / "out" / "t")
    _assert_refused_cleanly(work, work / "out" / "t")


# ---------------------------------------------------------------- broken input and idempotence

def test_reliability_archive_not_an_archive_and_missing(work):
    junk = work / "in" / "pairs.tgz"
    junk.write_bytes(b"10\t300\nAnn\t1\t2\n" * 50)
    with pytest.raises(DataError, match=r"pairs\.tgz: not a zip or tar archive"):
        extract_archive(junk, work / "out" / "t")
    with pytest.raises(DataError, match="archive not found"):
        extract_archive(work / "in" / "absent.zip", work / "out" / "t")
    _assert_refused_cleanly(work, work / "out" / "t")


@pytest.mark.parametrize("kind", ["tgz", "zip"])
def test_reliability_archive_truncated_leaves_no_target(work, kind):
    payload = bytes(range(256)) * 4000
    if kind == "tgz":
        archive = _tar(work / "in" / "x.tgz", [("big.bin", payload), ("after.txt", b"a")])
    else:
        archive = _zip(work / "in" / "x.zip", {"big.bin": payload, "after.txt": b"a"})
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) * 2 // 3] if kind == "tgz" else data[:-30])
    with pytest.raises(DataError, match="corrupt or truncated"):
        extract_archive(archive, work / "out" / "t")
    _assert_refused_cleanly(work, work / "out" / "t")


def test_reliability_archive_zip_crc_error_is_caught(work):
    archive = _zip(work / "in" / "x.zip", {"a.txt": b"A" * 1000})
    with zipfile.ZipFile(archive) as bundle:
        offset = bundle.infolist()[0].header_offset + 30 + len("a.txt")
    raw = bytearray(archive.read_bytes())
    raw[offset + 2] ^= 0xFF  # damage the compressed data, not the directory
    archive.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"x\.zip: corrupt or truncated zip archive"):
        extract_archive(archive, work / "out" / "t")
    _assert_refused_cleanly(work, work / "out" / "t")


def test_reliability_archive_idempotent_and_protective(work):
    archive = _tar(work / "in" / "x.tgz", GOOD)
    target = work / "out" / "t"
    extract_archive(archive, target)
    (target / "data" / "a.txt").write_bytes(b"edited by the user")
    assert extract_archive(archive, target) == target  # same archive: left as it is
    assert (target / "data" / "a.txt").read_bytes() == b"edited by the user"

    other = _tar(work / "in" / "y.tgz", [("other.txt", b"o")])
    with pytest.raises(DataError, match=r"holds an extraction of 'x\.tgz'"):
        extract_archive(other, target)
    with pytest.raises(DataError, match="holds an extraction"):
        extract_archive(archive, target, strip_components=1)  # same file, different layout

    by_hand = work / "out" / "by_hand"
    by_hand.mkdir()
    (by_hand / "mine.txt").write_text("keep")
    with pytest.raises(DataError, match=r"by_hand: exists but is not a complete extraction"):
        extract_archive(archive, by_hand)
    assert (by_hand / "mine.txt").read_text() == "keep"

    empty = work / "out" / "empty"
    empty.mkdir()
    assert _tree(extract_archive(archive, empty)) == {"data/a.txt": b"alpha", "data/sub/b.txt": b"beta"}


def test_reliability_archive_stale_temp_from_killed_run_is_cleared(work):
    stale = work / "out" / ".t.abc123.extracting"
    (stale / "data").mkdir(parents=True)
    (stale / "data" / "half.txt").write_bytes(b"half")
    target = extract_archive(_tar(work / "in" / "x.tgz", GOOD), work / "out" / "t")
    assert sorted(p.name for p in (work / "out").iterdir()) == ["t"]
    assert json.loads((target / MARKER_NAME).read_text())["members"] == 3


# ---------------------------------------------------------------- size limits (decompression bombs)

class _Zeros:
    """A file-like source of ``size`` zero bytes, read in chunks (the bomb is never held in memory)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        self.left -= size
        return bytes(size)


BOMB = 64 << 20  # expands 64 MiB from about 64 kB: 1,000x, well over the 100x default, past the 16 MiB floor


def _tar_bomb(path: Path) -> Path:
    with tarfile.open(path, "w:gz", compresslevel=6) as tar:
        tar.addfile(tarfile.TarInfo("first.txt"), io.BytesIO(b""))
        info = tarfile.TarInfo("zeros.bin")
        info.size = BOMB
        tar.addfile(info, _Zeros(BOMB))
    return path


def _zip_bomb(path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as bundle:
        bundle.writestr("first.txt", b"written first?")
        with bundle.open("zeros.bin", "w") as sink:
            source = _Zeros(BOMB)
            while chunk := source.read(1 << 20):
                sink.write(chunk)
    return path


@pytest.mark.parametrize("make, name", [(_tar_bomb, "bomb.tar.gz"), (_zip_bomb, "bomb.zip")])
def test_reliability_archive_bomb_refused_by_ratio_before_writing(work, make, name):
    archive = make(work / "in" / name)
    assert archive.stat().st_size < BOMB / 500
    target = work / "out" / "t"
    expected = r"refused: [\d,]+ bytes expand to 67,108,8\d\d \([\d,]+x\), over the 100x limit \(max_ratio\)"
    with pytest.raises(DataError, match=expected) as caught:
        extract_archive(archive, target)
    assert str(caught.value).startswith(f"{archive}: ") and "\n" not in str(caught.value)
    _assert_refused_cleanly(work, target)


def test_reliability_archive_total_size_limit_is_configurable(work):
    payload = np.random.default_rng(0).bytes(3000)  # incompressible: the ratio limit stays out of it
    archive = _tar(work / "in" / "x.tgz", [("a.bin", payload), ("b.bin", payload)])
    with pytest.raises(DataError, match=r"refused: members total 6,000 bytes, over the limit of 5,000 \(max_bytes"):
        extract_archive(archive, work / "out" / "t", limits=ExtractLimits(max_bytes=5000))
    _assert_refused_cleanly(work, work / "out" / "t")
    assert _tree(extract_archive(archive, work / "out" / "t", limits=ExtractLimits(max_bytes=6000)))["a.bin"] == payload


@pytest.mark.parametrize("kind", ["tgz", "zip"])
def test_reliability_archive_member_count_limit(work, kind):
    names = [f"d/{i}.txt" for i in range(20_000)]
    if kind == "tgz":
        archive = _tar(work / "in" / "many.tgz", [(name, b"") for name in names])
    else:
        archive = _zip(work / "in" / "many.zip", {name: b"" for name in names})
    with pytest.raises(DataError, match=r"refused: more than 10,000 members \(limit max_members"):
        extract_archive(archive, work / "out" / "t", limits=ExtractLimits(max_members=10_000))
    _assert_refused_cleanly(work, work / "out" / "t")


def test_reliability_archive_default_limits_fit_the_real_datasets():
    """The catalogue's largest archive (VGGFace2 train: 3.15 M members, about 38 GB of JPEGs) passes them."""
    assert DEFAULT_LIMITS.max_members >= 3_150_000 and DEFAULT_LIMITS.max_bytes >= 38e9
    assert DEFAULT_LIMITS.max_ratio >= 10  # JPEG archives expand about 1x, annotation zips about 5x


def test_reliability_archive_same_name_and_size_other_content_is_extracted_again(work):
    archive = _tar(work / "in" / "x.tar", [("data/a.txt", b"alpha")], mode="w")
    target = extract_archive(archive, work / "out" / "t")
    size = archive.stat().st_size
    _tar(archive, [("data/a.txt", b"omega")], mode="w")  # replaced: same name, same size, other bytes
    assert archive.stat().st_size == size
    assert _tree(extract_archive(archive, target)) == {"data/a.txt": b"omega"}
    assert read_marker(target)["sha256"] == hash_file(archive)["sha256"]
    assert sorted(p.name for p in (work / "out").iterdir()) == ["t"]  # the old extraction is gone
    renamed = archive.rename(work / "in" / "y.tar")
    assert extract_archive(renamed, target) == target  # same content under another name: already extracted

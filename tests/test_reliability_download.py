"""Reliability of downloads and dataset fetching, against a loopback HTTP server that misbehaves on purpose."""
from __future__ import annotations

import hashlib
import io
import json
import random
import re
import tarfile
import time
import zipfile

import pytest

from datasets.sources import (
    SOURCES,
    DatasetSource,
    Mirror,
    RemoteFile,
    fetch_source,
    missing_paths,
)
from tests.http_fixture import LoopbackServer, dead_url
from utils.archive import MARKER_NAME
from utils.download import MAX_BACKOFF_S, DownloadError, download, part_path, retry_delay
from utils.errors import DataError, ToolkitError

DATA = bytes(range(256)) * 1200  # 307,200 bytes, position-dependent so misplaced resumes are caught
SHA256 = hashlib.sha256(DATA).hexdigest()
MD5 = hashlib.md5(DATA).hexdigest()
FAST = {"backoff": 0.001, "progress": False, "chunk_size": 8192}


@pytest.fixture
def server():
    """A fresh loopback server per test."""
    with LoopbackServer() as running:
        yield running


def test_reliability_download_plain_verifies_and_leaves_no_part(server, tmp_path):
    server.add("/f.bin", DATA)
    dest = tmp_path / "sub" / "f.bin"
    assert download(server.url("/f.bin"), dest, sha256=SHA256, md5=MD5, size=len(DATA), **FAST) == dest
    assert dest.read_bytes() == DATA
    assert not part_path(dest).exists()
    assert [entry.range for entry in server.log] == [None]


def test_reliability_download_resumes_with_range_after_a_cut(server, tmp_path):
    server.add("/f.bin", DATA, cut_after=100_000)
    dest = tmp_path / "f.bin"
    download(server.url("/f.bin"), dest, sha256=SHA256, **FAST)
    assert dest.read_bytes() == DATA
    first, second = server.log
    assert first.range is None and first.body_bytes == 100_000
    resumed_at = int(re.fullmatch(r"bytes=(\d+)-", second.range).group(1))
    assert 0 < resumed_at <= 100_000
    assert second.status == 206 and second.body_bytes == len(DATA) - resumed_at


def test_reliability_download_later_call_resumes_the_part_file(server, tmp_path):
    server.add("/f.bin", DATA, cut_after=120_000)
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match=r"gave up after 1 failed attempt\(s\): transfer cut") as caught:
        download(server.url("/f.bin"), dest, sha256=SHA256, retries=0, **FAST)
    kept = part_path(dest).stat().st_size
    assert 0 < kept <= 120_000 and not dest.exists()
    assert f"({kept} bytes kept in f.bin.part to resume)" in str(caught.value)
    download(server.url("/f.bin"), dest, sha256=SHA256, retries=0, **FAST)
    assert dest.read_bytes() == DATA
    assert server.log[-1].range == f"bytes={kept}-" and server.log[-1].body_bytes == len(DATA) - kept


def test_reliability_download_restarts_when_server_ignores_range(server, tmp_path):
    server.add("/f.bin", DATA, ignore_range=True)
    dest = tmp_path / "f.bin"
    part_path(dest).write_bytes(DATA[:50_000])
    download(server.url("/f.bin"), dest, sha256=SHA256, **FAST)
    assert dest.read_bytes() == DATA  # not the 50,000 old bytes followed by the whole file again
    assert server.log[0].range == "bytes=50000-" and server.log[0].status == 200


def test_reliability_download_416_on_complete_part_is_verified_and_kept(server, tmp_path):
    server.add("/f.bin", DATA)
    dest = tmp_path / "f.bin"
    part_path(dest).write_bytes(DATA)
    download(server.url("/f.bin"), dest, sha256=SHA256, **FAST)
    assert dest.read_bytes() == DATA
    assert [(entry.range, entry.status) for entry in server.log] == [(f"bytes={len(DATA)}-", 416)]


def test_reliability_download_416_on_bad_complete_part_deletes_it_and_says_so(server, tmp_path):
    server.add("/f.bin", DATA)
    dest = tmp_path / "f.bin"
    part_path(dest).write_bytes(bytes(len(DATA)))
    with pytest.raises(DownloadError, match="sha256 mismatch") as caught:
        download(server.url("/f.bin"), dest, sha256=SHA256, **FAST)
    assert SHA256 in str(caught.value)
    assert not part_path(dest).exists() and not dest.exists()


def test_reliability_download_overlong_part_restarts_from_zero(server, tmp_path):
    server.add("/f.bin", DATA)
    dest = tmp_path / "f.bin"
    part_path(dest).write_bytes(DATA + b"junk")
    download(server.url("/f.bin"), dest, sha256=SHA256, **FAST)
    assert dest.read_bytes() == DATA
    assert [entry.status for entry in server.log] == [416, 200]


def test_reliability_download_wrong_bytes_leave_nothing_and_name_url_expected_got(server, tmp_path):
    server.add("/f.bin", DATA, corrupt=True)
    dest = tmp_path / "f.bin"
    url = server.url("/f.bin")
    with pytest.raises(DownloadError) as caught:
        download(url, dest, sha256=SHA256, **FAST)
    message = str(caught.value)
    got = hashlib.sha256(bytes(b ^ 0xFF for b in DATA)).hexdigest()
    assert message.startswith(url) and f"expected {SHA256}" in message and f"got {got}" in message
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []
    assert isinstance(caught.value, DataError) and isinstance(caught.value, ToolkitError)


def test_reliability_download_md5_mismatch_is_caught_too(server, tmp_path):
    server.add("/f.bin", DATA)
    with pytest.raises(DownloadError, match=f"md5 mismatch: expected {'0' * 32}, got {MD5}"):
        download(server.url("/f.bin"), tmp_path / "f.bin", md5="0" * 32, **FAST)
    assert list(tmp_path.iterdir()) == []


def test_reliability_download_size_mismatch_is_refused(server, tmp_path):
    server.add("/f.bin", DATA)
    with pytest.raises(DownloadError, match=f"expected {len(DATA) + 1} bytes"):
        download(server.url("/f.bin"), tmp_path / "f.bin", size=len(DATA) + 1, **FAST)
    assert not (tmp_path / "f.bin").exists()


def test_reliability_download_404_fails_at_once_naming_url_and_status(server, tmp_path):
    url = server.url("/missing.bin")
    started = time.monotonic()
    with pytest.raises(DownloadError) as caught:
        download(url, tmp_path / "f.bin", retries=5, backoff=1.0, progress=False)
    assert time.monotonic() - started < 1.0  # no backoff sleeps: 404 is not retried
    assert str(caught.value) == f"{url}: HTTP 404 Not Found"
    assert len(server.log) == 1


def test_reliability_download_retries_5xx_then_succeeds(server, tmp_path):
    server.add("/f.bin", DATA, fail_status=503, fail_count=2)
    download(server.url("/f.bin"), tmp_path / "f.bin", sha256=SHA256, retries=2, **FAST)
    assert [entry.status for entry in server.log] == [503, 503, 200]


def test_reliability_download_retries_429_and_408(server, tmp_path):
    server.add("/a", DATA, fail_status=429, fail_count=1, retry_after=0)
    server.add("/b", DATA, fail_status=408, fail_count=1)
    download(server.url("/a"), tmp_path / "a", sha256=SHA256, retries=1, **FAST)
    download(server.url("/b"), tmp_path / "b", sha256=SHA256, retries=1, **FAST)
    assert [entry.status for entry in server.log] == [429, 200, 408, 200]


def test_reliability_download_persistent_500_gives_up_after_retries(server, tmp_path):
    url = server.url("/f.bin")
    server.add("/f.bin", DATA, fail_status=500, fail_count=10**6)
    with pytest.raises(DownloadError) as caught:
        download(url, tmp_path / "f.bin", retries=3, **FAST)
    assert str(caught.value) == f"{url}: gave up after 4 failed attempt(s): HTTP 500 Internal Server Error"
    assert len(server.log) == 4
    assert not (tmp_path / "f.bin").exists()


def test_reliability_download_dead_server_clear_error_after_retries(tmp_path):
    url = dead_url("/lfw.tgz")
    started = time.monotonic()
    with pytest.raises(DownloadError) as caught:
        download(url, tmp_path / "lfw.tgz", retries=2, **FAST)
    assert time.monotonic() - started < 5.0
    message = str(caught.value)
    assert message == f"{url}: gave up after 3 failed attempt(s): ConnectionError: Connection refused"
    assert not (tmp_path / "lfw.tgz").exists()


def test_reliability_download_read_timeout_is_retried(server, tmp_path):
    route = server.add("/f.bin", DATA, stall_s=0.6, stall_count=1)
    download(server.url("/f.bin"), tmp_path / "f.bin", sha256=SHA256, timeout=0.2, retries=1, **FAST)
    assert (tmp_path / "f.bin").read_bytes() == DATA
    assert route.requests == 2


def test_reliability_download_several_cuts_each_resume_where_the_last_stopped(server, tmp_path):
    route = server.add("/f.bin", DATA, cut_after=60_000, cut_count=3)
    download(server.url("/f.bin"), tmp_path / "f.bin", sha256=SHA256, retries=3, **FAST)
    assert (tmp_path / "f.bin").read_bytes() == DATA and route.requests == 4
    starts = [int(entry.range.split("=")[1].rstrip("-")) for entry in server.log[1:]]
    assert starts == sorted(starts) and len(set(starts)) == 3 and starts[-1] >= 3 * 60_000 - 3 * 8192


def test_reliability_download_existing_verified_dest_makes_no_request(server, tmp_path):
    server.add("/f.bin", DATA)
    dest = tmp_path / "f.bin"
    dest.write_bytes(DATA)
    download(server.url("/f.bin"), dest, sha256=SHA256, **FAST)
    assert server.log == []
    dest.write_bytes(b"stale")  # an existing file that does not verify is replaced
    download(server.url("/f.bin"), dest, sha256=SHA256, **FAST)
    assert dest.read_bytes() == DATA and len(server.log) == 1


def test_reliability_download_progress_bar_reports_bytes(server, tmp_path, capsys):
    server.add("/f.bin", DATA)
    download(server.url("/f.bin"), tmp_path / "named.bin", backoff=0.001, progress=True)
    err = capsys.readouterr().err
    assert "named.bin" in err and "300k" in err


def test_reliability_retry_delay_is_exponential_and_capped():
    assert [retry_delay(n, 0.5) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert retry_delay(30, 0.5) == MAX_BACKOFF_S
    assert retry_delay(5, 1.0, cap=3.0) == 3.0


# ---------------------------------------------------------------- fetch_source end to end

def _tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, content in files.items():
            bundle.writestr(name, content)
    return buffer.getvalue()


IMAGES = {"toy/Ann/Ann_0001.jpg": b"ann-1", "toy/Ann/Ann_0002.jpg": b"ann-2", "toy/Bob/Bob_0001.jpg": b"bob-1"}
PAIRS = b"1\t1\nAnn\t1\t2\nAnn\t1\tBob\t1\n"


def _toy_source(server: LoopbackServer, tarball: bytes, pairs: bytes, *, first_mirror_404: bool = False,
                pairs_checksum: bool = True) -> DatasetSource:
    server.add("/toy.tgz", tarball)
    server.add("/pairs.txt", pairs)
    mirrors = (Mirror(server.url("/moved/toy.tgz")),) if first_mirror_404 else ()
    mirrors += (Mirror(server.url("/toy.tgz"), sha256=hashlib.sha256(tarball).hexdigest()),)
    return DatasetSource(
        name="toy", title="Toy faces", folder="toy_faces", homepage="http://example.invalid/",
        layout="toy_faces/images/<Name>/<Name>_<NNNN>.jpg and toy_faces/pairs.txt",
        required=("images", "pairs.txt"),
        files=(
            RemoteFile("toy.tgz", place="images", mirrors=mirrors, extract=True, strip_components=1),
            RemoteFile("pairs.txt", place="pairs.txt", mirrors=(Mirror(server.url("/pairs.txt")),),
                       md5=hashlib.md5(pairs).hexdigest() if pairs_checksum else None),
        ),
    )


def test_reliability_fetch_source_end_to_end_then_idempotent(server, tmp_path):
    tarball = _tar_gz(IMAGES)
    source = _toy_source(server, tarball, PAIRS, first_mirror_404=True)
    lines: list[str] = []
    result = fetch_source(source, tmp_path, log=lines.append, backoff=0.001, progress=False)
    folder = tmp_path / "toy_faces"
    assert result.complete and result.fetched == ["toy.tgz", "pairs.txt"] and result.folder == folder
    assert (folder / "images" / "Ann" / "Ann_0002.jpg").read_bytes() == b"ann-2"
    assert (folder / "images" / "Bob" / "Bob_0001.jpg").read_bytes() == b"bob-1"
    assert (folder / "pairs.txt").read_bytes() == PAIRS
    assert (folder / "images" / MARKER_NAME).is_file()
    assert any("HTTP 404" in line for line in lines)  # the dead first mirror was reported, then skipped
    manifest = json.loads((tmp_path / "downloads" / "manifest.json").read_text())
    assert manifest["toy/toy.tgz"]["sha256"] == hashlib.sha256(tarball).hexdigest()
    assert manifest["toy/toy.tgz"]["url"] == server.url("/toy.tgz")
    requests_before = len(server.log)
    again = fetch_source(source, tmp_path, log=lines.append, backoff=0.001, progress=False)
    assert again.complete and again.fetched == [] and again.present == ["toy.tgz", "pairs.txt"]
    assert len(server.log) == requests_before  # nothing downloaded the second time


def test_reliability_fetch_source_resumes_an_interrupted_archive(server, tmp_path):
    noise = random.Random(0)
    # 3 MB of incompressible members: larger than fetch_source's 1 MiB read chunk, so the cut leaves bytes to keep
    tarball = _tar_gz({f"toy/P{i}/P{i}_0001.jpg": noise.randbytes(100_000) for i in range(30)})
    source = _toy_source(server, tarball, PAIRS)
    server.add("/toy.tgz", tarball, cut_after=len(tarball) // 2)
    result = fetch_source(source, tmp_path, log=lambda line: None, backoff=0.001, progress=False)
    assert result.complete
    with tarfile.open(fileobj=io.BytesIO(tarball)) as tar:
        expected = tar.extractfile("toy/P29/P29_0001.jpg").read()
    assert (tmp_path / "toy_faces" / "images" / "P29" / "P29_0001.jpg").read_bytes() == expected
    resumed = [entry for entry in server.log if entry.path == "/toy.tgz" and entry.range]
    assert len(resumed) == 1 and resumed[0].status == 206


def test_reliability_fetch_source_resumes_from_the_mirror_that_began(server, tmp_path):
    blob = random.Random(1).randbytes(3_000_000)
    digest = hashlib.sha256(blob).hexdigest()
    route_a = server.add("/a/blob.bin", blob, cut_after=1_500_000, cut_count=1)
    server.add("/b/blob.bin", blob, corrupt=True)  # a second mirror serving other bytes
    mirrors = (Mirror(server.url("/a/blob.bin")), Mirror(server.url("/b/blob.bin")))
    source = DatasetSource(
        name="blob", title="Blob", folder="Blob", homepage="http://example.invalid/", layout="Blob/blob.bin",
        required=("blob.bin",), files=(RemoteFile("blob.bin", place="blob.bin", mirrors=mirrors, sha256=digest),),
    )
    with pytest.raises(DataError, match="could not be fetched from any of 2 mirror"):
        fetch_source(source, tmp_path, log=lambda line: None, retries=0, backoff=0.001, progress=False)
    kept = list((tmp_path / "Blob").glob(".blob.bin.*.part"))
    assert len(kept) == 1  # mirror A's bytes, kept to resume; mirror B's wrong bytes were deleted
    kept_bytes = kept[0].stat().st_size
    assert kept_bytes >= 1_000_000
    result = fetch_source(source, tmp_path, log=lambda line: None, retries=0, backoff=0.001, progress=False)
    assert result.complete and (tmp_path / "Blob" / "blob.bin").read_bytes() == blob
    assert [entry.path for entry in server.log] == ["/a/blob.bin", "/b/blob.bin", "/a/blob.bin"]
    assert route_a.requests == 2 and server.log[-1].range == f"bytes={kept_bytes}-"
    assert server.log[-1].status == 206 and server.log[-1].body_bytes == len(blob) - kept_bytes
    assert sorted(p.name for p in (tmp_path / "Blob").iterdir()) == ["blob.bin"]


def test_reliability_fetch_source_bad_checksum_places_nothing(server, tmp_path):
    tarball = _tar_gz(IMAGES)
    source = _toy_source(server, tarball, PAIRS)
    server.add("/toy.tgz", tarball, corrupt=True)
    with pytest.raises(DataError, match="sha256 mismatch") as caught:
        fetch_source(source, tmp_path, log=lambda line: None, backoff=0.001, progress=False)
    assert "toy.tgz" in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "toy_faces").exists()
    assert not list((tmp_path / "downloads" / "toy").glob("toy.tgz*"))


def test_reliability_fetch_source_refuses_tampered_present_file(server, tmp_path):
    source = _toy_source(server, _tar_gz(IMAGES), PAIRS)
    fetch_source(source, tmp_path, log=lambda line: None, backoff=0.001, progress=False)
    (tmp_path / "toy_faces" / "pairs.txt").write_bytes(PAIRS + b"Ann\t1\t1\n")
    with pytest.raises(DataError, match=r"pairs\.txt.*checksum mismatch for pairs\.txt"):
        fetch_source(source, tmp_path, log=lambda line: None, backoff=0.001, progress=False)


def test_reliability_fetch_source_trust_on_first_use_without_checksum(server, tmp_path):
    source = _toy_source(server, _tar_gz(IMAGES), PAIRS, pairs_checksum=False)
    lines: list[str] = []
    fetch_source(source, tmp_path, log=lines.append, backoff=0.001, progress=False)
    assert any("no published checksum" in line and "pairs.txt" in line for line in lines)
    recorded = json.loads((tmp_path / "downloads" / "manifest.json").read_text())["toy/pairs.txt"]
    assert recorded["sha256"] == hashlib.sha256(PAIRS).hexdigest() and recorded["size"] == len(PAIRS)
    (tmp_path / "toy_faces" / "pairs.txt").write_bytes(b"10\t300\n")
    with pytest.raises(DataError, match="differs from the copy recorded on first download"):
        fetch_source(source, tmp_path, log=lambda line: None, backoff=0.001, progress=False)


def test_reliability_fetch_source_manual_archive_missing_then_dropped_in(tmp_path):
    archive = _zip({"WIDER_train/images/0--Parade/0_1.jpg": b"jpeg", "WIDER_train/images/1--Handshaking/1_1.jpg": b"j"})
    source = DatasetSource(
        name="manual", title="Manual set", folder="Manual", homepage="http://example.invalid/",
        layout="Manual/WIDER_train/images/<event>/<image>.jpg", required=("WIDER_train/images",),
        files=(RemoteFile("WIDER_train.zip", place="WIDER_train", md5=hashlib.md5(archive).hexdigest(),
                          extract=True, strip_components=1),),
        instructions="Download WIDER_train.zip by hand.",
    )
    lines: list[str] = []
    result = fetch_source(source, tmp_path, log=lines.append, progress=False)
    assert not result.complete and result.missing == ["WIDER_train/images"] and result.fetched == []
    assert any("Download WIDER_train.zip by hand." in line and "Expected layout" in line for line in lines)
    (tmp_path / "Manual").mkdir()
    (tmp_path / "Manual" / "WIDER_train.zip").write_bytes(archive)
    result = fetch_source(source, tmp_path, log=lines.append, progress=False)
    assert result.complete and result.fetched == ["WIDER_train.zip"]
    assert (tmp_path / "Manual" / "WIDER_train" / "images" / "0--Parade" / "0_1.jpg").read_bytes() == b"jpeg"
    # a folder extracted by hand (no marker) counts as present and is left as it is, even beside a wrong zip
    (tmp_path / "Manual" / "WIDER_train.zip").write_bytes(archive + b"x")
    (tmp_path / "Manual" / "WIDER_train" / MARKER_NAME).unlink()
    result = fetch_source(source, tmp_path, log=lines.append, progress=False)
    assert result.complete and result.present == ["WIDER_train.zip"]
    assert any("without an extraction marker" in line for line in lines)


def test_reliability_fetch_source_manual_archive_with_wrong_md5_is_refused(tmp_path):
    archive = _zip({"WIDER_val/images/a.jpg": b"x"})
    source = DatasetSource(
        name="manual", title="Manual set", folder="Manual", homepage="http://example.invalid/",
        layout="Manual/WIDER_val/images/...", required=("WIDER_val/images",),
        files=(RemoteFile("WIDER_val.zip", place="WIDER_val", md5="0" * 32, extract=True, strip_components=1),),
        instructions="by hand",
    )
    dropped = tmp_path / "downloads" / "manual" / "WIDER_val.zip"
    dropped.parent.mkdir(parents=True)
    dropped.write_bytes(archive)
    with pytest.raises(DataError, match=f"WIDER_val.zip: checksum mismatch.*md5 {'0' * 32}"):
        fetch_source(source, tmp_path, log=lambda line: None, progress=False)
    assert not (tmp_path / "Manual" / "WIDER_val").exists()


def test_reliability_fetch_source_all_mirrors_dead_is_one_clear_line(tmp_path):
    source = DatasetSource(
        name="gone", title="Gone", folder="Gone", homepage="http://example.invalid/", layout="Gone/x.txt",
        required=("x.txt",), files=(RemoteFile("x.txt", place="x.txt", mirrors=(Mirror(dead_url("/x.txt")),)),),
    )
    with pytest.raises(DataError) as caught:
        fetch_source(source, tmp_path, log=lambda line: None, retries=1, backoff=0.001, progress=False)
    message = str(caught.value)
    assert "could not be fetched from any of 1 mirror(s)" in message and "Connection refused" in message
    assert "\n" not in message and not (tmp_path / "Gone" / "x.txt").exists()


# ---------------------------------------------------------------- the catalogue itself

def test_reliability_catalogue_entries_are_well_formed():
    hex_of = {"sha256": 64, "md5": 32}
    folders = [source.folder for source in SOURCES.values()]
    assert len(set(folders)) == len(folders)
    assert {"lfw", "wider_face", "vggface2", "celeba", "ms_celeb_1m", "casia_webface"} <= set(SOURCES)
    for name, source in SOURCES.items():
        assert source.name == name and source.layout and source.homepage.startswith("http") and source.required
        if not source.direct:
            assert source.instructions, name
        for item in source.files:
            assert item.extract or not item.strip_components
            for entry in item.known_checksums():
                for algorithm, value in entry.items():
                    assert re.fullmatch(f"[0-9a-f]{{{hex_of[algorithm]}}}", value), (name, item.filename)
            for mirror in item.mirrors:
                assert mirror.url.startswith(("http://", "https://")), mirror.url
                assert item.expected_from(mirror)["sha256"] or item.expected_from(mirror)["md5"], mirror.url
    assert SOURCES["lfw"].direct and [f.filename for f in SOURCES["lfw"].files] == ["lfw.tgz", "pairs.txt"]
    wider = {f.filename: f for f in SOURCES["wider_face"].files}
    assert wider["wider_face_split.zip"].mirrors and not wider["WIDER_train.zip"].mirrors


def test_reliability_missing_paths_treats_empty_folders_as_missing(tmp_path):
    source = SOURCES["casia_webface"]
    assert missing_paths(source, tmp_path) == ["."]
    (tmp_path / "CASIA-WebFace").mkdir()
    assert missing_paths(source, tmp_path) == ["."]
    (tmp_path / "CASIA-WebFace" / "0000045").mkdir()
    assert missing_paths(source, tmp_path) == []


def test_reliability_download_stops_a_server_streaming_past_the_known_size(server, tmp_path):
    """100 MB without Content-Length for a file known to hold 1,000 bytes: stopped at the first chunk past it."""
    route = server.add("/f.bin", b"x" * 1000, endless=100 << 20)
    dest = tmp_path / "f.bin"
    started = time.monotonic()
    with pytest.raises(DownloadError, match="sent more than the expected 1000 bytes; stopped"):
        download(server.url("/f.bin"), dest, size=1000, retries=0, progress=False)
    assert time.monotonic() - started < 5
    assert list(tmp_path.iterdir()) == []  # no dest, no part file
    time.sleep(0.2)  # let the server notice the closed connection
    assert route.sent < 32 << 20, f"the client read on: {route.sent:,} bytes were sent"

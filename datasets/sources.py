"""Catalogue of the public face datasets the toolkit knows, and :func:`fetch_source` to fetch and place one.

Each :class:`DatasetSource` says which folder under ``training_data/`` it lives in, the exact layout the
readers expect there, which files can be downloaded directly (URLs with the checksums their publishers or
long-standing libraries give) and, for what needs registration, how to get it and where to put it.

Checksums: a file is accepted when it matches a checksum published for it (any mirror's); where none is
known, the sha256 and size of the first copy fetched are recorded in ``<data_root>/downloads/manifest.json``
and later copies must match that record (trust on first use). Each mirror downloads into its own hidden file,
so an interrupted transfer is resumed later from the mirror that began it.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.archive import extract_archive, read_marker
from utils.atomic import atomic_write_text
from utils.download import download, part_path
from utils.errors import DataError
from utils.hashing import hash_file

DOWNLOADS_FOLDER = "downloads"  # under the data root: downloaded archives and manifest.json
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class Mirror:
    """One URL a file can be downloaded from, with the checksums known for what that URL serves."""

    url: str
    sha256: str | None = None
    md5: str | None = None


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: where it comes from, how it is checked, and where it goes in the dataset folder.

    ``place`` is relative to the dataset folder: the file's own path, or for an archive (``extract``) the folder
    it is extracted into, after dropping ``strip_components`` leading folders of every member. No mirrors
    means it must be downloaded by hand (registration) and dropped into ``downloads/<source>/`` or the
    dataset folder; ``sha256``/``md5`` are the published checksums of the file whatever its origin.
    """

    filename: str
    place: str
    mirrors: tuple[Mirror, ...] = ()
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None
    extract: bool = False
    strip_components: int = 0

    def known_checksums(self) -> list[dict[str, str]]:
        """Every published checksum set for this file (its own and each mirror's); empty when none is known."""
        sets = [{"sha256": self.sha256, "md5": self.md5}]
        sets += [{"sha256": mirror.sha256, "md5": mirror.md5} for mirror in self.mirrors]
        cleaned = [{name: value.lower() for name, value in entry.items() if value} for entry in sets]
        return [entry for entry in cleaned if entry]

    def expected_from(self, mirror: Mirror) -> dict[str, str | None]:
        """The checksums a download from ``mirror`` must match: the mirror's own, else the file's."""
        if mirror.sha256 or mirror.md5:
            return {"sha256": mirror.sha256, "md5": mirror.md5}
        return {"sha256": self.sha256, "md5": self.md5}


@dataclass(frozen=True)
class DatasetSource:
    """A dataset the toolkit knows: its folder under the data root, expected layout, and how to obtain it."""

    name: str
    title: str
    folder: str
    homepage: str
    layout: str
    required: tuple[str, ...]
    files: tuple[RemoteFile, ...] = ()
    instructions: str = ""
    alternates: tuple[str, ...] = ()

    @property
    def direct(self) -> bool:
        """True when everything required can be downloaded without registration."""
        return bool(self.files) and all(item.mirrors for item in self.files) and not self.instructions


@dataclass
class FetchResult:
    """What :func:`fetch_source` did: files fetched now, files already present, required paths still missing."""

    source: DatasetSource
    folder: Path
    fetched: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every path the readers need is in place."""
        return not self.missing


LFW = DatasetSource(
    name="lfw",
    title="Labeled Faces in the Wild (LFW)",
    folder="lfw",
    homepage="https://vis-www.cs.umass.edu/lfw/",
    layout=(
        "lfw/images/<Name>/<Name>_<NNNN>.jpg (13,233 images of 5,749 people, 250x250) and lfw/pairs.txt "
        "(View 2: a header line '10 300', then 10 folds of 300 same-person and 300 different-person pairs)"
    ),
    required=("images", "pairs.txt"),
    files=(
        RemoteFile(
            "lfw.tgz", place="images", extract=True, strip_components=1,
            mirrors=(
                Mirror("https://ndownloader.figshare.com/files/5976018",
                       sha256="055f7d9c632d7370e6fb4afc7468d40f970c34a80d4c6f50ffec63f5a8d536c0"),
                Mirror("http://vis-www.cs.umass.edu/lfw/lfw.tgz", md5="a17d05bd522c52d84eca14327a23d494"),
            ),
        ),
        RemoteFile(
            "pairs.txt", place="pairs.txt",
            mirrors=(
                Mirror("https://ndownloader.figshare.com/files/5976006",
                       sha256="ea42330c62c92989f9d7c03237ed5d591365e89b3e649747777b70e692dc1592"),
                Mirror("http://vis-www.cs.umass.edu/lfw/pairs.txt", md5="9f1ba174e4e1c508ff7cdf10ac338a7d"),
            ),
        ),
    ),
    alternates=("https://www.kaggle.com/datasets/jessicali9530/lfw-dataset (login needed; different folder names)",),
)

WIDER_FACE = DatasetSource(
    name="wider_face",
    title="WIDER FACE",
    folder="WIDER_FACE",
    homepage="http://shuoyang1213.me/WIDERFACE/",
    layout=(
        "WIDER_FACE/wider_face_split/wider_face_{train,val}_bbx_gt.txt (+ wider_face_test_filelist.txt, readme.txt), "
        "WIDER_FACE/WIDER_train/images/<event>/<image>.jpg (12,880 images), "
        "WIDER_FACE/WIDER_val/images/<event>/<image>.jpg (3,226 images), optional WIDER_FACE/WIDER_test/images/..."
    ),
    required=("wider_face_split/wider_face_train_bbx_gt.txt", "WIDER_train/images", "WIDER_val/images"),
    files=(
        RemoteFile(
            "wider_face_split.zip", place="wider_face_split", extract=True, strip_components=1,
            md5="0e3767bcf0e326556d407bf5bff5d27c",
            mirrors=(
                Mirror("http://shuoyang1213.me/WIDERFACE/support/bbx_annotation/wider_face_split.zip"),
                Mirror("http://mmlab.ie.cuhk.edu.hk/projects/WIDERFace/support/bbx_annotation/wider_face_split.zip"),
                Mirror("https://dataset.bj.bcebos.com/wider_face/wider_face_split.zip"),
            ),
        ),
        RemoteFile("WIDER_train.zip", place="WIDER_train", extract=True, strip_components=1,
                   md5="3fedf70df600953d25982bcd13d91ba2"),
        RemoteFile("WIDER_val.zip", place="WIDER_val", extract=True, strip_components=1,
                   md5="dfa7d7e790efa35df3788964cf0bbaea"),
        RemoteFile("WIDER_test.zip", place="WIDER_test", extract=True, strip_components=1,
                   md5="e5d8f4248ed24c334bbd12f49c29dd40"),
    ),
    instructions=(
        "The annotations are fetched automatically. The images are shared through Google Drive links on the "
        "homepage (no direct URL): download WIDER_train.zip and WIDER_val.zip (WIDER_test.zip optional) and put "
        "them in training_data/downloads/wider_face/ or training_data/WIDER_FACE/; the next run checks their md5 "
        "and extracts them (or extract them yourself so that the layout above holds)."
    ),
    alternates=("https://dataset.bj.bcebos.com/wider_face/WIDER_train.zip (unofficial mirror; verified by md5)",
                "https://huggingface.co/datasets/CUHK-CSE/wider_face"),
)

VGGFACE2 = DatasetSource(
    name="vggface2",
    title="VGGFace2",
    folder="VGGFace2",
    homepage="https://www.robots.ox.ac.uk/~vgg/data/vgg_face2/",
    layout=(
        "VGGFace2/train/<class_id>/<image>.jpg (8,631 identities, class ids like n000002) and "
        "VGGFace2/test/<class_id>/<image>.jpg (500 identities); optional VGGFace2/identity_meta.csv and "
        "VGGFace2/bb_landmark/loose_bb_{train,test}.csv, loose_landmark_{train,test}.csv"
    ),
    required=("train",),
    instructions=(
        "Needs registration and acceptance of its licence (the Oxford page has at times stopped distributing it; "
        "use a copy obtained under its terms). Extract vggface2_train.tar.gz and vggface2_test.tar.gz so that the "
        "identity folders sit directly under VGGFace2/train/ and VGGFace2/test/."
    ),
)

CELEBA = DatasetSource(
    name="celeba",
    title="CelebFaces Attributes (CelebA)",
    folder="CelebA",
    homepage="https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html",
    layout=(
        "CelebA/img_celeba/<NNNNNN>.jpg (202,599 in-the-wild images), CelebA/list_bbox_celeba.txt, "
        "CelebA/list_landmarks_celeba.txt (in-the-wild 5-point landmarks), optional CelebA/identity_CelebA.txt "
        "(image -> identity, 10,177 identities) and CelebA/list_eval_partition.txt"
    ),
    required=("img_celeba", "list_bbox_celeba.txt", "list_landmarks_celeba.txt"),
    instructions=(
        "Agree to the terms on the homepage, then download from its Google Drive (or Baidu) folder: "
        "Img/img_celeba.7z (split into parts; extract with 7-Zip: '7z x img_celeba.7z.001') and the text files "
        "from Anno/ and Eval/, and put them all directly in CelebA/ as above (not in Img/, Anno/, Eval/). "
        "The aligned img_align_celeba.zip does not match list_bbox_celeba.txt and is not what is needed."
    ),
)

MS_CELEB_1M = DatasetSource(
    name="ms_celeb_1m",
    title="MS-Celeb-1M",
    folder="MS-Celeb-1M",
    homepage=("https://www.microsoft.com/en-us/research/project/"
              "ms-celeb-1m-challenge-recognizing-one-million-celebrities-real-world/"),
    layout="MS-Celeb-1M/<identity>/<image>.jpg (one folder per identity)",
    required=(".",),
    instructions=(
        "Microsoft withdrew MS-Celeb-1M in 2019 and no longer distributes it. Use it only if you hold a copy under "
        "its original terms; cleaned derivatives (e.g. MS1MV2 as MXNet RecordIO) must be unpacked to one folder "
        "of JPEGs per identity as above."
    ),
)

CASIA_WEBFACE = DatasetSource(
    name="casia_webface",
    title="CASIA-WebFace",
    folder="CASIA-WebFace",
    homepage="http://www.cbsr.ia.ac.cn/english/CASIA-WebFace-Database.html",
    layout="CASIA-WebFace/<identity_id>/<NNN>.jpg (10,575 identities, 494,414 images, 250x250)",
    required=(".",),
    instructions=(
        "Was released by CBSR (Institute of Automation, Chinese Academy of Sciences) on signed application and is "
        "no longer distributed officially; use a copy obtained under its terms, one folder per identity as above."
    ),
)

SOURCES: dict[str, DatasetSource] = {
    source.name: source for source in (LFW, WIDER_FACE, VGGFACE2, CELEBA, MS_CELEB_1M, CASIA_WEBFACE)
}


def _present(path: Path) -> bool:
    """True for an existing file or a folder with something in it."""
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


def missing_paths(source: DatasetSource, data_root: str | Path) -> list[str]:
    """Required paths of ``source`` (relative to its folder; '.' is the folder) absent or empty under ``data_root``."""
    folder = Path(data_root) / source.folder
    return [relative for relative in source.required if not _present(folder / relative)]


def _load_manifest(path: Path) -> dict[str, Any]:
    """The recorded url, size and digests of each file fetched so far, by 'source/filename' ({} when none yet)."""
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DataError(path, f"not valid JSON ({exc}); delete it to start a new record") from None
    if not isinstance(record, dict):
        raise DataError(path, "not a JSON object; delete it to start a new record")
    return record


def _check(item: RemoteFile, digests: dict[str, str], record: dict[str, Any] | None, where: Path) -> None:
    """Raise DataError unless ``digests`` match a published checksum of ``item`` (with none: the first-use record)."""
    known = item.known_checksums()
    if known:
        if not any(all(digests.get(name) == value for name, value in entry.items()) for entry in known):
            published = "; ".join(", ".join(f"{name} {value}" for name, value in entry.items()) for entry in known)
            raise DataError(where, f"checksum mismatch for {item.filename}: got sha256 {digests.get('sha256')}, "
                                   f"md5 {digests.get('md5')}; published: {published}")
    elif record and record.get("sha256") and record["sha256"] != digests.get("sha256"):
        raise DataError(where, f"{item.filename} differs from the copy recorded on first download "
                               f"(sha256 {record['sha256']}, now {digests.get('sha256')}); if the source changed on "
                               "purpose, delete its entry in the downloads manifest")


def mirror_path(local: Path, url: str) -> Path:
    """The hidden file beside ``local`` that a download from ``url`` goes to (its ``.part`` resumes only from there)."""
    return local.with_name(f".{local.name}.{hashlib.sha1(url.encode(), usedforsecurity=False).hexdigest()[:10]}")


def _download_any(item: RemoteFile, local: Path, record: dict[str, Any] | None,
                  log: Callable[[str], None], options: dict[str, Any]) -> tuple[str | None, dict[str, str]]:
    """Put a verified copy of ``item`` at ``local`` from the first mirror that works; returns (url, digests).

    Each mirror downloads into its own :func:`mirror_path`, so an interrupted transfer resumes from the same
    mirror on a later run and bytes of different mirrors are never joined; the verified file is renamed onto
    ``local``. A complete, verified ``local`` left by an earlier run (say, killed while extracting) is reused.
    """
    if local.is_file():
        digests = hash_file(local)
        try:
            _check(item, digests, record, local)
            return (record or {}).get("url"), digests
        except DataError as exc:
            log(f"{exc}; downloading it again")
            local.unlink()
    errors: list[str] = []
    for mirror in item.mirrors:
        staged = mirror_path(local, mirror.url)
        log(f"downloading {item.filename} from {mirror.url}")
        try:
            download(mirror.url, staged, size=item.size, **item.expected_from(mirror), **options)
            digests = hash_file(staged)
            _check(item, digests, record, staged)
        except DataError as exc:
            staged.unlink(missing_ok=True)
            errors.append(str(exc))
            log(f"failed: {exc}")
            continue
        os.replace(staged, local)
        for other in item.mirrors:
            part_path(mirror_path(local, other.url)).unlink(missing_ok=True)
        return mirror.url, digests
    raise DataError(local, f"could not be fetched from any of {len(item.mirrors)} mirror(s); last error: {errors[-1]}")


def _fetch_file(source: DatasetSource, item: RemoteFile, data_root: Path, manifest: dict[str, Any],
                log: Callable[[str], None], options: dict[str, Any], keep_archives: bool) -> str:
    """Make one file of ``source`` present and verified; returns 'present', 'fetched' or 'missing'."""
    folder = data_root / source.folder
    place = folder / item.place
    key = f"{source.name}/{item.filename}"
    record = manifest.get(key)
    if item.extract:
        marker = read_marker(place)
        if marker is not None:
            _check(item, {name: str(marker.get(name)) for name in ("sha256", "md5")}, record, place)
            return "present"
        if _present(place):
            log(f"{place} exists without an extraction marker (placed by hand?); left as it is")
            return "present"
    elif place.is_file():
        digests = hash_file(place)
        _check(item, digests, record, place)
        if record is None:
            manifest[key] = {"url": None, "size": place.stat().st_size, **digests}
        return "present"
    downloads = data_root / DOWNLOADS_FOLDER / source.name
    local = downloads / item.filename if item.extract else place
    if not item.mirrors:
        candidates = [path for path in (local, folder / item.filename) if path.is_file()]
        if not candidates:
            return "missing"
        local = candidates[0]
        digests = hash_file(local)
        _check(item, digests, record, local)
        url = None
    else:
        url, digests = _download_any(item, local, record, log, options)
    manifest[key] = {"url": url, "size": local.stat().st_size, **digests}
    if not item.known_checksums() and record is None:
        log(f"{item.filename} has no published checksum; recorded sha256 {digests['sha256']} and size "
            f"{manifest[key]['size']} (later copies must match)")
    if item.extract:
        log(f"extracting {local.name} into {place}")
        extract_archive(local, place, strip_components=item.strip_components, progress=options["progress"],
                        digests=digests)
        if not keep_archives:
            local.unlink()
    return "fetched"


def fetch_source(
    source: DatasetSource,
    data_root: str | Path,
    *,
    log: Callable[[str], None] = print,
    retries: int = 5,
    backoff: float = 0.5,
    timeout: float = 30,
    progress: bool = True,
    keep_archives: bool = True,
) -> FetchResult:
    """Download, verify, extract and place every obtainable file of ``source`` under ``data_root``; idempotent.

    Files already in place and matching their checksums are skipped without network access. Files that need
    registration are taken from ``downloads/<name>/`` or the dataset folder when the user has put them there.
    The result lists what is still missing; the instructions are logged then. Failures raise a one-line DataError.
    """
    data_root = Path(data_root)
    folder = data_root / source.folder
    manifest_path = data_root / DOWNLOADS_FOLDER / MANIFEST_NAME
    manifest = _load_manifest(manifest_path)
    before = json.dumps(manifest, sort_keys=True)
    options = {"retries": retries, "backoff": backoff, "timeout": timeout, "progress": progress}
    result = FetchResult(source, folder)
    try:
        for item in source.files:
            status = _fetch_file(source, item, data_root, manifest, log, options, keep_archives)
            if status == "fetched":
                result.fetched.append(item.filename)
            elif status == "present":
                result.present.append(item.filename)
    finally:
        if json.dumps(manifest, sort_keys=True) != before:
            atomic_write_text(manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    result.missing = missing_paths(source, data_root)
    summary = f"{source.name}: {len(result.fetched)} fetched, {len(result.present)} already present"
    if result.missing:
        log(f"{summary}; missing or empty: {', '.join(str(folder / relative) for relative in result.missing)}")
        log(f"{source.name}: {source.instructions or 'see ' + source.homepage} Expected layout: {source.layout}")
    else:
        log(f"{summary}; {folder} is complete")
    return result

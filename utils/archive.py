"""Safe extraction of zip and tar (plain, gz, bz2, xz) archives into a folder that appears only when complete.

Policy, checked for every member before anything is written (one bad member refuses the whole archive):
- names must be relative and contain no ``..`` component (absolute paths, drive letters, ``..`` are refused;
  a backslash counts as a folder separator, so ``..\\x`` is refused too);
- symbolic links are refused, inside or outside the folder: the datasets we fetch ship none, and a symlink
  in a downloaded archive is far likelier an attack than a need;
- hard links (tar) must name a regular file stored earlier in the same archive;
- device files, FIFOs and other special members are refused;
- tar extraction also runs through Python's ``filter="data"`` as a second, independent guard;
- size limits (:class:`ExtractLimits`): the member count, the total extracted size and the expansion ratio
  (extracted bytes per archive byte) are checked against the members' recorded sizes before anything is
  written, which zipfile enforces while reading and which are exact for tar, so a decompression bomb is
  refused whole. Tar members are counted as they are read, so a tar of millions of tiny members is refused
  without listing them all.
The archive is extracted into a hidden temp folder beside ``target`` and renamed onto ``target`` only when
every member is written; the folder then holds a marker file (:data:`MARKER_NAME`) recording which archive it
came from (name, size and sha256), so a second call with the same archive content returns at once, an archive
replaced by other bytes under the same name is not mistaken for it, and a half-made folder never looks done.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from utils.atomic import atomic_write_text
from utils.errors import DataError
from utils.hashing import hash_file

MARKER_NAME = ".extract_complete.json"
_TEMP_SUFFIX = ".extracting"
_DRIVE = re.compile(r"^[A-Za-z]:")
_TAR_FILTER: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
RATIO_FREE_BYTES = 16 << 20  # the expansion-ratio limit applies beyond this many extracted bytes


@dataclass(frozen=True)
class ExtractLimits:
    """The most an archive may hold; defaults sized with margin for the largest dataset archives we know.

    Real archives: VGGFace2 ``vggface2_train.tar.gz`` about 36 GB with 3.14 M images in 8,631 folders (the
    largest); CASIA-WebFace about 4 GB, 494,414 images; CelebA ``img_align_celeba.zip`` 1.4 GB, 202,599 images;
    ``WIDER_train.zip`` 1.4 GB, 12,880 images; ``lfw.tgz`` 173 MB, 13,233 images in 5,749 folders. JPEG archives
    expand about 1x and the annotation zips about 5x; a zip or gzip bomb expands about 1,000x. The ratio limit
    applies only beyond :data:`RATIO_FREE_BYTES`, so small archives of text may compress well.
    """

    max_members: int = 4_000_000  # VGGFace2 train: about 3.15 M members (files and folders)
    max_bytes: int = 64 << 30  # 64 GiB; VGGFace2 train extracts to about 38 GB
    max_ratio: float = 100.0  # extracted bytes per byte of archive


DEFAULT_LIMITS = ExtractLimits()


def archive_format(path: str | Path) -> str:
    """'zip' or 'tar', judged by the file's content (not its name); DataError when it is neither."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(262)
    except OSError as exc:
        raise DataError(path, f"cannot read archive: {exc.strerror or exc}") from exc
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    compressed = head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00"))
    if compressed or head[257:262] == b"ustar":
        return "tar"
    try:
        if tarfile.is_tarfile(path):
            return "tar"
    except OSError:
        pass
    raise DataError(path, "not a zip or tar archive (unrecognised content)")


def read_marker(target: str | Path) -> dict[str, Any] | None:
    """The record a complete extraction left in ``target``, or None when there is none (or it is unreadable)."""
    marker = Path(target) / MARKER_NAME
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _relative(name: str, strip: int) -> str | None:
    """The relative path a member name lands on after stripping ``strip`` leading folders.

    None when the name is only folders that are stripped away; ValueError with the reason when it is refused.
    """
    raw = name.replace("\\", "/")
    if raw.startswith("/") or _DRIVE.match(raw):
        raise ValueError("absolute path")
    parts = [part for part in raw.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ValueError("'..' in its path")
    if len(parts) <= strip:
        return None
    return "/".join(parts[strip:])


def _member_path(name: str, archive: Path, strip: int, is_dir: bool) -> str | None:
    """The checked relative path of a member (None: a folder stripped away); DataError naming it when refused."""
    try:
        relative = _relative(name, strip)
    except ValueError as exc:
        raise DataError(archive, f"refused member {name!r}: {exc}") from None
    if relative is None and not is_dir:
        raise DataError(archive, f"refused member {name!r}: not inside {strip} leading folder(s) to strip")
    if relative == MARKER_NAME:
        raise DataError(archive, f"refused member {name!r}: the name is reserved for the extraction marker")
    return relative


def _plan_tar(members: list[tarfile.TarInfo], archive: Path, strip: int) -> list[tarfile.TarInfo]:
    """Check every tar member against the policy and return the members to extract, renamed after stripping."""
    plan: list[tarfile.TarInfo] = []
    files: set[str] = set()
    for member in members:
        if member.issym():
            raise DataError(archive, f"refused member {member.name!r}: symbolic link (to {member.linkname!r})")
        if not (member.isreg() or member.isdir() or member.islnk()):
            raise DataError(archive, f"refused member {member.name!r}: device file, FIFO or other special file")
        relative = _member_path(member.name, archive, strip, member.isdir())
        if relative is None:
            continue
        renamed = copy.copy(member)
        renamed.name = relative
        if member.islnk():
            try:
                link = _relative(member.linkname, strip)
            except ValueError as exc:
                reason = f"hard link to {member.linkname!r} ({exc})"
                raise DataError(archive, f"refused member {member.name!r}: {reason}") from None
            if link not in files:
                raise DataError(archive, f"refused member {member.name!r}: hard link to {member.linkname!r}, "
                                         "which is not a file stored earlier in the archive")
            renamed.linkname = link
        if not member.isdir():
            files.add(relative)
        plan.append(renamed)
    return plan


def _counted(members: Iterable[Any], archive: Path, limits: ExtractLimits) -> list[Any]:
    """The members, read one by one; DataError as soon as there are more than ``limits.max_members``."""
    listed = []
    for member in members:
        listed.append(member)
        if len(listed) > limits.max_members:
            raise DataError(archive, f"refused: more than {limits.max_members:,} members "
                                     "(limit max_members; raise it for a larger dataset)")
    return listed


def _check_size(archive: Path, total: int, limits: ExtractLimits) -> None:
    """DataError when members of ``total`` bytes would pass the size or expansion-ratio limit."""
    if total > limits.max_bytes:
        raise DataError(archive, f"refused: members total {total:,} bytes, over the limit of {limits.max_bytes:,} "
                                 "(max_bytes; raise it for a larger dataset)")
    size = archive.stat().st_size
    if total > max(RATIO_FREE_BYTES, limits.max_ratio * size):
        raise DataError(archive, f"refused: {size:,} bytes expand to {total:,} ({total / max(size, 1):,.0f}x), over "
                                 f"the {limits.max_ratio:g}x limit (max_ratio): a decompression bomb?")


def _extract_tar(archive: Path, folder: Path, strip: int, progress: bool, limits: ExtractLimits) -> int:
    """Extract a checked tar archive into ``folder``; returns the number of members written."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            plan = _plan_tar(_counted(tar, archive, limits), archive, strip)
            _check_size(archive, sum(member.size for member in plan if member.isreg()), limits)
            members = tqdm(plan, desc=archive.name, unit="file", disable=not progress, dynamic_ncols=True)
            tar.extractall(folder, members=members, **_TAR_FILTER)
    except tarfile.FilterError as exc:
        raise DataError(archive, f"refused member: {exc}") from exc
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise DataError(archive, f"corrupt or truncated tar archive: {exc}") from exc
    except OSError as exc:
        raise DataError(archive, f"corrupt tar archive or cannot write member: {exc}") from exc
    return len(plan)


def _plan_zip(infos: list[zipfile.ZipInfo], archive: Path, strip: int) -> list[tuple[zipfile.ZipInfo, str]]:
    """Check every zip member against the policy; returns (member, relative path) pairs to extract."""
    plan: list[tuple[zipfile.ZipInfo, str]] = []
    for info in infos:
        mode = info.external_attr >> 16
        if info.create_system == 3 and stat.S_IFMT(mode):
            if stat.S_ISLNK(mode):
                raise DataError(archive, f"refused member {info.filename!r}: symbolic link")
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise DataError(archive, f"refused member {info.filename!r}: device file, FIFO or other special file")
        relative = _member_path(info.filename, archive, strip, info.is_dir())
        if relative is not None:
            plan.append((info, relative))
    return plan


def _extract_zip(archive: Path, folder: Path, strip: int, progress: bool, limits: ExtractLimits) -> int:
    """Extract a checked zip archive into ``folder`` (CRC-checked by zipfile); returns the number of members."""
    try:
        with zipfile.ZipFile(archive) as bundle:
            plan = _plan_zip(_counted(bundle.infolist(), archive, limits), archive, strip)
            _check_size(archive, sum(info.file_size for info, _ in plan), limits)
            for info, relative in tqdm(plan, desc=archive.name, unit="file", disable=not progress, dynamic_ncols=True):
                out = folder / relative
                if info.is_dir():
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                with bundle.open(info) as source, open(out, "wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 20)
    except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError) as exc:
        raise DataError(archive, f"corrupt or truncated zip archive: {exc}") from exc
    except RuntimeError as exc:  # zipfile raises this for encrypted members
        raise DataError(archive, f"cannot extract zip archive: {exc}") from exc
    except OSError as exc:
        raise DataError(archive, f"cannot write a member: {exc.strerror or exc}") from exc
    return len(plan)


def _remove_stale_temps(target: Path) -> None:
    """Delete temp folders an earlier, killed extraction into ``target`` left behind (one extraction at a time)."""
    prefix = f".{target.name}."
    for entry in target.parent.iterdir():
        if entry.name.startswith(prefix) and entry.name.endswith(_TEMP_SUFFIX) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


def extract_archive(archive: str | Path, target: str | Path, *, strip_components: int = 0,
                    progress: bool = False, limits: ExtractLimits = DEFAULT_LIMITS,
                    digests: dict[str, str] | None = None) -> Path:
    """Safely extract a zip or tar(.gz/.bz2/.xz) ``archive`` into ``target``, which appears only when complete.

    ``strip_components`` drops that many leading folders from each member (as ``tar --strip-components``).
    An existing ``target`` made from an archive of the same sha256 is returned untouched; one made from an
    archive of the same name but other content (the archive was replaced) is extracted again and swapped in
    whole; any other existing, non-empty ``target`` is refused with a DataError rather than overwritten. An
    archive over ``limits`` is refused before anything is written. Every refusal names the archive (and the
    member). ``digests``: the archive's :func:`hash_file` result when the caller has just computed it.
    """
    archive, target = Path(archive), Path(target)
    if not archive.is_file():
        raise DataError(archive, "archive not found")
    size = archive.stat().st_size
    digests = digests or hash_file(archive)
    replace = False
    if target.exists():
        record = read_marker(target)
        if record is None:
            if not (target.is_dir() and not any(target.iterdir())):
                raise DataError(target, "exists but is not a complete extraction (no marker); "
                                        "move it away to extract again")
            target.rmdir()
        elif (record.get("sha256"), record.get("strip_components")) == (digests["sha256"], strip_components):
            return target
        elif (record.get("archive"), record.get("strip_components")) == (archive.name, strip_components):
            replace = True
        else:
            raise DataError(target, f"holds an extraction of {record.get('archive')!r} ({record.get('size')} bytes, "
                                    f"sha256 {str(record.get('sha256'))[:12]}), not of {archive.name!r} ({size} bytes, "
                                    f"sha256 {digests['sha256'][:12]}); move it away to extract again")
    kind = archive_format(archive)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(target)
    temp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=_TEMP_SUFFIX, dir=target.parent))
    try:
        temp.chmod(0o755)  # mkdtemp makes it private; the dataset folder should be readable like any other
        extract = _extract_zip if kind == "zip" else _extract_tar
        count = extract(archive, temp, strip_components, progress, limits)
        record = {"archive": archive.name, "size": size, "format": kind, "members": count,
                  "strip_components": strip_components, **digests}
        atomic_write_text(temp / MARKER_NAME, json.dumps(record, indent=2) + "\n")
        old = temp.with_name(f"{temp.name[:-len(_TEMP_SUFFIX)]}.old{_TEMP_SUFFIX}")  # a killed swap: removed as stale
        try:
            if replace:
                os.replace(target, old)
            os.replace(temp, target)
        except OSError as exc:
            raise DataError(target, f"cannot move the extracted folder into place: {exc.strerror or exc}") from exc
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return target

"""Aligned face crops of identity datasets, cut with the ``FaceDetector``: the data FaceNet trains and validates on.

Sources: identity folders of unaligned photos (VGGFace2, CASIA-WebFace, MS-Celeb-1M extracted, CelebA
identity subsets, the synthetic set, LFW's ``images/``) or an insightface ``.rec``/``.idx`` pair. Per photo
the detector runs (batched), one face is kept by rule (``largest`` box, or the most ``central``), and the
face is aligned (5-point similarity, or box) and written in the same identity layout; the choice and the cut
are the system's own (``models.face_preprocess``), so an evaluation crop is the crop the system would cut:

* training sets: ``train_size`` crops (182 px: random 160 px crops of them are the training inputs);
* evaluation sets (pairs files, held-out identities): ``eval_size`` crops (160 px).

Both show the same framing: the training crop's margin is the evaluation margin plus
``train_size - eval_size``, so its centre crop is the evaluation crop. Photos already done (listed in the
folder's ``.align_progress.tsv`` with their crops present) are skipped, so an interrupted run resumes.
Photos with no face, with several faces, and unreadable files are counted and listed in
``align_report.json`` (and the first of each named on the console), as are identity folders left out
(empty, or links not followed) with the reason. A training set can hand ``holdout`` identities to an evaluation split
in the LFW layout, with an identity-disjoint View-2 pairs file over them.
"""
from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from config import Config
from datasets.decoding import decoded_batches
from datasets.identity import IdentityFolder
from datasets.lfw import write_pairs
from datasets.pairs_builder import make_pairs
from datasets.recordio import FaceRecordSet
from models.detector import Detections, DetectorSettings, FaceDetector
from models.face_preprocess import cut_faces, main_face_order, select_faces
from utils.atomic import atomic_write_text
from utils.device import select_device
from utils.errors import BadInputLog, ConfigError, DataError, name_some
from utils.images import read_image, write_image

ALIGN_DATASETS = ("synthetic", "lfw", "vggface2", "casia_webface", "ms_celeb_1m", "celeba", "folder")
PROGRESS_FILE = ".align_progress.tsv"
REPORT_FILE = "align_report.json"
STATUSES = ("aligned", "no_face", "unreadable")


@dataclass(frozen=True)
class Photo:
    """One source photo: identity, where it comes from (file path or ``<file.rec>#<key>``), output file name,
    and its 1-based number among its identity's photos (for LFW-style names)."""

    identity: str
    source: str
    name: str
    number: int
    key: int | None = None


@dataclass(frozen=True)
class CropTarget:
    """Where and how crops are written: identity-layout root, side, margin (output pixels), which identities
    (None: all), and whether files get LFW names ``<id>/<id>_NNNN.jpg`` (what pairs files refer to)."""

    folder: Path
    size: int
    margin: float
    identities: frozenset[str] | None = None
    lfw_names: bool = False

    def path(self, photo: Photo) -> Path | None:
        """Output file of ``photo`` (None when this target does not take its identity)."""
        if self.identities is not None and photo.identity not in self.identities:
            return None
        name = f"{photo.identity}_{photo.number:04d}.jpg" if self.lfw_names else photo.name
        return self.folder / photo.identity / name


@dataclass
class AlignReport:
    """What one alignment pass did; lists name source files (``several_faces``: file and face count)."""

    source: str
    photos: int = 0
    aligned: int = 0
    resumed: int = 0
    no_face: list[str] = field(default_factory=list)
    several_faces: list[tuple[str, int]] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    left_out: dict[str, str] = field(default_factory=dict)  # identity folders or links not listed -> reason
    seconds: float = 0.0

    def summary(self) -> str:
        """The console lines: the counts, then the first photos of each kind not aligned, by name."""
        lines = [f"{self.source}: {self.photos} photos, {self.aligned} aligned ({self.resumed} done earlier), "
                 f"{len(self.no_face)} without a face, {len(self.several_faces)} with several faces (one kept), "
                 f"{len(self.unreadable)} unreadable, {len(self.left_out)} left out; {self.seconds:.0f} s"]
        left_out = [f"{path} ({reason})" for path, reason in self.left_out.items()]
        for what, names in (("without a face", self.no_face), ("unreadable", self.unreadable), ("left out", left_out)):
            if names:
                lines.append(f"  {what}: {name_some(names)}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (the report file)."""
        return asdict(self)


def _output_name(path: Path) -> str:
    """Crops are JPEG: ``x.jpg`` keeps its name, other files get ``.jpg`` appended (no two sources collide)."""
    return path.name if path.suffix.lower() == ".jpg" else f"{path.name}.jpg"


def list_photos(source: str | Path) -> tuple[list[Photo], FaceRecordSet | None, dict[str, str]]:
    """The photos of an identity-folder tree or a ``.rec`` file (with its ``.idx`` beside it), sorted by
    identity then file; also the opened record set for ``.rec`` sources, and what the tree left out (path ->
    reason: empty identity folders, links not followed)."""
    source = Path(source)
    records = None
    left_out: dict[str, str] = {}
    entries: list[tuple[str, str, str, int | None]] = []  # identity, source, name, key
    if source.is_file() and source.suffix == ".rec":
        records = FaceRecordSet(source)
        entries = [(str(label), records.where(key), f"{key}.jpg", key) for key, label in records]
    else:
        folder = IdentityFolder(source)
        entries = [(folder.classes[label], str(path), _output_name(path), None) for path, label in folder.samples]
        left_out = folder.left_out()
    entries.sort(key=lambda e: (e[0], e[3] if e[3] is not None else -1, e[1]))
    photos, counts = [], {}
    for identity, where, name, key in entries:
        counts[identity] = counts.get(identity, 0) + 1
        photos.append(Photo(identity, where, name, counts[identity], key))
    return photos, records, left_out


def framing_margins(train_size: int, eval_size: int, margin: float) -> tuple[float, float]:
    """Margins (output pixels) of training and evaluation crops with one framing: the training crop's centre
    ``eval_size`` square is the evaluation crop (same face scale, ``train_size - eval_size`` more context)."""
    return margin + train_size - eval_size, margin


def read_progress(path: Path) -> dict[str, tuple[str, int]]:
    """``{source: (status, faces)}`` from a progress file; a torn last line (a crash mid-write) is ignored."""
    done: dict[str, tuple[str, int]] = {}
    if not path.is_file():
        return done
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[0] in STATUSES and parts[1].isdigit():
            done[parts[2]] = (parts[0], int(parts[1]))
    return done


def _load_photo(photo: Photo, records: FaceRecordSet | None) -> np.ndarray:
    """A photo's pixels: from its record file when it has a key there, else from its image file."""
    if photo.key is not None and records is not None:
        return records.image(photo.key)
    return read_image(photo.source)


def align_photos(photos: Sequence[Photo], targets: Sequence[CropTarget], detector: FaceDetector, progress_file: Path,
                 *, records: FaceRecordSet | None = None, method: str = "similarity", select: str = "largest",
                 batch_images: int = 16, jpeg_quality: int = 95, workers: int = 0, log: BadInputLog | None = None,
                 show_progress: bool = True, source_name: str = "") -> AlignReport:
    """Detect, choose, align and write one face per photo for every target that takes its identity.

    Photos listed in ``progress_file`` whose crops exist are skipped (their earlier outcome is counted);
    each finished batch is appended to it. Unreadable photos go to ``log`` (raised when it is strict).
    """
    log = log if log is not None else BadInputLog()
    started = time.perf_counter()
    report = AlignReport(source_name or (photos[0].source if photos else ""), photos=len(photos))
    earlier = read_progress(progress_file)
    todo = []
    for photo in photos:
        status, faces = earlier.get(photo.source, ("", 0))
        outputs = [p for p in (t.path(photo) for t in targets) if p is not None]
        if status in ("no_face", "unreadable") or (status == "aligned" and all(p.is_file() for p in outputs)):
            report.resumed += 1
            _count(report, photo, status, faces)
        else:
            todo.append(photo)
    progress_file.parent.mkdir(parents=True, exist_ok=True)
    loader = decoded_batches(todo, batch_images, workers, load=partial(_load_photo, records=records))
    with open(progress_file, "a", encoding="utf-8") as journal, \
            tqdm(total=len(todo), desc=f"align {report.source}", unit="photo", disable=not show_progress) as bar:
        for batch in loader:
            lines = []
            good = [(i, image) for i, image, _ in batch if image is not None]
            for i, _, error in batch:
                if error is not None:
                    log.report(DataError(todo[i].source, error))
                    lines.append(_record(report, todo[i], "unreadable", 0))
            found = detector.detect([image for _, image in good]) if good else []
            for (i, image), detections in zip(good, found):
                photo = todo[i]
                crops = main_face_crops(image, detections, targets, method, select)
                if not crops:
                    lines.append(_record(report, photo, "no_face", 0))
                    continue
                for target, crop in zip(targets, crops):
                    out = target.path(photo)
                    if out is not None:
                        write_image(out, crop.permute(1, 2, 0).numpy(), quality=jpeg_quality)
                lines.append(_record(report, photo, "aligned", len(detections)))
            journal.write("".join(lines))
            journal.flush()
            bar.update(len(batch))
    report.seconds = time.perf_counter() - started
    return report


def main_face_crops(image: np.ndarray, detections: Detections, targets: Sequence[CropTarget], method: str,
                    select: str) -> list[Tensor]:
    """The photo's main face (``models.face_preprocess``) cut at each target's size and margin; empty when the
    photo has no face (or its main face cannot be aligned)."""
    order = main_face_order(detections.boxes, image.shape[0], image.shape[1], select)
    if not order:
        return []
    main = select_faces(detections.to("cpu"), order[:1])
    crops = [cut_faces(image, main, target.size, target.margin, method)[0] for target in targets]
    return [] if any(crop is None for crop in crops) else crops  # type: ignore[misc]


def _count(report: AlignReport, photo: Photo, status: str, faces: int) -> None:
    if status == "aligned":
        report.aligned += 1
        if faces > 1:
            report.several_faces.append((photo.source, faces))
    elif status == "no_face":
        report.no_face.append(photo.source)
    else:
        report.unreadable.append(photo.source)


def _record(report: AlignReport, photo: Photo, status: str, faces: int) -> str:
    _count(report, photo, status, faces)
    return f"{status}\t{faces}\t{photo.source}\n"


# --- held-out identities and their pairs file --------------------------------------------------------------


# align_report.json keys of each split: (prefix of pairs, pairs_per_fold and folds; key of its identity list)
SPLIT_REPORT_KEYS = {"test": ("", "held_out_identities"), "val": ("val_", "val_identities")}


def split_identities(identities: Sequence[str], holdout: int, validation: int = 0,
                     seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    """(train, held-out, validation) identity lists, each sorted: the first ``holdout`` then the next
    ``validation`` names of one permutation drawn by ``seed``, so adding a validation split keeps the held-out
    people as they were."""
    names = sorted(set(identities))
    if not 0 <= holdout + validation < len(names):
        raise ConfigError(f"cannot hold out {holdout} + {validation} of {len(names)} identities "
                          "(keep at least one for training)")
    order = np.random.default_rng([seed, 20170]).permutation(len(names))
    held = {names[i] for i in order[:holdout]}
    val = {names[i] for i in order[holdout:holdout + validation]}
    return [n for n in names if n not in held and n not in val], sorted(held), sorted(val)


# --- datasets by name, from the config ------------------------------------------------------------------------


@dataclass
class AlignJob:
    """One source tree to align: ``kind`` "train" (train_size crops, optional held-out and validation splits)
    or "eval" (eval_size crops; ``pairs`` is copied beside them)."""

    name: str
    source: Path
    out: Path
    kind: str
    pairs: Path | None = None
    holdout: int = 0
    validation: int = 0


def align_jobs(dataset: str, config: Config, src: str | Path | None = None,
               dst: str | Path | None = None) -> list[AlignJob]:
    """The alignment jobs of a named dataset: sources from the config's paths (or ``src``), outputs under
    ``dst`` (default ``paths.aligned`` for the synthetic set, ``<data_root>/aligned/<dataset>`` otherwise)."""
    if dataset not in ALIGN_DATASETS:
        raise ConfigError(f"--align: unknown dataset {dataset!r}; choose one of {', '.join(ALIGN_DATASETS)}")
    data_root = Path(config.paths.data_root)
    out = Path(dst) if dst else (config.path("aligned") if dataset == "synthetic" else data_root / "aligned" / dataset)
    splits = {"holdout": config.align.holdout_identities, "validation": config.align.validation_identities}
    if dataset == "synthetic":
        return [AlignJob("train", Path(src) if src else config.path("identities"), out / "train", "train", **splits),
                AlignJob("lfw_val", config.path("val_images"), out / "lfw_val" / "images", "eval",
                         config.path("val_pairs")),
                AlignJob("lfw_test", config.path("test_images"), out / "lfw_test" / "images", "eval",
                         config.path("test_pairs"))]
    if dataset == "lfw":
        root = Path(src) if src else config.path("lfw")
        images = root / "images" if (root / "images").is_dir() else root
        pairs = root / "pairs.txt"
        return [AlignJob("lfw", images, out / "images", "eval", pairs if pairs.is_file() else None)]
    if src:
        source = Path(src)
    elif dataset == "folder":
        raise ConfigError("--align folder needs --align-src (an identity-folder tree or a .rec file)")
    else:
        folders = {"vggface2": "VGGFace2", "casia_webface": "CASIA-WebFace", "ms_celeb_1m": "MS-Celeb-1M",
                   "celeba": "CelebA"}
        base = data_root / folders[dataset]
        source = next((c for c in (base / "train.rec", base / "train", base / "identities") if c.exists()), base)
    if source.is_dir() and (source / "train.rec").is_file():
        source = source / "train.rec"
    return [AlignJob("train", source, out / "train", "train", **splits)]


def detector_for_alignment(config: Config, device: torch.device | str = "cpu") -> FaceDetector:
    """The cascade ``paths.pnet/rnet/onet`` name, with the detector settings and ``align.thresholds``."""
    settings = DetectorSettings.from_config(config.detector)
    settings.thresholds = tuple(float(t) for t in config.align.thresholds)
    return FaceDetector.from_checkpoints(config.path("pnet"), config.path("rnet"), config.path("onet"),
                                         settings=settings, device=device)


def run_job(job: AlignJob, config: Config, detector: FaceDetector, *, workers: int = 0, log: BadInputLog | None = None,
            show_progress: bool = True, print_fn: Callable[[str], None] = print) -> AlignReport:
    """Align one job's photos, write its report (and pairs file), and return the report."""
    a = config.align
    photos, records, left_out = list_photos(job.source)
    train_margin, _ = framing_margins(a.train_size, a.eval_size, a.margin)
    splits: dict[str, list[str]] = {}
    if job.kind == "eval":
        targets = [CropTarget(job.out, a.eval_size, a.margin)]
    else:
        train_ids, splits["test"], splits["val"] = split_identities(
            [p.identity for p in photos], job.holdout, job.validation, config.runtime.seed)
        splits = {name: ids for name, ids in splits.items() if ids}
        stale = sorted(n for ids in splits.values() for n in ids if (job.out / n).is_dir())
        if stale:  # an earlier run with other split settings: its training crops would leak into test/val
            raise DataError(job.out, f"holds training crops of {len(stale)} held-out or validation identities "
                                     f"(e.g. {stale[0]}) from an earlier alignment; align into a new folder")
        targets = [CropTarget(job.out, a.train_size, train_margin, frozenset(train_ids) if splits else None)]
        targets += [CropTarget(job.out.parent / name / "images", a.eval_size, a.margin, frozenset(ids),
                               lfw_names=True) for name, ids in splits.items()]
    report = align_photos(photos, targets, detector, job.out / PROGRESS_FILE, records=records, method=a.method,
                          select=a.select, batch_images=a.batch_images, jpeg_quality=a.jpeg_quality, workers=workers,
                          log=log, show_progress=show_progress, source_name=f"{job.name} ({job.source})")
    report.left_out = left_out
    extra: dict[str, Any] = {"targets": [{"folder": str(t.folder), "size": t.size, "margin": t.margin,
                                          "identities": len(t.identities) if t.identities is not None else "all"}
                                         for t in targets]}
    if job.pairs is not None:
        if not job.pairs.is_file():
            raise DataError(job.pairs, "pairs file of this evaluation set not found")
        shutil.copyfile(job.pairs, job.out.parent / "pairs.txt")
        extra["pairs"] = str(job.out.parent / "pairs.txt")
    for name, ids in splits.items():
        pairs_path = job.out.parent / name / "pairs.txt"
        folds = make_pairs(pairs_path.parent / "images", a.holdout_folds, a.holdout_pairs_per_fold,
                           config.runtime.seed)
        write_pairs(pairs_path, folds)
        prefix, identities_key = SPLIT_REPORT_KEYS[name]
        extra.update({f"{prefix}pairs": str(pairs_path), identities_key: ids,
                      f"{prefix}pairs_per_fold": sum(p.same for p in folds[0]), f"{prefix}folds": len(folds)})
    atomic_write_text(job.out / REPORT_FILE, json.dumps({**report.as_dict(), **extra}, indent=1) + "\n")
    print_fn(report.summary())
    for key, what in (("pairs", "pairs file"), ("val_pairs", "validation pairs file")):
        if extra.get(key):
            print_fn(f"  {what}: {extra[key]}")
    return report


def align_dataset(dataset: str, config: Config, src: str | Path | None = None, dst: str | Path | None = None, *,
                  workers: int = 0, show_progress: bool = True,
                  print_fn: Callable[[str], None] = print) -> list[AlignReport]:
    """``prepare_training_data.py --align DATASET``: every job of the dataset, with the configured detector."""
    jobs = align_jobs(dataset, config, src, dst)
    detector = detector_for_alignment(config, select_device(config.runtime.device))
    log = BadInputLog(strict=config.runtime.strict)
    reports = [run_job(job, config, detector, workers=workers, log=log, show_progress=show_progress, print_fn=print_fn)
               for job in jobs]
    if len(log):
        print_fn(log.summary())
    return reports

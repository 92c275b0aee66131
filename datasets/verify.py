"""Checks that a dataset folder has the layout its readers expect, counts what is there, and finds unreadable files.

Used by ``prepare_training_data.py --verify`` for the summary table; each check reads the dataset with the
same reader the trainers use, so a dataset that passes here loads in training.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from datasets.identity import IdentityFolder
from datasets.landmarks import read_landmark_list
from datasets.lfw import check_pairs_images, read_pairs
from datasets.wider import read_wider_annotations, wider_split_paths
from utils.boxes import boxes_outside_image
from utils.errors import BadInputLog, DataError
from utils.images import read_image


@dataclass
class DatasetReport:
    """One row of the summary table."""

    name: str
    path: Path
    status: str  # ok | missing | problems
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _decode_all(paths: list[Path], log: BadInputLog, boxes: list[np.ndarray] | None = None) -> int:
    """Decode every image; return how many failed (each reported to ``log``). With ``boxes`` (x1, y1, x2, y2 per
    image), each box outside its decoded image is reported too, as the MTCNN sample generator would skip it."""
    failed = 0
    for index, path in enumerate(paths):
        try:
            height, width = read_image(path).shape[:2]
        except DataError as error:
            failed += 1
            log.report(error)
            continue
        if boxes is not None:
            _, outside = boxes_outside_image(boxes[index], width, height)
            for message in outside:
                log.report(DataError(path, message))
    return failed


def _finish(report: DatasetReport, log: BadInputLog) -> DatasetReport:
    report.problems += [str(p) for p in log.problems]
    report.status = "problems" if report.problems else "ok"
    return report


def verify_wider(root: Path, name: str = "WIDER FACE", deep: bool = False, strict: bool = False) -> DatasetReport:
    """WIDER layout: annotation files parse, every annotated image exists (with ``deep``: decodes, and its boxes
    lie inside it)."""
    report = DatasetReport(name, root, "missing")
    log = BadInputLog(strict=strict)
    found = False
    for split in ("train", "val"):
        images_dir, annotation_file = wider_split_paths(root, split)
        if not annotation_file.is_file():
            continue
        found = True
        annotations = read_wider_annotations(annotation_file, log=log)
        paths = [images_dir / a.image_path for a in annotations]
        missing = [p for p in paths if not p.is_file()]
        for path in missing[:20]:
            log.report(DataError(path, f"listed in {annotation_file.name} but not on disk"))
        if len(missing) > 20:
            report.problems.append(f"{len(missing) - 20} more images of {annotation_file.name} missing")
        report.counts[f"{split} images"] = len(annotations)
        report.counts[f"{split} faces"] = int(sum(a.valid.sum() for a in annotations))
        if deep:
            present = [(p, a.boxes) for p, a in zip(paths, annotations) if p.is_file()]
            report.counts[f"{split} unreadable"] = _decode_all([p for p, _ in present], log, [b for _, b in present])
    if not found:
        return report
    return _finish(report, log)


def verify_landmarks(list_file: Path, name: str = "landmarks", deep: bool = False,
                     strict: bool = False) -> DatasetReport:
    """A 5-point landmark list: lines parse and the images they name exist (with ``deep``: decode, and each face's
    box lies inside its image)."""
    report = DatasetReport(name, list_file, "missing")
    if not list_file.is_file():
        return report
    log = BadInputLog(strict=strict)
    annotations = read_landmark_list(list_file, log=log)
    paths = [list_file.parent / a.image_path for a in annotations]
    for path in [p for p in paths if not p.is_file()][:20]:
        log.report(DataError(path, f"listed in {list_file.name} but not on disk"))
    report.counts["faces"] = len(annotations)
    if deep:
        present = [(p, a.box) for p, a in zip(paths, annotations) if p.is_file()]
        report.counts["unreadable"] = _decode_all([p for p, _ in present], log, [b for _, b in present])
    return _finish(report, log)


def verify_identities(root: Path, name: str = "identities", deep: bool = False, strict: bool = False) -> DatasetReport:
    """Identity folders: how many identities and images, and which files do not decode (with ``deep``)."""
    report = DatasetReport(name, root, "missing")
    if not root.is_dir():
        return report
    log = BadInputLog(strict=strict)
    folder = IdentityFolder(root)
    report.counts["identities"] = len(folder.classes)
    report.counts["images"] = len(folder.samples)
    report.problems += [f"{path}: left out ({reason})" for path, reason in folder.left_out().items()]
    if deep:
        report.counts["unreadable"] = _decode_all([Path(p) for p, _ in folder.samples], log)
    return _finish(report, log)


def verify_pairs(pairs_file: Path, images_root: Path, name: str = "pairs", strict: bool = False) -> DatasetReport:
    """An LFW-layout pairs set: pairs.txt parses and every image it names exists."""
    report = DatasetReport(name, pairs_file, "missing")
    if not pairs_file.is_file():
        return report
    log = BadInputLog(strict=strict)
    pairs = read_pairs(pairs_file)
    all_pairs = [p for fold in pairs.folds for p in fold]
    usable = check_pairs_images(pairs, images_root, log=log)
    report.counts["folds"] = pairs.num_folds
    report.counts["pairs"] = len(all_pairs)
    report.counts["usable pairs"] = len(usable)
    return _finish(report, log)


def format_table(reports: list[DatasetReport]) -> str:
    """A plain-text table: dataset, status, counts, path."""
    rows = [("dataset", "status", "counts", "path")]
    for r in reports:
        counts = ", ".join(f"{k}={v}" for k, v in r.counts.items()) or "-"
        rows.append((r.name, r.status, counts, str(r.path)))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d}" for a, b, c, d in rows]
    lines.insert(1, "-" * len(lines[0]))
    for r in reports:
        lines += [f"  {r.name}: {p}" for p in r.problems[:10]]
        if len(r.problems) > 10:
            lines.append(f"  {r.name}: ... {len(r.problems) - 10} more")
    return "\n".join(lines)

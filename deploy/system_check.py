"""The end-to-end check's measurements (``test_system.py``): the test identities split into gallery images and
probes, enrolment, detection recall, verification and open-set identification through the whole system, each
metric against its floor, and the printed and JSON report."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from config import Config
from datasets.identity import IdentityFolder
from datasets.landmarks import read_landmark_list
from datasets.lfw import check_pairs_images, lfw_image_path, read_pairs
from models.gallery import Gallery
from models.matcher import balanced_pairs, matcher_summary
from models.system import FaceRecognitionSystem, ImageResult
from training.mtcnn.evaluation import DetectionEvaluator
from utils.errors import BadInputLog, name_some


@dataclass
class ProbeSplit:
    """The test identities and their images, split into gallery images and probes."""

    images: dict[str, list[str]]  # identity -> image paths (sorted)
    enrolled: list[str]
    unknown: list[str]
    seed: int = 0  # of the split into enrolled and unknown people
    gallery_images: dict[str, list[str]] = field(default_factory=dict)
    probes: list[tuple[str, str]] = field(default_factory=list)  # (path, true identity)


def gallery_probe_split(folder: IdentityFolder, unknown_fraction: float, gallery_images: int, max_probes: int,
                        seed: int) -> ProbeSplit:
    """Seeded split into enrolled and unknown people; enrolled people keep their first images for the gallery
    (they need at least one more image to be probed); every other image is a probe (at most ``max_probes`` each)."""
    images: dict[str, list[str]] = {name: [] for name in folder.classes}
    for path, label in folder.samples:
        images[folder.classes[label]].append(str(path))
    for paths in images.values():
        paths.sort()
    names = sorted(images)
    rng = np.random.default_rng(seed)
    count = int(round(unknown_fraction * len(names)))
    if unknown_fraction > 0 and len(names) >= 2:
        count = min(max(count, 1), len(names) - 1)
    unknown = sorted(rng.permutation(names)[:count].tolist()) if count else []
    enrolled = [n for n in names if n not in unknown]
    test = ProbeSplit(images, enrolled, unknown, seed)
    for name in enrolled:
        test.gallery_images[name] = images[name][:gallery_images]
        probes = images[name][gallery_images:]
        test.probes += [(p, name) for p in (probes[:max_probes] if max_probes else probes)]
    for name in unknown:
        probes = images[name]
        test.probes += [(p, name) for p in (probes[:max_probes] if max_probes else probes)]
    return test


def ground_truth_boxes(boxes_file: Path | None) -> dict[str, list[np.ndarray]]:
    """Resolved image path -> ground-truth boxes, from a landmark list (empty when there is none)."""
    if boxes_file is None or not boxes_file.is_file():
        return {}
    boxes: dict[str, list[np.ndarray]] = {}
    for face in read_landmark_list(boxes_file):
        boxes.setdefault(str((boxes_file.parent / face.image_path).resolve()), []).append(face.box)
    return boxes


@dataclass
class Check:
    """One reported metric and its floor (or ceiling); ``value`` None means it could not be measured."""

    name: str
    value: float | None
    limit: float
    ceiling: bool = False
    detail: str = ""

    @property
    def passed(self) -> bool:
        """Whether the metric reached its floor (stayed under its ceiling); unmeasured metrics pass."""
        if self.value is None:
            return True
        return self.value <= self.limit if self.ceiling else self.value >= self.limit

    def line(self) -> str:
        """One report line: name, value, detail and the verdict against the limit."""
        if self.value is None:
            return f"{self.name:<24}not measured ({self.detail})"
        bound = f"{'ceiling' if self.ceiling else 'floor'} {self.limit:g}"
        verdict = "ok" if self.passed else "MISSED"
        return f"{self.name:<24}{self.value:.4f}  {self.detail}  [{bound}: {verdict}]"


def detection_recall(results: dict[str, ImageResult], truth: dict[str, list[np.ndarray]], min_face: float,
                     floor: float) -> Check:
    """Recall (and precision) of the detector over ground-truth faces of at least ``min_face`` pixels."""
    evaluator = DetectionEvaluator(iou_threshold=0.5, min_face_size=min_face)
    for path, result in results.items():
        key = str(Path(path).resolve())
        if key not in truth or result.error is not None:
            continue
        boxes = np.array([f.box for f in result.faces]).reshape(-1, 4)
        scores = np.array([f.score for f in result.faces])
        evaluator.add(boxes, scores, np.array(truth[key]))
    if not evaluator.matches:
        return Check("detection recall", None, floor, detail="no ground-truth boxes for these images")
    summary = evaluator.summary()
    return Check("detection recall", summary.recall, floor,
                 detail=f"of {summary.faces} faces >= {min_face:g} px in {summary.images} images "
                        f"(IoU 0.5), precision {summary.precision:.4f}")


def _primary(results: dict[str, ImageResult], path: str) -> np.ndarray | None:
    """The main face's embedding of image ``path`` (None: unreadable, or no usable face)."""
    result = results.get(path)
    return None if result is None or result.primary is None else result.primary.embedding


def verification(system: FaceRecognitionSystem, results: dict[str, ImageResult],
                 pairs: list[tuple[str, str, bool]]) -> tuple[float, dict[str, float]]:
    """Accuracy of the matcher's decisions on test pairs (a pair with a missing face is decided 'different'),
    with the false-accept rate it got beside the one its validation curve promised."""
    decided = np.zeros(len(pairs), dtype=bool)
    matcher = system.active_matcher()
    rows = [i for i, (a, b, _) in enumerate(pairs)
            if _primary(results, a) is not None and _primary(results, b) is not None]
    if rows:
        emb_a = np.stack([_primary(results, pairs[i][0]) for i in rows])
        emb_b = np.stack([_primary(results, pairs[i][1]) for i in rows])
        with system.times.stage("match", len(rows)):
            _, same = matcher.verify(emb_a, emb_b)
        decided[rows] = same
    truth = np.array([s for _, _, s in pairs])
    accuracy = float(np.mean(decided == truth))
    details = {"pairs": len(pairs), "pairs_without_face": len(pairs) - len(rows),
               "true_accept_rate": float(decided[truth].mean()) if truth.any() else float("nan"),
               "false_accept_rate": float(decided[~truth].mean()) if (~truth).any() else float("nan"),
               "promised_false_accept_rate": matcher.far_at()}
    return accuracy, details


def promised_far(far: float | None) -> str:
    """The report's note of the false-accept rate the matcher's validation curve promised (none without one)."""
    return "" if far is None else f" (promised {far:.4f})"


def identification(system: FaceRecognitionSystem, results: dict[str, ImageResult], test: ProbeSplit,
                   threshold: float) -> dict[str, float]:
    """Open-set identification of every probe's main face: top-1 of enrolled people, acceptance of the others."""
    known = set(system.gallery.names)
    size = system.embedder.embedding_size
    embeddings = np.stack([_primary(results, p) if _primary(results, p) is not None else np.full(size, np.nan)
                           for p, _ in test.probes]) if test.probes else np.zeros((0, size))
    accepted, closest, _ = system.match_embeddings(embeddings, threshold)
    truth = [name for _, name in test.probes]
    is_known = np.array([name in known for name in truth], dtype=bool)
    correct = np.array([a == t for a, t in zip(accepted, truth)], dtype=bool)
    rank1 = np.array([c == t for c, t in zip(closest, truth)], dtype=bool)
    impostor = np.array([a is not None for a in accepted], dtype=bool)
    no_face = np.array([e is None for e in (_primary(results, p) for p, _ in test.probes)], dtype=bool)
    return {
        "known_probes": int(is_known.sum()), "unknown_probes": int((~is_known).sum()),
        "top1": float(correct[is_known].mean()) if is_known.any() else float("nan"),
        "closed_set_rank1": float(rank1[is_known].mean()) if is_known.any() else float("nan"),
        "impostor_accept_rate": float(impostor[~is_known].mean()) if (~is_known).any() else float("nan"),
        "probes_without_face": int(no_face.sum()), "threshold": float(threshold),
    }


def enrol(system: FaceRecognitionSystem, results: dict[str, ImageResult],
          gallery_images: dict[str, list[str]]) -> tuple[list[str], dict[str, str]]:
    """Add each person's gallery images (their main faces) to the system's gallery; returns the gallery images
    without a usable face, and the people who could not be enrolled at all (name -> reason)."""
    missing: list[str] = []
    not_enrolled: dict[str, str] = {}
    for name, paths in gallery_images.items():
        found = [p for p in paths if _primary(results, p) is not None]
        missing += [p for p in paths if _primary(results, p) is None]
        if found:
            system.gallery.add(name, np.stack([_primary(results, p) for p in found]),
                               [str(Path(p).resolve()) for p in found], embedder_sha256=system.embedder_sha256)
        else:
            not_enrolled[name] = f"none of {len(paths)} gallery image(s) gave a usable face"
    return missing, not_enrolled


def distractor_gallery(folder: Path, count: int, per_identity: int, exclude: set[str]) -> dict[str, list[str]]:
    """Up to ``count`` identities of ``folder`` (not among the test identities), ``per_identity`` images each."""
    distractors = IdentityFolder(folder)
    chosen: dict[str, list[str]] = {}
    for path, label in distractors.samples:
        name = distractors.classes[label]
        if name in exclude or (name not in chosen and len(chosen) >= count):
            continue
        paths = chosen.setdefault(name, [])
        if len(paths) < per_identity:
            paths.append(str(path))
    return {f"distractor/{name}": paths for name, paths in chosen.items()}


def json_ready(value: object) -> object:
    """``value`` with NaN floats turned into None (strict JSON has no NaN), recursively."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def format_times(system: FaceRecognitionSystem) -> str:
    """Mean milliseconds per image of each stage."""
    return ", ".join(f"{stage} {seconds * 1000:.1f} ms" for stage, seconds in system.times.per_image().items())


def use_stored_gallery(test: ProbeSplit, stored: Gallery) -> None:
    """Let the stored gallery decide who is enrolled: nothing is enrolled, every test image not in it is a probe."""
    sources = {s for identity in stored for s in identity.sources}
    test.gallery_images = {}
    test.probes = [(p, name) for name, paths in test.images.items() for p in paths
                   if str(Path(p).resolve()) not in sources]


def verification_pairs(pairs_file: Path | None, pairs_root: Path, folder: IdentityFolder, log: BadInputLog,
                       seed: int) -> list[tuple[str, str, bool]]:
    """(image a, image b, same person) of the pairs file whose images exist, or, without a pairs file, balanced
    pairs built (seeded) from the identity folders."""
    if pairs_file is not None:
        pairs_list = read_pairs(pairs_file)
        valid = check_pairs_images(pairs_list, pairs_root, log=log)
        return [(str(lfw_image_path(pairs_root, p.name_a, p.index_a)),
                 str(lfw_image_path(pairs_root, p.name_b, p.index_b)), p.same) for p in valid]
    labels = np.array([label for _, label in folder.samples])
    a, b, same = balanced_pairs(labels, 10, np.random.default_rng(seed))
    return [(str(folder.samples[i][0]), str(folder.samples[j][0]), bool(s)) for i, j, s in zip(a, b, same)]


def analyse_test_images(system: FaceRecognitionSystem, test: ProbeSplit, pairs: list[tuple[str, str, bool]],
                        distractors: dict[str, list[str]]) -> tuple[list[str], dict[str, ImageResult]]:
    """One pass of the system over every image the checks need: the test images (every face) and the distractors
    (main face); returns the sorted test image paths and each image's result."""
    test_paths = sorted({p for paths in test.images.values() for p in paths} | {p for a, b, _ in pairs for p in (a, b)})
    extra = sorted({p for paths in distractors.values() for p in paths})
    analysed = system.analyse_in_chunks(test_paths, all_faces=True, progress="test images")
    results = dict(zip(test_paths, analysed))
    if extra:
        results.update(zip(extra, system.analyse_in_chunks(extra, all_faces=False, progress="distractors")))
    return test_paths, results


@dataclass
class Enrolment:
    """What enrolment could not do: gallery images without a usable face, people not enrolled (name -> reason)
    and their probes, left out of identification (they are not impostors)."""

    missing_gallery_faces: list[str]
    not_enrolled: dict[str, str]
    left_out_probes: dict[str, list[str]]


def enrol_test_set(system: FaceRecognitionSystem, results: dict[str, ImageResult], test: ProbeSplit,
                   distractors: dict[str, list[str]]) -> Enrolment:
    """Enrol the test split's gallery images and the distractors (see ``enrol``); the probes of people who could
    not be enrolled leave ``test.probes``."""
    missing_gallery_faces, not_enrolled = enrol(system, results, {**test.gallery_images, **distractors})
    left_out_probes = {name: [p for p, n in test.probes if n == name] for name in not_enrolled}
    test.probes = [(p, name) for p, name in test.probes if name not in not_enrolled]
    return Enrolment(missing_gallery_faces, not_enrolled, left_out_probes)


@dataclass
class SystemFigures:
    """What one end-to-end check measured: image and face counts, the checks against their floors, and the
    verification and identification details."""

    test_paths: list[str]
    unreadable: int
    with_face: int
    without_face: list[str]
    faces: int
    alignment_failures: int
    checks: list[Check]
    verification: dict[str, float]
    identification: dict[str, float]
    splits: list[dict[str, object]] = field(default_factory=list)  # per enrolment split, when several were measured


def measure(system: FaceRecognitionSystem, config: Config, results: dict[str, ImageResult], test_paths: list[str],
            test: ProbeSplit, pairs: list[tuple[str, str, bool]], boxes_file: Path) -> SystemFigures:
    """Count images and faces, and measure detection recall, verification and identification against the floors
    of the ``system`` config section."""
    floors = config.system
    image_results = [results[p] for p in test_paths]
    unreadable = sum(r.error is not None for r in image_results)
    with_face = sum(bool(r.faces) for r in image_results)
    without_face = [p for p in test_paths if results[p].error is None and not results[p].faces]
    faces = sum(len(r.faces) for r in image_results)
    alignment_failures = sum(r.alignment_failures for r in image_results)
    detection = detection_recall(results, ground_truth_boxes(boxes_file), config.detector.min_face_size,
                                 floors.min_detection_recall)
    checks, verify_details, ident = split_checks(system, config, results, test, pairs)
    return SystemFigures(test_paths, unreadable, with_face, without_face, faces, alignment_failures,
                         [detection, *checks], verify_details, ident)


def split_checks(system: FaceRecognitionSystem, config: Config, results: dict[str, ImageResult], test: ProbeSplit,
                 pairs: list[tuple[str, str, bool]]) -> tuple[list[Check], dict[str, float], dict[str, float]]:
    """The checks that depend on who is enrolled (verification, whose scores are centred on the gallery, and
    identification) with their details, for the system's current gallery."""
    floors = config.system
    accuracy, verify_details = verification(system, results, pairs)
    threshold = system.identification_threshold(floors.impostor_accept_target)
    ident = identification(system, results, test, threshold)
    checks = [
        Check("verification accuracy", accuracy, floors.min_verification_accuracy,
              detail=f"on {verify_details['pairs']} pairs ({verify_details['pairs_without_face']} without a face), "
                     f"TAR {verify_details['true_accept_rate']:.4f}, FAR {verify_details['false_accept_rate']:.4f}"
                     + promised_far(verify_details["promised_false_accept_rate"])),
        Check("identification top-1", None if np.isnan(ident["top1"]) else ident["top1"],
              floors.min_identification_top1,
              detail=f"of {ident['known_probes']} probes of enrolled people (closed-set rank-1 "
                     f"{ident['closed_set_rank1']:.4f})" if ident["known_probes"] else "no probes of enrolled people"),
        Check("impostor acceptance", None if np.isnan(ident["impostor_accept_rate"]) else ident["impostor_accept_rate"],
              floors.max_impostor_accept_rate, ceiling=True,
              detail=f"of {ident['unknown_probes']} probes of people not in the gallery" if ident["unknown_probes"]
              else "no probes of people outside the gallery"),
    ]
    return checks, verify_details, ident


def measure_other_split(system: FaceRecognitionSystem, config: Config, results: dict[str, ImageResult],
                        test: ProbeSplit, pairs: list[tuple[str, str, bool]], distractors: dict[str, list[str]],
                        first: SystemFigures) -> SystemFigures:
    """The figures of one more enrolment split, from the images already analysed: ``first``'s (the first
    split's) with the split-dependent checks re-measured; the system's gallery is left as it was (the first
    split's, the one saved)."""
    kept = system.gallery
    system.gallery = Gallery(system.embedder_sha256, system.embedder.embedding_size)
    try:
        enrol_test_set(system, results, test, distractors)
        checks, verify_details, ident = split_checks(system, config, results, test, pairs)
    finally:
        system.gallery = kept
    return replace(first, checks=[first.checks[0], *checks], verification=verify_details, identification=ident)


def split_figures(figures: SystemFigures, test: ProbeSplit) -> dict[str, object]:
    """The split-dependent figures of one enrolment split (and who was left out as a stranger), for the report."""
    ident = figures.identification
    return {"seed": test.seed, "strangers": test.unknown, "verification_accuracy": figures.checks[1].value,
            "false_accept_rate": figures.verification["false_accept_rate"], "top1": ident["top1"],
            "closed_set_rank1": ident["closed_set_rank1"], "impostor_accept_rate": ident["impostor_accept_rate"]}


def _mean_dict(dicts: list[dict[str, float]]) -> dict[str, float]:
    """Each numeric entry averaged over the dicts (NaN entries skipped; NaN when all are); others, and entries
    the same in every dict (counts that do not depend on the split), the first's."""
    def mean(key: str) -> float:
        values = [d[key] for d in dicts if d[key] is not None and not np.isnan(d[key])]
        if len(values) == len(dicts) and all(v == values[0] for v in values):
            return values[0]
        return float(np.mean(values)) if values else float("nan")

    return {key: mean(key) if isinstance(value, (int, float)) else value for key, value in dicts[0].items()}


def mean_over_splits(runs: list[SystemFigures], tests: list[ProbeSplit]) -> SystemFigures:
    """The figures of several enrolment splits of one test set as one: each split-dependent check (all but
    detection recall) averaged, its range in the detail; the numeric verification and identification details
    averaged; each split's own figures kept in ``splits``. The counts and the rest are the first split's."""
    first = runs[0]
    checks = [first.checks[0]]
    for i, check in enumerate(first.checks[1:], start=1):
        values = [r.checks[i].value for r in runs if r.checks[i].value is not None]
        if not values:
            checks.append(check)
            continue
        detail = (f"mean of {len(values)} enrolment splits (range {min(values):.4f}-{max(values):.4f}); "
                  f"first split: {check.detail}")
        checks.append(replace(check, value=float(np.mean(values)), detail=detail))
    return replace(first, checks=checks, verification=_mean_dict([r.verification for r in runs]),
                   identification=_mean_dict([r.identification for r in runs]),
                   splits=[split_figures(r, test) for r, test in zip(runs, tests, strict=True)])


def report_lines(figures: SystemFigures, enrolment: Enrolment, system: FaceRecognitionSystem, config: Config,
                 folder: IdentityFolder, test: ProbeSplit, distractors: dict[str, list[str]]) -> list[str]:
    """The printed report: the system and test set, one line per stage and check, then who and what was left out."""
    images, unreadable, with_face = len(figures.test_paths), figures.unreadable, figures.with_face
    checks, ident = figures.checks, figures.identification
    centring = ("" if system.matcher.centre is None else
                "; scores centred on the gallery's mean embedding" if system.active_matcher() is not system.matcher
                else "; scores centred on the tuning images' mean embedding (too few gallery faces to adapt)")
    lines = [
        f"system: {matcher_summary(system.matcher)}{centring}; embedder {system.embedder_sha256[:12]}; "
        f"{'aligned input' if system.detector is None else 'MTCNN O-Net ' + str(config.path('onet'))}",
        f"test set: {folder.root} - {len(test.images)} identities, {len(system.gallery)} in the gallery "
        f"({system.gallery.num_embeddings} embeddings, {len(distractors)} distractors), "
        f"{sum(name not in system.gallery for name in test.images)} not enrolled; "
        f"{len(test.probes)} probes; identification threshold {ident['threshold']:.4f}",
        f"{'images read':<24}{images - unreadable} of {images} ({unreadable} unreadable)",
        f"{'faces detected':<24}{figures.faces} in {with_face} images "
        f"({images - unreadable - with_face} images without a face)",
        checks[0].line(),
        f"{'alignment failures':<24}{figures.alignment_failures}",
        *[c.line() for c in checks[1:]],
        f"{'gallery images no face':<24}{len(enrolment.missing_gallery_faces)}",
        f"{'probes without a face':<24}{ident['probes_without_face']}",
        f"{'time per image':<24}{format_times(system)}",
    ]
    for split in figures.splits:
        lines.append(f"enrolment split seed {split['seed']}: verification {split['verification_accuracy']:.4f} "
                     f"(FAR {split['false_accept_rate']:.4f}), top-1 {split['top1']:.4f}, closed-set rank-1 "
                     f"{split['closed_set_rank1']:.4f}, impostor acceptance {split['impostor_accept_rate']:.4f}")
    if figures.without_face:
        lines.append(f"images without a face: {name_some(figures.without_face)}")
    for name, reason in enrolment.not_enrolled.items():
        lines.append(f"not enrolled: {name} ({reason}); "
                     f"{len(enrolment.left_out_probes[name])} probe(s) left out of identification")
    lines += [f"left out of the test set: {path} ({reason})" for path, reason in folder.left_out().items()]
    return lines


def report_json(figures: SystemFigures, enrolment: Enrolment, system: FaceRecognitionSystem,
                folder: IdentityFolder, gallery_path: Path, test_set: Path) -> dict[str, object]:
    """report.json: every check with its limit and verdict, the counts and details, and what was left out."""
    return {
        "checks": {c.name: {"value": c.value, "limit": c.limit, "ceiling": c.ceiling, "passed": c.passed}
                   for c in figures.checks},
        "images": len(figures.test_paths), "unreadable": figures.unreadable, "images_with_face": figures.with_face,
        "faces": figures.faces, "alignment_failures": figures.alignment_failures,
        "verification": figures.verification, "identification": figures.identification,
        "enrolment_splits": figures.splits,
        "images_without_face": figures.without_face,
        "gallery_images_without_face": enrolment.missing_gallery_faces,
        "not_enrolled": enrolment.not_enrolled, "probes_left_out": enrolment.left_out_probes,
        "identities_left_out": folder.left_out(),
        "seconds_per_image": system.times.per_image(), "gallery": str(gallery_path),
        "test_set": str(test_set),
        "embedder_sha256": system.embedder_sha256, "bad_inputs": len(system.log),
        "bad_input_files": sorted({problem.path for problem in system.log.problems}),
    }

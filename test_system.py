"""End-to-end check: detect -> align -> embed -> match on a test set; a per-stage report and an exit code.

    python test_system.py                                   # the pipeline's models on the synthetic test identities
    python test_system.py --pairs DIR/pairs.txt             # any LFW-layout test set (DIR/images/<Name>/...)
    python test_system.py --identities DIR                  # identity folders only (verification pairs built from them)
    python test_system.py --detector ../shared/pretrained/mtcnn_facenet_pytorch --embedder FILE --matcher FILE
    python test_system.py --reuse-gallery                   # identify against the stored gallery instead of enrolling
    python test_system.py --rebuild                         # re-embed the stored gallery's photos with current models

Protocol. The test identities are split (seeded) into enrolled people and people not in the gallery
(``system.unknown_fraction``). Each enrolled person's first ``system.gallery_images_per_identity`` images
go into the gallery (plus optional distractor identities, MegaFace-style); every other image is a probe.
Verification: each pair of the pairs file (or balanced pairs built from the identities) is decided by the
saved matcher at its own threshold - nothing is tuned on the test set. Identification (open set): a probe
of an enrolled person counts as correct when its best gallery identity is that person and passes the
identification threshold; a probe of someone not in the gallery is a false accept when it passes. Detection
recall is measured against ground-truth boxes (``landmarks.txt`` beside the images folder, as the synthetic
set writes it, or ``--boxes``) over faces of at least ``detector.min_face_size`` pixels.

An enrolled person none of whose gallery images gives a usable face cannot be enrolled: they are named in
the report with the reason, and their probes are left out of identification (scoring them as people outside
the gallery would count their photos as impostors). Identity folders left out (empty, too few images, links
not followed) and images without a face are named in the report as well.

The report gives images read, faces detected, detection recall, alignment failures, verification accuracy,
identification top-1, the impostor acceptance rate and seconds per image per stage; each metric is compared
with its floor in the ``system`` config section. The exit code is 1, with one line naming every missed
floor, when any is missed; 2 on bad input (one line naming the file).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from config import Config, load_config
from datasets.identity import IdentityFolder
from datasets.landmarks import read_landmark_list
from datasets.lfw import check_pairs_images, lfw_image_path, read_pairs
from models.gallery import Gallery
from models.matcher import balanced_pairs, matcher_summary
from models.system import FaceRecognitionSystem, ImageResult
from models.zoo import entry_matcher
from training.mtcnn.evaluation import DetectionEvaluator
from utils.atomic import atomic_write_text
from utils.cli import add_config_args, add_detector_arg, config_from_args, detector_overrides, run
from utils.errors import name_some
from utils.seed import seed_everything


def get_args_parser() -> argparse.ArgumentParser:
    """The command line (every flag explained in ``--help``)."""
    parser = argparse.ArgumentParser(
        description="End-to-end check of the face-recognition system (detector -> alignment -> embedder -> matcher "
                    "and gallery) on a test set; prints a per-stage report and exits non-zero when a metric misses "
                    "its floor (config section 'system').")
    data = parser.add_argument_group("test data")
    data.add_argument("--pairs", metavar="FILE", default=None,
                      help="LFW-format pairs file for verification (default: paths.test_pairs; its images are "
                           "<folder of FILE>/images/<Name>/<Name>_NNNN.jpg unless --images says otherwise)")
    data.add_argument("--images", metavar="DIR", default=None,
                      help="image root of the pairs, LFW layout (default: paths.test_images, or <pairs folder>/images)")
    data.add_argument("--identities", metavar="DIR", default=None,
                      help="identity folders enrolled and probed (default: the --images folder); given alone, "
                           "without --pairs, verification uses balanced pairs built from these folders")
    data.add_argument("--boxes", metavar="FILE", default=None,
                      help="ground-truth face boxes of the test images in the 5-point landmark-list format, paths "
                           "relative to the file (default: landmarks.txt beside the images folder, if present)")
    data.add_argument("--distractors", metavar="DIR", default=None,
                      help="identity folders enrolled as extra gallery identities, never probed "
                           "(default: system.distractors; how many: system.distractor_identities)")
    data.add_argument("--aligned-input", action="store_true",
                      help="the test images are already aligned face crops: skip detection and alignment")
    models = parser.add_argument_group("models (default: the paths section of the config)")
    add_detector_arg(models)
    models.add_argument("--embedder", metavar="FILE", default=None,
                        help="embedder checkpoint or model-zoo entry name (paths.embedder)")
    models.add_argument("--matcher", metavar="FILE", default=None,
                        help="matcher file from train_matching.py or entry name (paths.matcher; default with an "
                             "entry's --embedder: the entry's matcher); must be made for this embedder")
    gallery = parser.add_argument_group("gallery")
    gallery.add_argument("--gallery", metavar="FILE", default=None,
                         help="gallery file written after enrolment, or read with --reuse-gallery/--rebuild "
                              "(default: paths.gallery)")
    gallery.add_argument("--reuse-gallery", action="store_true",
                         help="identify against the stored gallery instead of enrolling the test identities; "
                              "it must come from the current embedder (else use --rebuild)")
    gallery.add_argument("--rebuild", action="store_true",
                         help="re-embed the stored gallery's source photos with the current models, save it, and "
                              "identify against it (after a model change)")
    parser.add_argument("--report", metavar="FILE", default=None,
                        help="JSON report path (default: <folder of the gallery file>/report.json)")
    add_config_args(parser)
    return parser


@dataclass
class ProbeSplit:
    """The test identities and their images, split into gallery images and probes."""

    images: dict[str, list[str]]  # identity -> image paths (sorted)
    enrolled: list[str]
    unknown: list[str]
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
    test = ProbeSplit(images, enrolled, unknown)
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
    result = results.get(path)
    return None if result is None or result.primary is None else result.primary.embedding


def verification(system: FaceRecognitionSystem, results: dict[str, ImageResult],
                 pairs: list[tuple[str, str, bool]]) -> tuple[float, dict[str, float]]:
    """Accuracy of the matcher's decisions on test pairs (a pair with a missing face is decided 'different')."""
    decided = np.zeros(len(pairs), dtype=bool)
    rows = [i for i, (a, b, _) in enumerate(pairs)
            if _primary(results, a) is not None and _primary(results, b) is not None]
    if rows:
        emb_a = np.stack([_primary(results, pairs[i][0]) for i in rows])
        emb_b = np.stack([_primary(results, pairs[i][1]) for i in rows])
        with system.times.stage("match", len(rows)):
            _, same = system.matcher.verify(emb_a, emb_b)
        decided[rows] = same
    truth = np.array([s for _, _, s in pairs])
    accuracy = float(np.mean(decided == truth))
    details = {"pairs": len(pairs), "pairs_without_face": len(pairs) - len(rows),
               "true_accept_rate": float(decided[truth].mean()) if truth.any() else float("nan"),
               "false_accept_rate": float(decided[~truth].mean()) if (~truth).any() else float("nan")}
    return accuracy, details


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


def apply_model_flags(args: argparse.Namespace) -> None:
    """Turn --detector/--embedder/--matcher into ``--set paths.*`` items (so the saved report shows them); an
    --embedder that names a model-zoo entry brings the entry's matcher unless --matcher is given."""
    args.set_items += detector_overrides(args.detector)
    if args.embedder:
        args.set_items.append(f"paths.embedder={args.embedder}")
    matcher = args.matcher or entry_matcher(args.embedder)
    if matcher:
        args.set_items.append(f"paths.matcher={matcher}")
    if args.gallery:
        args.set_items.append(f"paths.gallery={args.gallery}")


def resolve_test_data(args: argparse.Namespace, config: Config) -> tuple[Path | None, Path, Path]:
    """(pairs file or None, pairs image root, identity folders) from the flags and the config."""
    if args.identities and not args.pairs:
        identities = Path(args.identities)
        return None, identities, identities
    pairs = Path(args.pairs) if args.pairs else config.path("test_pairs")
    images = Path(args.images) if args.images else (pairs.parent / "images" if args.pairs
                                                    else config.path("test_images"))
    return pairs, images, Path(args.identities) if args.identities else images


def main(args: argparse.Namespace) -> int:
    """Build the system, enrol, verify, identify, report; 1 when a floor is missed."""
    apply_model_flags(args)
    config = config_from_args(args, load_config)
    seed_everything(config.runtime.seed)
    floors = config.system
    gallery_path = config.path("gallery")
    report_path = Path(args.report) if args.report else gallery_path.parent / "report.json"
    system = FaceRecognitionSystem.from_config(config, aligned_input=args.aligned_input)
    pairs_file, pairs_root, identities_root = resolve_test_data(args, config)

    stored: Gallery | None = None
    if args.rebuild or args.reuse_gallery:
        stored = Gallery.load(gallery_path, None if args.rebuild else system.embedder_sha256)
    folder = IdentityFolder(identities_root)
    test = gallery_probe_split(folder, floors.unknown_fraction, floors.gallery_images_per_identity,
                            floors.max_probes_per_identity, config.runtime.seed)
    if stored is not None:  # the stored gallery decides who is enrolled; every test image not in it is a probe
        sources = {s for identity in stored for s in identity.sources}
        test.gallery_images = {}
        test.probes = [(p, name) for name, paths in test.images.items() for p in paths
                       if str(Path(p).resolve()) not in sources]
    if pairs_file is not None:
        pairs_list = read_pairs(pairs_file)
        valid = check_pairs_images(pairs_list, pairs_root, log=system.log)
        pairs = [(str(lfw_image_path(pairs_root, p.name_a, p.index_a)),
                  str(lfw_image_path(pairs_root, p.name_b, p.index_b)), p.same) for p in valid]
    else:
        labels = np.array([label for _, label in folder.samples])
        a, b, same = balanced_pairs(labels, 10, np.random.default_rng(config.runtime.seed))
        pairs = [(str(folder.samples[i][0]), str(folder.samples[j][0]), bool(s)) for i, j, s in zip(a, b, same)]
    distractors_root = args.distractors or floors.distractors
    distractors = {}
    if distractors_root and floors.distractor_identities > 0 and stored is None:
        distractors = distractor_gallery(Path(distractors_root), floors.distractor_identities,
                                         floors.gallery_images_per_identity, set(test.images))

    # One pass of the system over every image the checks need.
    test_paths = sorted({p for paths in test.images.values() for p in paths} | {p for a, b, _ in pairs for p in (a, b)})
    extra = sorted({p for paths in distractors.values() for p in paths})
    analysed = system.analyse_in_chunks(test_paths, all_faces=True, progress="test images")
    results = dict(zip(test_paths, analysed))
    if extra:
        results.update(zip(extra, system.analyse_in_chunks(extra, all_faces=False, progress="distractors")))

    if args.rebuild:
        rebuild = system.rebuild_gallery(stored)
        system.gallery.save(gallery_path)
        print(f"gallery rebuilt for embedder {system.embedder_sha256[:12]}: {rebuild.rebuilt} embeddings of "
              f"{len(system.gallery)} identities; {len(rebuild.failed)} could not be re-made -> {gallery_path}")
    elif stored is not None:
        system.gallery = stored
    missing_gallery_faces, not_enrolled = enrol(system, results, {**test.gallery_images, **distractors})
    if stored is None:
        system.gallery.save(gallery_path)
    left_out_probes = {name: [p for p, n in test.probes if n == name] for name in not_enrolled}  # not impostors
    test.probes = [(p, name) for p, name in test.probes if name not in not_enrolled]

    image_results = [results[p] for p in test_paths]
    unreadable = sum(r.error is not None for r in image_results)
    with_face = sum(bool(r.faces) for r in image_results)
    without_face = [p for p in test_paths if results[p].error is None and not results[p].faces]
    faces = sum(len(r.faces) for r in image_results)
    alignment_failures = sum(r.alignment_failures for r in image_results)
    boxes_file = Path(args.boxes) if args.boxes else pairs_root.parent / "landmarks.txt"
    detection = detection_recall(results, ground_truth_boxes(boxes_file), config.detector.min_face_size,
                                 floors.min_detection_recall)
    accuracy, verify_details = verification(system, results, pairs)
    threshold = system.identification_threshold(floors.impostor_accept_target)
    ident = identification(system, results, test, threshold)

    checks = [
        detection,
        Check("verification accuracy", accuracy, floors.min_verification_accuracy,
              detail=f"on {verify_details['pairs']} pairs ({verify_details['pairs_without_face']} without a face), "
                     f"TAR {verify_details['true_accept_rate']:.4f}, FAR {verify_details['false_accept_rate']:.4f}"),
        Check("identification top-1", None if np.isnan(ident["top1"]) else ident["top1"],
              floors.min_identification_top1,
              detail=f"of {ident['known_probes']} probes of enrolled people (closed-set rank-1 "
                     f"{ident['closed_set_rank1']:.4f})" if ident["known_probes"] else "no probes of enrolled people"),
        Check("impostor acceptance", None if np.isnan(ident["impostor_accept_rate"]) else ident["impostor_accept_rate"],
              floors.max_impostor_accept_rate, ceiling=True,
              detail=f"of {ident['unknown_probes']} probes of people not in the gallery" if ident["unknown_probes"]
              else "no probes of people outside the gallery"),
    ]
    lines = [
        f"system: {matcher_summary(system.matcher)}; embedder {system.embedder_sha256[:12]}; "
        f"{'aligned input' if system.detector is None else 'MTCNN O-Net ' + str(config.path('onet'))}",
        f"test set: {identities_root} - {len(test.images)} identities, {len(system.gallery)} in the gallery "
        f"({system.gallery.num_embeddings} embeddings, {len(distractors)} distractors), "
        f"{sum(name not in system.gallery for name in test.images)} not enrolled; "
        f"{len(test.probes)} probes; identification threshold {threshold:.4f}",
        f"{'images read':<24}{len(test_paths) - unreadable} of {len(test_paths)} ({unreadable} unreadable)",
        f"{'faces detected':<24}{faces} in {with_face} images "
        f"({len(test_paths) - unreadable - with_face} images without a face)",
        checks[0].line(),
        f"{'alignment failures':<24}{alignment_failures}",
        *[c.line() for c in checks[1:]],
        f"{'gallery images no face':<24}{len(missing_gallery_faces)}",
        f"{'probes without a face':<24}{ident['probes_without_face']}",
        f"{'time per image':<24}{format_times(system)}",
    ]
    if without_face:
        lines.append(f"images without a face: {name_some(without_face)}")
    for name, reason in not_enrolled.items():
        lines.append(f"not enrolled: {name} ({reason}); "
                     f"{len(left_out_probes[name])} probe(s) left out of identification")
    lines += [f"left out of the test set: {path} ({reason})" for path, reason in folder.left_out().items()]
    print("\n".join(lines))
    if len(system.log):
        print(system.log.summary())
    report = {
        "checks": {c.name: {"value": c.value, "limit": c.limit, "ceiling": c.ceiling, "passed": c.passed}
                   for c in checks},
        "images": len(test_paths), "unreadable": unreadable, "images_with_face": with_face, "faces": faces,
        "alignment_failures": alignment_failures, "verification": verify_details, "identification": ident,
        "images_without_face": without_face, "gallery_images_without_face": missing_gallery_faces,
        "not_enrolled": not_enrolled, "probes_left_out": left_out_probes,
        "identities_left_out": folder.left_out(),
        "seconds_per_image": system.times.per_image(), "gallery": str(gallery_path),
        "test_set": str(pairs_file or identities_root),
        "embedder_sha256": system.embedder_sha256, "bad_inputs": len(system.log),
        "bad_input_files": sorted({problem.path for problem in system.log.problems}),
    }
    atomic_write_text(report_path, json.dumps(json_ready(report), indent=2, allow_nan=False) + "\n")
    missed = [c for c in checks if not c.passed]
    if missed:
        reasons = "; ".join(f"{c.name} {c.value:.4f} {'above' if c.ceiling else 'below'} {c.limit:g}" for c in missed)
        print(f"FAILED: {reasons}", file=sys.stderr)
        return 1
    print(f"all checks passed (report: {report_path})")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main, get_args_parser()))

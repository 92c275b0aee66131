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
floor, when any is missed; 2 on bad input (one line naming the file). ``--splits N`` measures verification and
identification over N seeded enrolment splits of the same analysed images and reports their means, each split's
figures beside them: on a test set of a dozen people, one split's identification figures swing by several points.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from config import Config, load_config
from datasets.identity import IdentityFolder
from deploy.system_check import (
    analyse_test_images,
    distractor_gallery,
    enrol_test_set,
    gallery_probe_split,
    json_ready,
    mean_over_splits,
    measure,
    measure_other_split,
    report_json,
    report_lines,
    use_stored_gallery,
    verification_pairs,
)
from models.gallery import Gallery
from models.system import FaceRecognitionSystem
from models.zoo import entry_matcher
from utils.atomic import atomic_write_text
from utils.cli import add_config_args, add_detector_arg, config_from_args, detector_overrides, run
from utils.errors import DataError
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
    gallery.add_argument("--splits", metavar="N", type=int, default=1,
                         help="measure identification and verification over N seeded enrolment splits (seeds "
                              "runtime.seed .. runtime.seed+N-1: who is enrolled, who is a stranger) and report the "
                              "mean of each, with its range and every split's figures; the detector and embedder run "
                              "once. Steadier than one split on small test sets. The gallery saved is the first "
                              "split's (default: 1)")
    gallery.add_argument("--rebuild", action="store_true",
                         help="re-embed the stored gallery's source photos with the current models, save it, and "
                              "identify against it (after a model change)")
    parser.add_argument("--report", metavar="FILE", default=None,
                        help="JSON report path (default: <folder of the gallery file>/report.json; refused when "
                             "another tool wrote that file)")
    add_config_args(parser)
    return parser


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


def refuse_foreign_report(path: Path) -> None:
    """Stop before any work when the default report path holds another tool's report (e.g. ``paths.gallery`` put
    in a training run's folder, whose report.json this run would overwrite)."""
    if not path.is_file():
        return
    try:
        ours = "checks" in json.loads(path.read_text())
    except (OSError, ValueError, TypeError):
        ours = False
    if not ours:
        raise DataError(path, "holds a report that test_system.py did not write and would overwrite; "
                              "pass --report FILE or give paths.gallery a folder of its own")


def main(args: argparse.Namespace) -> int:
    """Build the system, enrol, verify, identify, report; 1 when a floor is missed."""
    if args.splits < 1:
        raise DataError("--splits", f"must be at least 1, got {args.splits}")
    if args.splits > 1 and (args.rebuild or args.reuse_gallery):
        raise DataError("--splits", "the stored gallery fixes who is enrolled; measure several splits by enrolling "
                                    "afresh (without --reuse-gallery/--rebuild)")
    apply_model_flags(args)
    config = config_from_args(args, load_config)
    seed_everything(config.runtime.seed)
    floors = config.system
    gallery_path = config.path("gallery")
    report_path = Path(args.report) if args.report else gallery_path.parent / "report.json"
    if not args.report:
        refuse_foreign_report(report_path)
    system = FaceRecognitionSystem.from_config(config, aligned_input=args.aligned_input)
    pairs_file, pairs_root, identities_root = resolve_test_data(args, config)

    stored: Gallery | None = None
    if args.rebuild or args.reuse_gallery:
        stored = Gallery.load(gallery_path, None if args.rebuild else system.embedder_sha256)
    folder = IdentityFolder(identities_root)
    splits = [gallery_probe_split(folder, floors.unknown_fraction, floors.gallery_images_per_identity,
                                  floors.max_probes_per_identity, config.runtime.seed + k) for k in range(args.splits)]
    test = splits[0]
    if stored is not None:
        use_stored_gallery(test, stored)
    pairs = verification_pairs(pairs_file, pairs_root, folder, system.log, config.runtime.seed)
    distractors_root = args.distractors or floors.distractors
    distractors = {}
    if distractors_root and floors.distractor_identities > 0 and stored is None:
        distractors = distractor_gallery(Path(distractors_root), floors.distractor_identities,
                                         floors.gallery_images_per_identity, set(test.images))
    test_paths, results = analyse_test_images(system, test, pairs, distractors)

    if args.rebuild:
        rebuild = system.rebuild_gallery(stored)
        system.gallery.save(gallery_path)
        print(f"gallery rebuilt for embedder {system.embedder_sha256[:12]}: {rebuild.rebuilt} embeddings of "
              f"{len(system.gallery)} identities; {len(rebuild.failed)} could not be re-made -> {gallery_path}")
    elif stored is not None:
        system.gallery = stored
    enrolment = enrol_test_set(system, results, test, distractors)
    if stored is None:
        system.gallery.save(gallery_path)

    boxes_file = Path(args.boxes) if args.boxes else pairs_root.parent / "landmarks.txt"
    figures = measure(system, config, results, test_paths, test, pairs, boxes_file)
    if len(splits) > 1:
        others = [measure_other_split(system, config, results, other, pairs, distractors, figures)
                  for other in splits[1:]]
        figures = mean_over_splits([figures, *others], splits)
    print("\n".join(report_lines(figures, enrolment, system, config, folder, test, distractors)))
    if len(system.log):
        print(system.log.summary())
    report = report_json(figures, enrolment, system, folder, gallery_path, pairs_file or identities_root)
    atomic_write_text(report_path, json.dumps(json_ready(report), indent=2, allow_nan=False) + "\n")
    missed = [c for c in figures.checks if not c.passed]
    if missed:
        reasons = "; ".join(f"{c.name} {c.value:.4f} {'above' if c.ceiling else 'below'} {c.limit:g}" for c in missed)
        print(f"FAILED: {reasons}", file=sys.stderr)
        return 1
    print(f"all checks passed (report: {report_path})")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main, get_args_parser()))

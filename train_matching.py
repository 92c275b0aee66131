"""Stage 3: the verification matcher - a tuned similarity threshold and/or a calibrated pair classifier.

    python train_matching.py                                  # both methods on the validation pairs, keep the better
    python train_matching.py --method threshold               # the threshold search only (fine_tune_threshold)
    python train_matching.py --set matching.metric=euclidean  # threshold on L2 distance instead of cosine
    python train_matching.py --pairs DIR/pairs.txt --images DIR/images --aligned-input
    python train_matching.py --aligned-input                  # the aligned validation crops train_facenet.py used

Every image of the validation pairs (and, for the classifier, of the identity folders its pairs are built
from) goes through the system's own detector, alignment and embedder. Then:

* threshold: cosine similarity (or L2 distance) of each pair; the best-accuracy threshold is chosen on the
  other folds and applied to each held-out fold (the LFW protocol; folds as the pairs file gives them);
  the saved threshold is the best one on all pairs, with the thresholds at the target false-accept rates.
* classifier: logistic regression (or a linear SVM) on pair features |a-b|, a*b, cosine and distance,
  trained on balanced same/different pairs built from the identity folders; for each fold it is trained
  without the identities of that fold and judged on its pairs, so both methods face the same held-out
  pairs; probabilities are calibrated on identity-disjoint folds.

Both are reported side by side (accuracy, precision, recall, F1, ROC AUC, EER, TAR@FAR); the threshold is
kept unless the classifier beats it on the same folds by more than one standard error of their fold-by-fold
difference (a matcher with more parameters has to earn its place). The kept one is saved as ``paths.matcher``
beside the embedder checkpoint, with the checkpoint's SHA-256. It also carries what identification needs: a
false-accept curve from every different-person pair of the validation identities, and simulated open-set
galleries (half the identities enrolled, the other half probing) from which the system sets its identification
threshold for ``system.impostor_accept_target``.
ROC curves and same/different score histograms are written as PNG next to a JSON report.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import get_args

import numpy as np

from config import Config, MatchingMethod, load_config
from datasets.identity import IdentityFolder
from datasets.lfw import check_pairs_images, read_pairs
from models.matcher import matcher_summary
from models.system import FaceRecognitionSystem
from models.zoo import EMBEDDER_FILE, entry_file, is_entry
from training.matching.methods import choose, fit_methods
from training.matching.pairs import embed_validation_images, fold_ids_for, identity_set, pair_set
from training.matching.report import print_comparison, write_report
from utils.cli import add_config_args, add_detector_arg, config_from_args, detector_overrides, run
from utils.seed import seed_everything


def get_args_parser() -> argparse.ArgumentParser:
    """The command line (every flag explained in ``--help``)."""
    parser = argparse.ArgumentParser(
        description="Tune the verification matcher on validation pairs: a similarity threshold (k-fold CV) and/or "
                    "a calibrated classifier on pair features; saves the one it keeps beside the embedder.")
    parser.add_argument("--method", choices=get_args(MatchingMethod), default=None,
                        help="which matcher to fit; 'both' fits each, reports them side by side and keeps the "
                             "threshold unless the classifier is more accurate by over one standard error "
                             "(default: matching.method)")
    parser.add_argument("--pairs", metavar="FILE", default=None,
                        help="LFW-format pairs file of the validation pairs (default: paths.val_pairs; with "
                             "--aligned-input facenet.val_pairs, the aligned crops train_facenet.py validates on)")
    parser.add_argument("--images", metavar="DIR", default=None,
                        help="image root of those pairs, <DIR>/<Name>/<Name>_NNNN.jpg (default: 'images' beside "
                             "--pairs, else paths.val_images, or facenet.val_images with --aligned-input)")
    parser.add_argument("--identities", metavar="DIR", default=None,
                        help="identity folders the classifier's training pairs are built from "
                             "(default: matching.identities, or the --images folder)")
    add_detector_arg(parser, " to find and align the faces with")
    parser.add_argument("--embedder", metavar="FILE", default=None,
                        help="embedder checkpoint (or model-zoo entry name) whose embeddings are matched "
                             "(default: paths.embedder)")
    parser.add_argument("--output", metavar="FILE", default=None,
                        help="where the chosen matcher is written (default: paths.matcher, beside the embedder; "
                             "for an entry's embedder <paths.runs_dir>/<entry>/)")
    parser.add_argument("--report-dir", metavar="DIR", default=None,
                        help="folder for report.json, roc.png and the score histograms "
                             "(default: <folder of --output>/matching)")
    parser.add_argument("--aligned-input", action="store_true",
                        help="the images are already aligned face crops: skip detection and alignment")
    add_config_args(parser)
    return parser


def validation_pairs(args: argparse.Namespace, config: Config) -> tuple[Path, Path]:
    """The pairs file and image root to tune on: the flags, else the config's validation pairs - the aligned
    crops of ``facenet.val_pairs`` with ``--aligned-input``, the photos of ``paths.val_pairs`` without."""
    if args.pairs:
        pairs_file = Path(args.pairs)
        images = pairs_file.parent / "images"
    elif args.aligned_input:
        pairs_file, images = config.facenet_path("val_pairs"), config.facenet_path("val_images")
    else:
        pairs_file, images = config.path("val_pairs"), config.path("val_images")
    return pairs_file, Path(args.images) if args.images else images


def main(args: argparse.Namespace) -> int:
    """Embed the validation pairs, fit and compare the matchers, save the one kept, write the report."""
    args.set_items += detector_overrides(args.detector)
    config = config_from_args(args, load_config)
    seed_everything(config.runtime.seed)
    settings = config.matching
    method = args.method or settings.method
    pairs_file, images = validation_pairs(args, config)
    embedder_path = entry_file(args.embedder, EMBEDDER_FILE) if args.embedder else config.path("embedder")
    beside = embedder_path.parent  # a model-zoo entry stays as shipped: its new matcher goes to <runs_dir>/<entry>
    if is_entry(beside):
        beside = config.path("runs_dir") / beside.name
    output = Path(args.output) if args.output else (beside / config.path("matcher").name
                                                    if args.embedder else config.path("matcher"))
    report_dir = Path(args.report_dir) if args.report_dir else output.parent / "matching"

    system = FaceRecognitionSystem.from_config(config, embedder=embedder_path, matcher=None, gallery=None,
                                               aligned_input=args.aligned_input)
    system.embed_batch_size = settings.embed_batch_size
    pairs = read_pairs(pairs_file)
    check_pairs_images(pairs, images, log=system.log)
    folds = fold_ids_for(pairs, settings.folds)
    folder = IdentityFolder(Path(args.identities or settings.identities or images))
    embedded = embed_validation_images(system, pairs, images, folder)
    valid_pairs = pair_set(pairs, images, folds, embedded)
    print(f"validation pairs: {len(valid_pairs.same)} of {len(pairs.pairs)} usable "
          f"({valid_pairs.dropped} with an image missing, unreadable or without a face), "
          f"{len(np.unique(valid_pairs.folds))} folds; embedder {system.embedder_sha256[:12]}")

    for path, reason in folder.left_out().items():
        print(f"identity folder left out: {path} ({reason})")
    identities = identity_set(folder, embedded)
    results = fit_methods(method, valid_pairs, identities, config, folder.root)
    print_comparison(results, settings)

    chosen, why = choose(results)
    chosen.matcher.save(output, system.embedder_sha256)
    write_report(report_dir, results, chosen, why, valid_pairs, folder, system, output=output,
                 embedder_path=embedder_path, pairs_file=pairs_file)
    print(f"kept {chosen.name} ({why}): {matcher_summary(chosen.matcher)} -> {output}")
    print(f"report and plots: {report_dir}")
    if len(system.log):
        print(system.log.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main, get_args_parser()))

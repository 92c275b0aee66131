"""Stage 3: the verification matcher - a tuned similarity threshold and/or a calibrated pair classifier.

    python train_matching.py                                  # both methods on the validation pairs, keep the better
    python train_matching.py --method threshold               # the threshold search only (fine_tune_threshold)
    python train_matching.py --set matching.metric=euclidean  # threshold on L2 distance instead of cosine
    python train_matching.py --pairs DIR/pairs.txt --images DIR/images --aligned-input

Every image of the validation pairs (and, for the classifier, of the identity folders its pairs are built
from) goes through the system's own detector, alignment and embedder. Then:

* threshold: cosine similarity (or L2 distance) of each pair; the best-accuracy threshold is chosen on the
  other folds and applied to each held-out fold (the LFW protocol; folds as the pairs file gives them);
  the saved threshold is the best one on all pairs, with the thresholds at the target false-accept rates.
* classifier: logistic regression (or a linear SVM) on pair features |a-b|, a*b, cosine and distance,
  trained on balanced same/different pairs built from the identity folders; for each fold it is trained
  without the identities of that fold and judged on its pairs, so both methods face the same held-out
  pairs; probabilities are calibrated on identity-disjoint folds.

Both are reported side by side (accuracy, precision, recall, F1, ROC AUC, EER, TAR@FAR); the more accurate
one is saved as ``paths.matcher`` beside the embedder checkpoint, with the checkpoint's SHA-256. It also
carries what identification needs: a false-accept curve from every different-person pair of the
validation identities, and simulated open-set galleries (half the identities enrolled, the other half
probing) from which the system sets its identification threshold for ``system.impostor_accept_target``.
ROC curves and same/different score histograms are written as PNG next to a JSON report.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

import numpy as np
from sklearn.metrics import precision_recall_fscore_support

from config import Config, MatchingMethod, load_config
from datasets.identity import IdentityFolder
from datasets.lfw import PairsFile, check_pairs_images, lfw_image_path, read_pairs
from models.matcher import (
    ClassifierMatcher,
    Matcher,
    ThresholdMatcher,
    different_identity_pairs,
    fit_classifier_on_identities,
    matcher_summary,
    simulate_open_set,
)
from models.system import FaceRecognitionSystem
from models.zoo import EMBEDDER_FILE, entry_file, is_entry
from utils.atomic import atomic_write_text
from utils.cli import add_config_args, add_detector_arg, config_from_args, detector_overrides, run
from utils.errors import DataError
from utils.metrics import (
    VerificationResult,
    fine_tune_threshold,
    fold_ids,
    pair_scores,
    threshold_at_far,
    verification_metrics,
)
from utils.plots import plot_roc, plot_score_histograms
from utils.seed import seed_everything

TYPICAL_COSINE_RANGE = (0.6, 0.8)  # a rule of thumb for the cosine threshold (README, "Match"); printed, not enforced
MAX_NEGATIVE_PAIRS = 200_000  # different-person pairs scored for the false-accept curve (sampled beyond this)


class NotEnoughIdentities(ValueError):
    """The identity folders are too small to train and judge the classifier on held-out data."""


def get_args_parser() -> argparse.ArgumentParser:
    """The command line (every flag explained in ``--help``)."""
    parser = argparse.ArgumentParser(
        description="Tune the verification matcher on validation pairs: a similarity threshold (k-fold CV) and/or "
                    "a calibrated classifier on pair features; saves the better one beside the embedder.")
    parser.add_argument("--method", choices=get_args(MatchingMethod), default=None,
                        help="which matcher to fit; 'both' fits each, reports them side by side and keeps the more "
                             "accurate (default: matching.method)")
    parser.add_argument("--pairs", metavar="FILE", default=None,
                        help="LFW-format pairs file of the validation pairs (default: paths.val_pairs)")
    parser.add_argument("--images", metavar="DIR", default=None,
                        help="image root of those pairs, <DIR>/<Name>/<Name>_NNNN.jpg (default: paths.val_images)")
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


@dataclass
class PairSet:
    """The validation pairs whose two images gave a face: embeddings, labels, folds, names and image paths."""

    emb_a: np.ndarray
    emb_b: np.ndarray
    same: np.ndarray
    folds: np.ndarray
    names: list[tuple[str, str]]
    paths: list[tuple[str, str]]
    dropped: int = 0  # pairs without a usable face in one of their images


@dataclass
class MethodResult:
    """One matcher's cross-validated verdict on the validation pairs and the matcher fitted on all of them."""

    name: str
    matcher: Matcher
    accuracy: float
    accuracy_std: float
    metrics: dict[str, float]
    scores: np.ndarray  # held-out scores of each pair (the threshold method's are the raw similarities)
    roc: tuple[np.ndarray, np.ndarray]
    notes: list[str] = field(default_factory=list)


def fold_ids_for(pairs: PairsFile, folds: int) -> np.ndarray:
    """Fold of each pair: the pairs file's folds (``folds`` 0; a one-fold file is cut into 10 blocks in file
    order), or ``folds`` contiguous blocks."""
    n = len(pairs.pairs)
    if folds == 0 and pairs.num_folds > 1:
        return np.repeat(np.arange(pairs.num_folds), 2 * pairs.pairs_per_fold)
    count = folds or 10
    count = min(count, n // 2)
    if count < 2:
        raise DataError(pairs.path or "pairs", f"{n} pairs are too few for cross-validation")
    return fold_ids(n, count)


def embed_paths(system: FaceRecognitionSystem, paths: Sequence[str], desc: str) -> dict[str, np.ndarray | None]:
    """Main-face embedding of each image path (None: unreadable or no face), with a progress bar."""
    unique = sorted(set(paths))
    embeddings, _ = system.embed_images(unique, progress=desc)
    return {p: (embeddings[i] if np.all(np.isfinite(embeddings[i])) else None) for i, p in enumerate(unique)}


def pair_set(pairs: PairsFile, images: Path, folds: np.ndarray, embedded: dict[str, np.ndarray | None]) -> PairSet:
    """The pairs whose images both gave an embedding (others are counted in ``dropped``)."""
    rows, names, paths = [], [], []
    for i, pair in enumerate(pairs.pairs):
        a = str(lfw_image_path(images, pair.name_a, pair.index_a))
        b = str(lfw_image_path(images, pair.name_b, pair.index_b))
        if embedded.get(a) is not None and embedded.get(b) is not None:
            rows.append(i)
            names.append((pair.name_a, pair.name_b))
            paths.append((a, b))
    if not rows:
        raise DataError(pairs.path or "pairs", "no pair has a detectable face in both images")
    same = np.array([pairs.pairs[i].same for i in rows])
    return PairSet(np.stack([embedded[a] for a, _ in paths]), np.stack([embedded[b] for _, b in paths]), same,
                   folds[rows], names, paths, dropped=len(pairs.pairs) - len(rows))


def _metrics(result: VerificationResult, far_targets: Sequence[float], decided: np.ndarray | None = None,
             same: np.ndarray | None = None) -> dict[str, float]:
    """The scalar metrics reported for one method; precision/recall/F1 of ``decided`` when given, else of the
    protocol's own held-out decisions."""
    precision, recall, f1 = result.precision, result.recall, result.f1
    if decided is not None:
        precision, recall, f1, _ = precision_recall_fscore_support(same, decided, average="binary", zero_division=0)
    out = {"precision": float(precision), "recall": float(recall), "f1": float(f1), "auc": result.auc,
           "eer": result.eer, "pairs": result.num_pairs}
    out.update({f"tar@far={far:g}": result.tar_at_far[float(far)] for far in far_targets})
    return out


@dataclass
class IdentitySet:
    """Embedded images of identity folders: embeddings, integer labels, identity names and image paths."""

    embeddings: np.ndarray
    labels: np.ndarray
    classes: list[str]
    paths: list[str]


def identity_set(folder: IdentityFolder, embedded: dict[str, np.ndarray | None]) -> IdentitySet:
    """The identity-folder images that gave an embedding."""
    kept = [(str(p), label) for p, label in folder.samples if embedded.get(str(p)) is not None]
    if not kept:
        raise DataError(folder.root, "no image of these identity folders gave a face")
    return IdentitySet(np.stack([embedded[p] for p, _ in kept]), np.array([label for _, label in kept]),
                       list(folder.classes), [p for p, _ in kept])


def evaluate_threshold(pairs: PairSet, identities: IdentitySet, metric: str, far_targets: Sequence[float],
                       seed: int) -> MethodResult:
    """The threshold method: k-fold CV accuracy, then ``fine_tune_threshold`` on all pairs for the saved matcher;
    its false-accept curve comes from every different-person pair of the identity images."""
    scores, higher = pair_scores(pairs.emb_a, pairs.emb_b, metric)
    result = verification_metrics(scores, pairs.same, pairs.folds, higher_is_same=higher,
                                  far_target=min(far_targets), tar_fars=far_targets)
    threshold, _ = fine_tune_threshold(scores, pairs.same, higher_is_same=higher)
    metrics = _metrics(result, far_targets)
    metrics["threshold"] = threshold
    for far in far_targets:
        metrics[f"threshold@far={far:g}"] = threshold_at_far(scores, pairs.same, far, higher_is_same=higher)
    metrics["fold_threshold_std"] = float(np.std(result.fold_thresholds))
    matcher = ThresholdMatcher(threshold=threshold, metric=metric, embedding_size=pairs.emb_a.shape[1],
                               validation={"accuracy": result.accuracy, **metrics})
    first, second = different_identity_pairs(identities.labels, MAX_NEGATIVE_PAIRS, np.random.default_rng(seed))
    negatives = matcher.score(identities.embeddings[first], identities.embeddings[second]) if len(first) else \
        scores[~pairs.same]
    matcher.set_far_curve(negatives)
    return MethodResult(f"threshold ({metric})", matcher, result.accuracy, result.accuracy_std, metrics, scores,
                        (result.fpr, result.tpr))


def evaluate_classifier(pairs: PairSet, identities: IdentitySet, config: Config) -> MethodResult:
    """The classifier method: per fold, trained on pairs of the identities not in that fold and judged on the
    fold's pairs; then fitted on every identity for the saved matcher."""
    settings = config.matching
    far_targets = settings.far_targets
    options = classifier_options(config)
    held_out = np.zeros(len(pairs.same))
    notes = []
    negatives: list[np.ndarray] = []
    rng = np.random.default_rng(config.runtime.seed)
    for fold in np.unique(pairs.folds):
        mask = pairs.folds == fold
        fold_names = {name for k in np.flatnonzero(mask) for name in pairs.names[k]}
        keep = np.array([identities.classes[label] not in fold_names for label in identities.labels])
        _, counts = np.unique(identities.labels[keep], return_counts=True)
        if (counts >= 2).sum() < 4:
            fold_paths = {path for k in np.flatnonzero(mask) for path in pairs.paths[k]}
            keep = np.array([path not in fold_paths for path in identities.paths])
            notes.append(f"fold {fold}: its pairs name nearly every identity; trained on the other images instead "
                         "(image-disjoint, not identity-disjoint)")
        try:
            model = fit_classifier_on_identities(identities.embeddings[keep], identities.labels[keep], **options)
        except ValueError as exc:
            raise NotEnoughIdentities(f"fold {fold}: {exc} outside the fold's pairs") from None
        held_out[mask] = model.score(pairs.emb_a[mask], pairs.emb_b[mask])
        unseen = np.flatnonzero(~np.isin(identities.labels, identities.labels[keep]))
        if len(unseen):  # different-person pairs among identities this fold's model never saw
            first, second = different_identity_pairs(identities.labels[unseen], MAX_NEGATIVE_PAIRS // 10, rng)
            negatives.append(model.score(identities.embeddings[unseen[first]], identities.embeddings[unseen[second]]))
    decided = held_out >= 0.5
    fold_accuracy = [float(np.mean(decided[pairs.folds == f] == pairs.same[pairs.folds == f]))
                     for f in np.unique(pairs.folds)]
    result = verification_metrics(held_out, pairs.same, pairs.folds, higher_is_same=True,
                                  far_target=min(far_targets), tar_fars=far_targets)
    metrics = _metrics(result, far_targets, decided, pairs.same)
    matcher = fit_classifier_on_identities(identities.embeddings, identities.labels, **options)
    pooled = np.concatenate(negatives) if negatives else np.zeros(0)
    matcher.set_far_curve(pooled if len(pooled) > (~pairs.same).sum() else held_out[~pairs.same])
    metrics["threshold"] = matcher.threshold
    for far in far_targets:
        metrics[f"threshold@far={far:g}"] = threshold_at_far(held_out, pairs.same, far)
    metrics["c"] = matcher.c
    matcher.validation = {"accuracy": float(np.mean(fold_accuracy)), **metrics}
    name = f"classifier ({settings.classifier}, {settings.calibration})"
    return MethodResult(name, matcher, float(np.mean(fold_accuracy)), float(np.std(fold_accuracy)), metrics,
                        held_out, (result.fpr, result.tpr), notes)


def classifier_options(config: Config) -> dict[str, object]:
    """The ``fit_classifier_on_identities`` settings of the matching config."""
    settings = config.matching
    return {"pairs_per_identity": settings.pairs_per_identity, "classifier": settings.classifier,
            "c": settings.classifier_c or None, "calibration": settings.calibration,
            "folds": settings.calibration_folds, "seed": config.runtime.seed}


def calibrate_open_set(result: MethodResult, identities: IdentitySet, config: Config) -> None:
    """Give the matcher its simulated open-set galleries (see ``models.matcher.simulate_open_set``), on
    identities its parameters were not fitted on: the threshold matcher uses every validation identity; the
    classifier is refitted on each half of the identities and simulated on the other half."""
    rounds, per_identity = config.matching.open_set_rounds, config.system.gallery_images_per_identity
    result.matcher.gallery_scoring = config.matching.gallery_scoring
    if rounds == 0:
        return
    rng = np.random.default_rng(config.runtime.seed)
    if isinstance(result.matcher, ClassifierMatcher):
        order = rng.permutation(np.unique(identities.labels))
        parts = []
        for train, held in ((order[::2], order[1::2]), (order[1::2], order[::2])):
            fit_rows, sim_rows = np.isin(identities.labels, train), np.isin(identities.labels, held)
            try:
                model = fit_classifier_on_identities(identities.embeddings[fit_rows], identities.labels[fit_rows],
                                                     **classifier_options(config))
                model.gallery_scoring = result.matcher.gallery_scoring
            except ValueError as exc:
                result.notes.append(f"open set not calibrated: {exc} in half of the identities")
                return
            parts.append(simulate_open_set(model, identities.embeddings[sim_rows], identities.labels[sim_rows],
                                           per_identity, max(rounds // 2, 1), rng))
        if all(parts):
            result.matcher.open_set = {**parts[0], "rounds": parts[0]["rounds"] + parts[1]["rounds"],
                                       "gallery_identities": min(p["gallery_identities"] for p in parts),
                                       "best_impostor": sorted(parts[0]["best_impostor"] + parts[1]["best_impostor"])}
    else:
        result.matcher.open_set = simulate_open_set(result.matcher, identities.embeddings, identities.labels,
                                                    per_identity, rounds, rng)
    if not result.matcher.open_set:
        result.notes.append(f"open set not calibrated: fewer than 4 identities with {per_identity}+ images")
        return
    target = config.system.impostor_accept_target
    simulated = result.matcher.open_set
    thr = result.matcher.open_set_threshold(target, simulated["gallery_identities"])
    result.metrics["open_set_threshold"] = thr
    result.notes.append(f"open set: {len(simulated['best_impostor'])} simulated probes of unknown people against "
                        f"galleries of {simulated['gallery_identities']} identities; identification threshold "
                        f"{thr:.4f} for {target:g} of them accepted")


def choose(results: Sequence[MethodResult]) -> MethodResult:
    """The more accurate method (ties go to the first, the simpler threshold)."""
    return max(results, key=lambda r: (round(r.accuracy, 10), -results.index(r)))


def side_by_side(results: Sequence[MethodResult], far_targets: Sequence[float]) -> str:
    """A plain-text table of every method's metrics, one column per method."""
    rows = [("accuracy (held-out folds)", lambda r: f"{r.accuracy:.4f} +- {r.accuracy_std:.4f}")]
    for key, label in (("precision", "precision"), ("recall", "recall"), ("f1", "F1"), ("auc", "ROC AUC"),
                       ("eer", "EER")):
        rows.append((label, lambda r, k=key: f"{r.metrics[k]:.4f}"))
    for far in far_targets:
        rows.append((f"TAR @ FAR={far:g}", lambda r, f=far: f"{r.metrics[f'tar@far={f:g}']:.4f}"))
    rows.append(("decision threshold", lambda r: f"{r.metrics['threshold']:.4f}"))
    rows.append(("FAR curve from", lambda r: f"{r.matcher.far_thresholds.get('negatives', 0)} diff. pairs"))
    for far in far_targets:
        rows.append((f"threshold @ FAR={far:g}", lambda r, f=far: f"{r.metrics[f'threshold@far={f:g}']:.4f}"))
    width = max(len(label) for label, _ in rows) + 2
    columns = [max(len(r.name), 18) + 2 for r in results]
    lines = [" " * width + "".join(r.name.ljust(c) for r, c in zip(results, columns))]
    for label, cell in rows:
        lines.append(label.ljust(width) + "".join(cell(r).ljust(c) for r, c in zip(results, columns)))
    return "\n".join(lines)


def write_plots(results: Sequence[MethodResult], pairs: PairSet, report_dir: Path) -> list[Path]:
    """ROC of every method on one plot, and same/different score histograms per method."""
    written = [plot_roc(report_dir / "roc.png", {r.name: r.roc for r in results},
                        title="validation pairs (held-out folds)")]
    for r in results:
        slug = r.name.split(" ")[0]
        xlabel = "calibrated probability" if isinstance(r.matcher, ClassifierMatcher) else r.name
        written.append(plot_score_histograms(report_dir / f"scores_{slug}.png", r.scores, pairs.same,
                                             threshold=r.metrics["threshold"], title=f"{r.name}: same vs different",
                                             xlabel=xlabel))
    return written


def main(args: argparse.Namespace) -> int:
    """Embed the validation pairs, fit and compare the matchers, save the better one, write the report."""
    args.set_items += detector_overrides(args.detector)
    config = config_from_args(args, load_config)
    seed_everything(config.runtime.seed)
    settings = config.matching
    method = args.method or settings.method
    pairs_file = Path(args.pairs) if args.pairs else config.path("val_pairs")
    images = Path(args.images) if args.images else (pairs_file.parent / "images" if args.pairs
                                                    else config.path("val_images"))
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
    wanted = [str(lfw_image_path(images, name, index)) for p in pairs.pairs
              for name, index in ((p.name_a, p.index_a), (p.name_b, p.index_b))]
    folder = IdentityFolder(Path(args.identities or settings.identities or images))
    wanted += [str(p) for p, _ in folder.samples]
    embedded = embed_paths(system, [p for p in wanted if Path(p).is_file()], "embedding validation images")
    valid_pairs = pair_set(pairs, images, folds, embedded)
    print(f"validation pairs: {len(valid_pairs.same)} of {len(pairs.pairs)} usable "
          f"({valid_pairs.dropped} with an image missing, unreadable or without a face), "
          f"{len(np.unique(valid_pairs.folds))} folds; embedder {system.embedder_sha256[:12]}")

    for path, reason in folder.left_out().items():
        print(f"identity folder left out: {path} ({reason})")
    identities = identity_set(folder, embedded)
    results = []
    if method in ("threshold", "both"):
        results.append(evaluate_threshold(valid_pairs, identities, settings.metric, settings.far_targets,
                                          config.runtime.seed))
    if method in ("classifier", "both"):
        try:
            results.append(evaluate_classifier(valid_pairs, identities, config))
        except NotEnoughIdentities as exc:
            if method == "classifier":
                raise DataError(folder.root, f"cannot train the classifier matcher: {exc}") from None
            print(f"classifier skipped: {exc} (identity folders {folder.root})")
    for result in results:
        calibrate_open_set(result, identities, config)
    print(side_by_side(results, settings.far_targets))
    for r in results:
        for note in r.notes:
            print(f"note ({r.name}): {note}")
    threshold_result = next((r for r in results if isinstance(r.matcher, ThresholdMatcher)), None)
    if threshold_result is not None and settings.metric == "cosine":
        low, high = TYPICAL_COSINE_RANGE
        where = "inside" if low <= threshold_result.metrics["threshold"] <= high else "outside"
        print(f"cosine-similarity threshold {threshold_result.metrics['threshold']:.4f} ({where} the usual "
              f"{low}-{high}; the right value depends on the embedder and its training)")

    chosen = choose(results)
    chosen.matcher.save(output, system.embedder_sha256)
    plots = write_plots(results, valid_pairs, report_dir)
    report = {
        "chosen": chosen.name, "matcher": str(output), "embedder": str(embedder_path),
        "embedder_sha256": system.embedder_sha256, "pairs_file": str(pairs_file),
        "pairs_used": int(len(valid_pairs.same)),
        "pairs_without_face": valid_pairs.dropped, "identities_left_out": folder.left_out(),
        "bad_inputs": len(system.log),
        "bad_input_files": sorted({problem.path for problem in system.log.problems}),
        "methods": {r.name: {"accuracy": r.accuracy, "accuracy_std": r.accuracy_std, **r.metrics, "notes": r.notes}
                    for r in results},
        "plots": [str(p) for p in plots],
    }
    atomic_write_text(report_dir / "report.json", json.dumps(report, indent=2) + "\n")
    print(f"kept {chosen.name}: {matcher_summary(chosen.matcher)} -> {output}")
    print(f"report and plots: {report_dir}")
    if len(system.log):
        print(system.log.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main, get_args_parser()))

"""The two matcher methods - a tuned similarity threshold and a calibrated pair classifier - judged on the same
held-out folds of the validation pairs, given their open-set calibration, and the choice between them."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.metrics import precision_recall_fscore_support

from config import Config, MatchingMethod
from models.matcher import (
    ClassifierMatcher,
    Matcher,
    ThresholdMatcher,
    centre_embeddings,
    different_identity_pairs,
    fit_classifier_on_identities,
    simulate_open_set,
)
from training.matching.pairs import IdentitySet, PairSet
from utils.errors import DataError
from utils.metrics import VerificationResult, fine_tune_threshold, pair_scores, threshold_at_far, verification_metrics

MAX_NEGATIVE_PAIRS = 200_000  # different-person pairs scored for the false-accept curve (sampled beyond this)


class NotEnoughIdentities(ValueError):
    """The identity folders are too small to train and judge the classifier on held-out data."""


@dataclass
class MethodResult:
    """One matcher's cross-validated verdict on the validation pairs and the matcher fitted on all of them."""

    name: str
    matcher: Matcher
    accuracy: float
    accuracy_std: float
    fold_accuracies: tuple[float, ...]  # per held-out fold, in fold order (the same folds for every method)
    metrics: dict[str, float]
    scores: np.ndarray  # held-out scores of each pair (the threshold method's are the raw similarities)
    roc: tuple[np.ndarray, np.ndarray]
    notes: list[str] = field(default_factory=list)


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


def evaluate_threshold(pairs: PairSet, identities: IdentitySet, metric: str, far_targets: Sequence[float],
                       seed: int, operating_far: float = 0.0) -> MethodResult:
    """The threshold method: k-fold CV accuracy, then the saved matcher's threshold on all pairs: the most accurate
    (``fine_tune_threshold``), or with ``operating_far`` > 0 the one accepting that share of different-person pairs
    (its accuracy on all pairs reported beside); its false-accept curve comes from every different-person pair of
    the identity images."""
    scores, higher = pair_scores(pairs.emb_a, pairs.emb_b, metric)
    result = verification_metrics(scores, pairs.same, pairs.folds, higher_is_same=higher,
                                  far_target=min(far_targets), tar_fars=far_targets)
    threshold, _ = fine_tune_threshold(scores, pairs.same, higher_is_same=higher)
    metrics = _metrics(result, far_targets)
    if operating_far > 0:
        threshold = threshold_at_far(scores, pairs.same, operating_far, higher_is_same=higher)
        accepted = scores >= threshold if higher else scores <= threshold
        metrics["operating_far"] = operating_far
        metrics["operating_accuracy"] = float(np.mean(accepted == pairs.same))
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
    return MethodResult(f"threshold ({metric})", matcher, result.accuracy, result.accuracy_std,
                        tuple(result.fold_accuracies), metrics, scores, (result.fpr, result.tpr))


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
    return MethodResult(name, matcher, float(np.mean(fold_accuracy)), float(np.std(fold_accuracy)),
                        tuple(fold_accuracy), metrics, held_out, (result.fpr, result.tpr), notes)


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


def choose(results: Sequence[MethodResult]) -> tuple[MethodResult, str]:
    """The method to keep and why: the first (simplest) unless a later one is more accurate on the same folds by
    more than one standard error of their fold-by-fold difference (the one-standard-error rule). A matcher with
    more parameters that only ties on the validation people has not shown it transfers to new photos."""
    kept, why = results[0], "the only method fitted"
    for challenger in results[1:]:
        gain = np.subtract(challenger.fold_accuracies, kept.fold_accuracies)
        error = float(gain.std(ddof=1) / np.sqrt(len(gain))) if len(gain) > 1 else 0.0
        beats = gain.mean() > error
        why = (f"{challenger.name} {gain.mean():+.4f} in accuracy over the same folds, standard error {error:.4f}: "
               + ("more than one standard error better" if beats else "within one standard error, the simpler kept"))
        if beats:
            kept = challenger
    return kept, why


def centred_on_identities(pairs: PairSet, identities: IdentitySet) -> tuple[PairSet, IdentitySet, np.ndarray]:
    """Pairs and identity images with the identity images' mean embedding removed (``matching.centring``), and
    that mean: the matchers are fitted on centred embeddings and then keep the mean as their centre."""
    centre = identities.embeddings.mean(axis=0)
    pairs = dataclasses.replace(pairs, emb_a=centre_embeddings(pairs.emb_a, centre),
                                emb_b=centre_embeddings(pairs.emb_b, centre))
    return pairs, dataclasses.replace(identities, embeddings=centre_embeddings(identities.embeddings, centre)), centre


def fit_methods(method: MatchingMethod, pairs: PairSet, identities: IdentitySet, config: Config,
                identities_root: Path) -> list[MethodResult]:
    """Each method ``method`` names ('both': threshold and classifier), judged and calibrated; with 'both' a
    classifier the identity folders are too small for is skipped, saying so. With ``matching.centring`` all of
    it happens on centred embeddings and each matcher keeps the centre (it then scores raw embeddings)."""
    settings = config.matching
    centre = None
    if settings.centring:
        pairs, identities, centre = centred_on_identities(pairs, identities)
    results = []
    if method in ("threshold", "both"):
        results.append(evaluate_threshold(pairs, identities, settings.metric, settings.far_targets,
                                          config.runtime.seed, settings.operating_far))
    if method in ("classifier", "both"):
        try:
            results.append(evaluate_classifier(pairs, identities, config))
        except NotEnoughIdentities as exc:
            if method == "classifier":
                raise DataError(identities_root, f"cannot train the classifier matcher: {exc}") from None
            print(f"classifier skipped: {exc} (identity folders {identities_root})")
    for result in results:
        calibrate_open_set(result, identities, config)
        result.matcher.centre = centre
    return results

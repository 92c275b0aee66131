"""Face verification metrics: the LFW protocol (k-fold threshold choice), VAL@FAR, ROC AUC, EER, P/R/F1.

One implementation shared by train_facenet.py (validation) and train_matching.py (threshold tuning).
Scores are similarities (``higher_is_same=True``: cosine) or distances (``higher_is_same=False``: L2);
internally a distance is negated, so "same" always means ``score >= threshold`` for similarities and
``distance <= threshold`` for distances, and every threshold reported is in the caller's own units.

The protocol (Huang et al. 2007, LFW View 2): pairs are split into folds in file order (as many as the
pairs file header says: 10 for LFW View 2); for each fold the threshold with the best accuracy on the
other folds is applied to it; accuracy is the mean (and std) over folds. VAL@FAR follows the FaceNet
paper: the threshold giving the target false-accept rate on the other folds (interpolated between
observed negative scores), then the true-accept rate on the held-out fold.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score, roc_curve

PAIR_METRICS = ("cosine", "euclidean", "squared_euclidean")


def _as_similarity(scores: np.ndarray | Sequence[float], higher_is_same: bool) -> np.ndarray:
    """Scores as float64 similarities (distances negated); NaN/inf are refused."""
    values = np.asarray(scores, dtype=np.float64).ravel()
    if not np.all(np.isfinite(values)):
        raise ValueError("scores contain NaN or infinite values")
    return values if higher_is_same else -values


def _as_labels(same: np.ndarray | Sequence[bool], n: int) -> np.ndarray:
    """Same-identity flags as a bool array of length ``n``."""
    labels = np.asarray(same).ravel()
    if labels.shape[0] != n:
        raise ValueError(f"{n} scores but {labels.shape[0]} same/different labels")
    if labels.dtype != bool:
        if not np.all(np.isin(labels, (0, 1))):
            raise ValueError("same/different labels must be booleans or 0/1")
        labels = labels.astype(bool)
    return labels


def _to_caller_units(threshold: float, higher_is_same: bool) -> float:
    """Undo the internal negation of distances."""
    return float(threshold if higher_is_same else -threshold)


def pair_scores(emb_a: np.ndarray, emb_b: np.ndarray, metric: str = "cosine") -> tuple[np.ndarray, bool]:
    """Row-wise scores of two [N, D] embedding arrays and whether higher means same (True for cosine)."""
    a = np.asarray(emb_a, dtype=np.float64)
    b = np.asarray(emb_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two [N, D] arrays of one shape, got {a.shape} and {b.shape}")
    if metric == "cosine":
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        return np.sum(a * b, axis=1) / np.maximum(norms, 1e-12), True
    if metric in ("euclidean", "squared_euclidean"):
        squared = np.sum((a - b) ** 2, axis=1)
        return (squared if metric == "squared_euclidean" else np.sqrt(squared)), False
    raise ValueError(f"unknown pair metric {metric!r}; choose one of {', '.join(PAIR_METRICS)}")


def fold_ids(num_pairs: int, folds: int | Sequence[int] | np.ndarray) -> np.ndarray:
    """Fold index per pair: ``folds`` contiguous blocks in file order (an int), or the given per-pair ids."""
    if isinstance(folds, (int, np.integer)):
        if not 2 <= folds <= num_pairs:
            raise ValueError(f"need 2..{num_pairs} folds for {num_pairs} pairs, got {folds}")
        # np.array_split sizes: the first (num_pairs % folds) folds get one extra pair.
        parts = np.array_split(np.arange(num_pairs), folds)
        return np.concatenate([np.full(len(part), i) for i, part in enumerate(parts)])
    ids = np.asarray(folds).ravel()
    if ids.shape[0] != num_pairs:
        raise ValueError(f"{num_pairs} pairs but {ids.shape[0]} fold ids")
    if len(np.unique(ids)) < 2:
        raise ValueError("the protocol needs at least 2 folds")
    return ids


def deal_folds(count: int, folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold index of each of ``count`` items (identities: the folds of their pairs are then identity-disjoint),
    dealt at random but evenly: the items in a random order go to folds 0, 1, ..., folds - 1, 0, 1, ..."""
    dealt = np.empty(count, dtype=np.int64)
    dealt[rng.permutation(count)] = np.arange(count) % max(folds, 1)
    return dealt


def _best_similarity_threshold(sim: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """Best-accuracy threshold on similarities (same <=> sim >= t) and that accuracy.

    Candidates sit midway between consecutive distinct scores (plus accept-all and reject-all); among
    equally good candidates the middle one is taken, which generalises better than either end.
    """
    n = sim.shape[0]
    order = np.argsort(-sim, kind="stable")
    desc = sim[order]
    true_accepts = np.concatenate([[0], np.cumsum(same[order])])  # accepting the top j pairs, j = 0..n
    accepted = np.arange(n + 1)
    correct = true_accepts + (n - same.sum()) - (accepted - true_accepts)
    boundary = np.ones(n + 1, dtype=bool)
    boundary[1:n] = desc[:-1] > desc[1:]  # a threshold can only split between distinct scores
    candidates = np.flatnonzero(boundary)
    best = candidates[correct[candidates] == correct[candidates].max()]
    j = int(best[len(best) // 2])
    if j == 0:
        threshold = float(np.nextafter(desc[0], np.inf))
    elif j == n:
        threshold = float(desc[-1])
    else:
        middle = (desc[j - 1] + desc[j]) / 2.0
        threshold = float(middle if middle > desc[j] else desc[j - 1])
    return threshold, float(correct[j] / n)


def fine_tune_threshold(
    scores: np.ndarray | Sequence[float], same: np.ndarray | Sequence[bool], higher_is_same: bool = True
) -> tuple[float, float]:
    """The best-accuracy threshold on these pairs and its accuracy (what each fold of the LFW protocol picks)."""
    sim = _as_similarity(scores, higher_is_same)
    labels = _as_labels(same, sim.shape[0])
    if sim.shape[0] == 0:
        raise ValueError("no pairs to choose a threshold on")
    threshold, accuracy = _best_similarity_threshold(sim, labels)
    return _to_caller_units(threshold, higher_is_same), accuracy


def _similarity_threshold_at_far(sim: np.ndarray, same: np.ndarray, far: float) -> float:
    """Threshold whose false-accept rate is ``far``, interpolated between the sorted negative scores.

    Accepting at the i-th highest negative score gives FAR i/n_neg; below 1/n_neg the threshold moves
    towards just above the highest negative (FAR 0).
    """
    negatives = np.sort(sim[~same])[::-1]
    if negatives.size == 0:
        raise ValueError("no different-identity pairs: FAR is undefined")
    rates = np.arange(negatives.size + 1) / negatives.size
    thresholds = np.concatenate([[np.nextafter(negatives[0], np.inf)], negatives])
    return float(np.interp(far, rates, thresholds))


def threshold_at_far(
    scores: np.ndarray | Sequence[float],
    same: np.ndarray | Sequence[bool],
    far: float,
    higher_is_same: bool = True,
) -> float:
    """Threshold (caller's units) at which the given share of different-identity pairs is accepted."""
    if not 0.0 <= far <= 1.0:
        raise ValueError(f"false-accept rate must be in [0, 1], got {far}")
    sim = _as_similarity(scores, higher_is_same)
    labels = _as_labels(same, sim.shape[0])
    return _to_caller_units(_similarity_threshold_at_far(sim, labels, far), higher_is_same)


def _equal_error_rate(fpr: np.ndarray, tpr: np.ndarray, thresholds: np.ndarray) -> tuple[float, float]:
    """EER (where FAR equals the false-reject rate) and its threshold, linearly interpolated on the ROC."""
    gap = fpr - (1.0 - tpr)  # rises from -1 (reject all) to +1 (accept all)
    i = int(np.argmax(gap >= 0))
    if i == 0 or gap[i] == 0:
        return float(fpr[i]), float(thresholds[i])
    w = -gap[i - 1] / (gap[i] - gap[i - 1])
    eer = fpr[i - 1] + w * (fpr[i] - fpr[i - 1])
    return float(eer), float(thresholds[i - 1] + w * (thresholds[i] - thresholds[i - 1]))


@dataclass
class VerificationResult:
    """Everything the LFW protocol reports; thresholds are in the caller's units (similarity or distance)."""

    accuracy: float
    accuracy_std: float
    fold_accuracies: list[float]
    fold_thresholds: list[float]
    threshold: float
    val: float
    val_std: float
    far: float
    far_target: float
    auc: float
    eer: float
    eer_threshold: float
    precision: float
    recall: float
    f1: float
    tar_at_far: dict[float, float]
    higher_is_same: bool
    num_pairs: int
    num_same: int
    num_folds: int
    fpr: np.ndarray = field(repr=False)
    tpr: np.ndarray = field(repr=False)

    def as_dict(self) -> dict[str, float]:
        """Scalar metrics only (for CSV logs and JSON reports)."""
        out = {
            key: float(getattr(self, key))
            for key in (
                "accuracy", "accuracy_std", "threshold", "val", "val_std", "far", "far_target", "auc",
                "eer", "eer_threshold", "precision", "recall", "f1", "num_pairs", "num_same", "num_folds",
            )
        }
        out.update({f"tar@far={far:g}": tar for far, tar in self.tar_at_far.items()})
        return out

    def summary(self) -> str:
        """One line for logs: accuracy +- std over folds, threshold, VAL@FAR, AUC, EER."""
        return (
            f"accuracy {self.accuracy:.4f} +- {self.accuracy_std:.4f} "
            f"({self.num_folds} folds, {self.num_pairs} pairs), "
            f"threshold {self.threshold:.4f}, VAL {self.val:.4f} +- {self.val_std:.4f} @ FAR={self.far_target:g} "
            f"(achieved {self.far:.4f}), AUC {self.auc:.4f}, EER {self.eer:.4f}"
        )


def verification_metrics(
    scores: np.ndarray | Sequence[float],
    same: np.ndarray | Sequence[bool],
    folds: int | Sequence[int] | np.ndarray = 10,
    *,
    higher_is_same: bool = True,
    far_target: float = 1e-3,
    tar_fars: Sequence[float] = (1e-3, 1e-2, 1e-1),
) -> VerificationResult:
    """The LFW protocol on pair scores: k-fold accuracy, per-fold thresholds, VAL@FAR, AUC, EER, P/R/F1.

    ``folds`` is the fold count (contiguous blocks in file order, as the pairs file header gives) or a
    fold id per pair. Precision/recall/F1 are of the cross-validated decisions (each fold judged by the
    threshold chosen on the others); ``tar_at_far`` uses thresholds set on all pairs.
    """
    if not 0.0 <= far_target <= 1.0:
        raise ValueError(f"far_target must be in [0, 1], got {far_target}")
    sim = _as_similarity(scores, higher_is_same)
    labels = _as_labels(same, sim.shape[0])
    if labels.all() or not labels.any():
        raise ValueError("verification needs both same-identity and different-identity pairs")
    ids = fold_ids(sim.shape[0], folds)

    fold_acc, fold_thr, vals, fars = [], [], [], []
    predicted = np.zeros_like(labels)
    for fold in np.unique(ids):
        test = ids == fold
        train = ~test
        if labels[train].all() or not labels[train].any():
            raise ValueError(f"fold {fold}: the other folds hold only one kind of pair")
        thr, _ = _best_similarity_threshold(sim[train], labels[train])
        predicted[test] = sim[test] >= thr
        fold_acc.append(float(np.mean(predicted[test] == labels[test])))
        fold_thr.append(_to_caller_units(thr, higher_is_same))
        far_thr = _similarity_threshold_at_far(sim[train], labels[train], far_target)
        accepted = sim[test] >= far_thr
        if labels[test].any():
            vals.append(float(accepted[labels[test]].mean()))
        if (~labels[test]).any():
            fars.append(float(accepted[~labels[test]].mean()))

    overall_thr, _ = _best_similarity_threshold(sim, labels)
    fpr, tpr, roc_thr = roc_curve(labels, sim, drop_intermediate=False)
    roc_thr = np.where(np.isfinite(roc_thr), roc_thr, np.nextafter(sim.max(), np.inf))
    eer, eer_thr = _equal_error_rate(fpr, tpr, roc_thr)
    precision, recall, f1, _ = precision_recall_fscore_support(labels, predicted, average="binary", zero_division=0)
    tar = {}
    for far in tar_fars:
        thr = _similarity_threshold_at_far(sim, labels, far)
        tar[float(far)] = float(np.mean(sim[labels] >= thr))
    return VerificationResult(
        accuracy=float(np.mean(fold_acc)),
        accuracy_std=float(np.std(fold_acc)),
        fold_accuracies=fold_acc,
        fold_thresholds=fold_thr,
        threshold=_to_caller_units(overall_thr, higher_is_same),
        val=float(np.mean(vals)) if vals else float("nan"),
        val_std=float(np.std(vals)) if vals else float("nan"),
        far=float(np.mean(fars)) if fars else float("nan"),
        far_target=float(far_target),
        auc=float(roc_auc_score(labels, sim)),
        eer=eer,
        eer_threshold=_to_caller_units(eer_thr, higher_is_same),
        precision=float(precision),
        recall=float(recall),
        f1=float(f1),
        tar_at_far=tar,
        higher_is_same=higher_is_same,
        num_pairs=int(sim.shape[0]),
        num_same=int(labels.sum()),
        num_folds=int(len(np.unique(ids))),
        fpr=fpr,
        tpr=tpr,
    )

"""Verification matchers: decide whether two face embeddings show the same person.

Two kinds, one interface (``score``, ``decide``, ``score_matrix``, ``save``/``load_matcher``):

* :class:`ThresholdMatcher` - cosine similarity or L2 distance against a threshold
  (``utils.metrics.fine_tune_threshold``), the threshold chosen on validation pairs by ``train_matching.py``.
* :class:`ClassifierMatcher` - a linear scikit-learn classifier (logistic regression by default) on pair
  features ``|a-b|, a*b, cosine, distance``, with probabilities calibrated on held-out identities.

A matcher is saved as a small JSON file beside the embedder checkpoint and records the embedder's SHA-256,
so a matcher tuned for one embedder is never used with another (one-line :class:`MatcherMismatchError`).
Both keep a false-accept curve measured on validation pairs, so callers can pick stricter operating points
(e.g. open-set identification against a gallery of many identities).

A matcher tuned with ``matching.centring`` subtracts a mean embedding before scoring (and re-normalises):
its tuning set's, or, through :meth:`Matcher.adapted_to`, the mean of the faces it is deployed on (the
system's gallery). Photos of another source share a direction of their own in embedding space that lifts
every different-person similarity; removing each source's mean lets a threshold tuned on one source hold
on another (README "Check the whole system").
"""
from __future__ import annotations

import dataclasses
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import numpy as np
from scipy.special import expit
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from config import Calibration, Classifier, GalleryScoring, ThresholdMetric
from utils.atomic import atomic_write_text
from utils.errors import DataError
from utils.file_header import check_header
from utils.metrics import deal_folds, pair_scores, threshold_at_far

MATCHER_FORMAT = "face-matcher"
MATCHER_VERSION = 2  # 2 added the optional centre; version 1 files (none) are still read
READABLE_VERSIONS = (1, 2)
MIN_ADAPT_FACES = 20  # fewest faces whose mean embedding stands in for the tuning set's (a steady estimate)
THRESHOLD_METRICS = get_args(ThresholdMetric)
CLASSIFIERS = get_args(Classifier)
CALIBRATIONS = get_args(Calibration)
C_GRID = (1e-3, 1e-2, 1e-1, 1.0)  # regularisation strengths tried when none is given
FAR_GRID = tuple(float(f) for f in np.logspace(-4, 0, 41))  # FARs at which the curve is stored
GALLERY_SCORINGS = get_args(GalleryScoring)


class MatcherMismatchError(DataError):
    """A matcher file was made for another embedder (or another embedding size) than the one in use."""


def pair_features(emb_a: np.ndarray, emb_b: np.ndarray) -> np.ndarray:
    """Symmetric pair features ``[|a-b|, a*b, cosine, L2 distance]``: [N, 2D+2] from two [N, D] arrays."""
    a = np.asarray(emb_a, dtype=np.float64)
    b = np.asarray(emb_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two [N, D] arrays of one shape, got {a.shape} and {b.shape}")
    cosine, _ = pair_scores(a, b, "cosine")
    distance, _ = pair_scores(a, b, "euclidean")
    return np.concatenate([np.abs(a - b), a * b, cosine[:, None], distance[:, None]], axis=1)


def centre_embeddings(embeddings: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Rows of ``embeddings`` minus ``centre``, re-normalised to unit length."""
    shifted = np.asarray(embeddings, dtype=np.float64) - np.asarray(centre, dtype=np.float64)
    return shifted / np.maximum(np.linalg.norm(shifted, axis=-1, keepdims=True), 1e-12)


def far_curve(negative_scores: np.ndarray, higher_is_same: bool) -> dict[str, list[float]]:
    """Thresholds (caller's units) at the FARs of :data:`FAR_GRID`, from scores of different-person pairs."""
    negatives = np.asarray(negative_scores, dtype=np.float64).ravel()
    if negatives.size == 0:
        raise ValueError("a false-accept curve needs scores of different-person pairs")
    same = np.zeros(negatives.size, dtype=bool)
    thresholds = [threshold_at_far(negatives, same, far, higher_is_same=higher_is_same) for far in FAR_GRID]
    return {"far": list(FAR_GRID), "threshold": thresholds, "negatives": int(negatives.size)}


@dataclass
class Matcher(ABC):
    """Common state and behaviour of both matchers: decision threshold, FAR curve, embedder fingerprint."""

    threshold: float = 0.0
    far_thresholds: dict[str, list[float]] = field(default_factory=dict)
    open_set: dict[str, Any] = field(default_factory=dict)  # see simulate_open_set
    embedding_size: int = 0
    validation: dict[str, float] = field(default_factory=dict)
    embedder_sha256: str = ""
    higher_is_same: bool = True
    gallery_scoring: str = "best"  # see identity_similarity
    centre: np.ndarray | None = None  # mean embedding removed before scoring (None: embeddings as they are)
    kind = "matcher"

    def score(self, emb_a: np.ndarray, emb_b: np.ndarray) -> np.ndarray:
        """Row-wise scores of two [N, D] embedding arrays (see ``higher_is_same`` for their direction)."""
        self._dim(emb_a)
        if self.centre is None:
            return self._score(emb_a, emb_b)
        return self._score(centre_embeddings(emb_a, self.centre), centre_embeddings(emb_b, self.centre))

    @abstractmethod
    def _score(self, emb_a: np.ndarray, emb_b: np.ndarray) -> np.ndarray:
        """:meth:`score` of embeddings already centred."""

    def adapted_to(self, faces: np.ndarray) -> Matcher:
        """This matcher centred on the mean embedding of ``faces`` (those it is deployed on, such as a gallery)
        instead of its tuning set's; itself when it does not centre or there are fewer than
        :data:`MIN_ADAPT_FACES` faces."""
        faces = np.asarray(faces, dtype=np.float64).reshape(-1, self._dim(faces))
        if self.centre is None or len(faces) < MIN_ADAPT_FACES:
            return self
        return dataclasses.replace(self, centre=faces.mean(axis=0))

    def decide(self, scores: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """Same-person decisions for scores, at ``threshold`` (default: the matcher's own)."""
        thr = self.threshold if threshold is None else threshold
        scores = np.asarray(scores, dtype=np.float64)
        return scores >= thr if self.higher_is_same else scores <= thr

    def verify(self, emb_a: np.ndarray, emb_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores and same-person decisions of row-wise embedding pairs."""
        scores = self.score(emb_a, emb_b)
        return scores, self.decide(scores)

    def score_matrix(self, probes: np.ndarray, gallery: np.ndarray, chunk: int = 65536) -> np.ndarray:
        """Scores [P, G] of every probe embedding against every gallery embedding (in bounded-memory chunks)."""
        probes = np.asarray(probes, dtype=np.float64).reshape(-1, self._dim(probes))
        gallery = np.asarray(gallery, dtype=np.float64).reshape(-1, self._dim(gallery))
        out = np.empty((len(probes), len(gallery)), dtype=np.float64)
        if not out.size:
            return out
        rows_per_chunk = max(1, chunk // max(len(gallery), 1))
        for start in range(0, len(probes), rows_per_chunk):
            block = probes[start:start + rows_per_chunk]
            a = np.repeat(block, len(gallery), axis=0)
            b = np.tile(gallery, (len(block), 1))
            out[start:start + len(block)] = self.score(a, b).reshape(len(block), len(gallery))
        return out

    def similarity(self, scores: np.ndarray) -> np.ndarray:
        """Scores turned so that higher always means 'more likely the same person' (for ranking)."""
        scores = np.asarray(scores, dtype=np.float64)
        return scores if self.higher_is_same else -scores

    def identity_similarity(self, probes: np.ndarray, gallery: np.ndarray, owners: np.ndarray, identities: int
                            ) -> np.ndarray:
        """Similarity [P, identities] (higher = closer) of each probe to each gallery identity (``owners`` names
        the identity of each ``gallery`` row): the identity's best single embedding (``gallery_scoring``
        "best") or the re-normalised mean of its embeddings ("template": one comparison per identity)."""
        owners = np.asarray(owners)
        if self.gallery_scoring == "template":
            sums = np.zeros((identities, self._dim(gallery)))
            np.add.at(sums, owners, np.asarray(gallery, dtype=np.float64))
            templates = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
            return self.similarity(self.score_matrix(probes, templates))
        ranked = self.similarity(self.score_matrix(probes, gallery))
        return np.stack([ranked[:, owners == k].max(axis=1) for k in range(identities)], axis=1)

    def set_far_curve(self, negative_scores: np.ndarray) -> None:
        """Record the false-accept curve from held-out scores of different-person pairs (the more, the
        further down in FAR it is measured rather than extrapolated)."""
        self.far_thresholds = far_curve(negative_scores, self.higher_is_same)

    def threshold_at_far(self, far: float) -> float:
        """Decision threshold for a per-comparison false-accept rate, interpolated on the validation curve
        (in log-FAR); never looser than the matcher's own threshold."""
        if not self.far_thresholds:
            return self.threshold
        fars = np.log10(np.asarray(self.far_thresholds["far"]))
        values = np.asarray(self.far_thresholds["threshold"])
        thr = float(np.interp(np.log10(min(max(far, 10 ** fars[0]), 1.0)), fars, values))
        return max(thr, self.threshold) if self.higher_is_same else min(thr, self.threshold)

    def far_at(self, threshold: float | None = None) -> float | None:
        """The false-accept rate the validation curve promises at ``threshold`` (default: the matcher's own),
        interpolated in log-FAR; None without a curve."""
        if not self.far_thresholds:
            return None
        thr = self.threshold if threshold is None else threshold
        log_fars = np.log10(np.asarray(self.far_thresholds["far"]))
        values = np.asarray(self.far_thresholds["threshold"], dtype=np.float64)
        if not self.higher_is_same:
            values, thr = -values, -thr
        order = np.argsort(values, kind="stable")  # ascending thresholds: descending FARs
        return float(10 ** np.interp(thr, values[order], log_fars[order]))

    def open_set_threshold(self, accept_rate: float, gallery_identities: int) -> float | None:
        """Identification threshold at which about ``accept_rate`` of probes of people not in a gallery of
        ``gallery_identities`` people pass, from the simulated galleries of :func:`simulate_open_set` (None
        when the matcher has none); never looser than the matcher's own threshold.

        The simulation measured the best gallery score of unknown probes against G_sim identities; for G
        identities the rate is taken as that of G / G_sim independent galleries of G_sim people."""
        if not self.open_set or gallery_identities < 1 or not 0.0 < accept_rate < 1.0:
            return None
        best = np.sort(np.asarray(self.open_set["best_impostor"], dtype=np.float64))  # similarity units
        per_simulated = 1.0 - (1.0 - accept_rate) ** (self.open_set["gallery_identities"] / gallery_identities)
        n = len(best)
        allowed = int(np.floor(per_simulated * n))  # this many simulated impostors may pass
        if allowed == 0:
            cut = np.nextafter(best[-1], np.inf)  # above every impostor
        elif allowed >= n:
            cut = best[0]
        else:  # between the allowed-th highest impostor score and the next one down
            cut = (best[n - allowed] + best[n - allowed - 1]) / 2.0
        thr = float(cut if self.higher_is_same else -cut)
        return max(thr, self.threshold) if self.higher_is_same else min(thr, self.threshold)

    def _dim(self, array: np.ndarray) -> int:
        dim = np.asarray(array).shape[-1]
        if self.embedding_size and dim != self.embedding_size:
            raise ValueError(f"{self.kind} matcher expects {self.embedding_size}-d embeddings, got {dim}-d")
        return dim

    @abstractmethod
    def _payload(self) -> dict[str, Any]:
        """The kind-specific part of :meth:`to_dict`."""

    def to_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild the matcher, as JSON-ready data."""
        return {
            "format": MATCHER_FORMAT, "version": MATCHER_VERSION, "kind": self.kind,
            "embedder_sha256": self.embedder_sha256, "embedding_size": int(self.embedding_size),
            "threshold": float(self.threshold), "higher_is_same": bool(self.higher_is_same),
            "gallery_scoring": self.gallery_scoring,
            "centre": None if self.centre is None else np.asarray(self.centre, dtype=np.float64).tolist(),
            "far_thresholds": self.far_thresholds, "open_set": self.open_set, "validation": self.validation,
            **self._payload(),
        }

    def save(self, path: str | Path, embedder_sha256: str | None = None) -> Path:
        """Write the matcher as JSON atomically, tagged with the embedder's SHA-256 (given here or already set)."""
        if embedder_sha256 is not None:
            self.embedder_sha256 = embedder_sha256
        if not self.embedder_sha256:
            raise ValueError("a matcher is saved with the SHA-256 of the embedder it was tuned for")
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")
        return path


@dataclass
class ThresholdMatcher(Matcher):
    """Cosine similarity (same when >= threshold) or L2 distance (same when <= threshold) of two embeddings."""

    metric: str = "cosine"
    kind = "threshold"

    def __post_init__(self) -> None:
        if self.metric not in THRESHOLD_METRICS:
            raise ValueError(f"unknown matcher metric {self.metric!r}; choose one of {', '.join(THRESHOLD_METRICS)}")
        self.higher_is_same = self.metric == "cosine"

    def _score(self, emb_a: np.ndarray, emb_b: np.ndarray) -> np.ndarray:
        """Cosine similarity or L2 distance of each row pair."""
        scores, _ = pair_scores(emb_a, emb_b, self.metric)
        return scores

    def _payload(self) -> dict[str, Any]:
        return {"metric": self.metric}


def _base_estimator(classifier: str, c: float, seed: int) -> Pipeline:
    """StandardScaler + a linear classifier (the only kinds whose parameters fit in a small JSON file)."""
    if classifier == "logistic":
        model = LogisticRegression(C=c, max_iter=2000, random_state=seed)
    elif classifier == "linear_svm":
        model = LinearSVC(C=c, max_iter=20000, random_state=seed)
    else:
        raise ValueError(f"unknown matcher classifier {classifier!r}; choose one of {', '.join(CLASSIFIERS)}")
    return Pipeline([("scale", StandardScaler()), ("classify", model)])


@dataclass
class ClassifierMatcher(Matcher):
    """Calibrated probability that two embeddings show the same person, from a linear model on pair features."""

    threshold: float = 0.5  # calibrated probability
    classifier: str = "logistic"
    calibration: str = "sigmoid"
    c: float = 1.0  # the regularisation strength used
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    scale: np.ndarray = field(default_factory=lambda: np.ones(0))
    coef: np.ndarray = field(default_factory=lambda: np.zeros(0))
    intercept: float = 0.0
    calibrator: dict[str, Any] = field(default_factory=dict)
    fitted_model: CalibratedClassifierCV | None = field(default=None, repr=False, compare=False)  # not saved
    kind = "classifier"

    def __post_init__(self) -> None:
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"unknown calibration {self.calibration!r}; choose one of {', '.join(CALIBRATIONS)}")
        if self.classifier not in CLASSIFIERS:
            raise ValueError(f"unknown matcher classifier {self.classifier!r}; choose one of {', '.join(CLASSIFIERS)}")
        self.higher_is_same = True

    @classmethod
    def fit(cls, features: np.ndarray, same: np.ndarray, groups: np.ndarray, *, classifier: str = "logistic",
            c: float | None = None, calibration: str = "sigmoid", folds: int = 5, seed: int = 0,
            embedding_size: int = 0) -> ClassifierMatcher:
        """Fit on pair features; probabilities calibrated on out-of-fold scores with identity-disjoint folds
        (``groups``: pairs of one group share no identity with pairs of another). ``c`` None: the
        regularisation strength with the best ROC AUC on those folds, from :data:`C_GRID`."""
        features = np.asarray(features, dtype=np.float64)
        same = np.asarray(same, dtype=bool)
        groups = np.asarray(groups)
        n_groups = len(np.unique(groups))
        if n_groups < 2:
            raise ValueError("the classifier needs pairs from at least 2 identity groups "
                             "to calibrate on held-out identities")
        if same.all() or not same.any():
            raise ValueError("the classifier needs both same-person and different-person pairs")
        splits = list(GroupKFold(n_splits=min(folds, n_groups)).split(features, same, groups))
        if c is None:
            search = GridSearchCV(_base_estimator(classifier, 1.0, seed), {"classify__C": list(C_GRID)},
                                  scoring="roc_auc", cv=splits, refit=False)
            c = float(search.fit(features, same.astype(int)).best_params_["classify__C"])
        model = CalibratedClassifierCV(_base_estimator(classifier, c, seed), method=calibration, cv=splits,
                                       ensemble=False)
        model.fit(features, same.astype(int))
        fitted = model.calibrated_classifiers_[0]
        pipeline, calibrator = fitted.estimator, fitted.calibrators[0]
        if calibration == "sigmoid":
            calibrator_state = {"a": float(calibrator.a_), "b": float(calibrator.b_)}
        else:
            calibrator_state = {"x": calibrator.X_thresholds_.tolist(), "y": calibrator.y_thresholds_.tolist()}
        linear = pipeline.named_steps["classify"]
        scaler = pipeline.named_steps["scale"]
        return cls(classifier=classifier, calibration=calibration, c=c, mean=scaler.mean_.copy(),
                   scale=scaler.scale_.copy(), coef=np.asarray(linear.coef_, dtype=np.float64).ravel().copy(),
                   intercept=float(np.ravel(linear.intercept_)[0]), calibrator=calibrator_state,
                   embedding_size=embedding_size or (features.shape[1] - 2) // 2, fitted_model=model)

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        """The linear model's raw score of pair features (before calibration)."""
        features = np.asarray(features, dtype=np.float64)
        if features.shape[-1] != self.coef.shape[0]:
            raise ValueError(f"classifier matcher expects {self.coef.shape[0]} pair features, got {features.shape[-1]}")
        return ((features - self.mean) / self.scale) @ self.coef + self.intercept

    def probability(self, features: np.ndarray) -> np.ndarray:
        """Calibrated probability of 'same person' for each row of pair features."""
        raw = self.decision_function(features)
        if self.calibration == "sigmoid":
            return expit(-(self.calibrator["a"] * raw + self.calibrator["b"]))
        x = np.asarray(self.calibrator["x"], dtype=np.float64)
        y = np.asarray(self.calibrator["y"], dtype=np.float64)
        return np.interp(raw, x, y)

    def _score(self, emb_a: np.ndarray, emb_b: np.ndarray) -> np.ndarray:
        """Calibrated same-person probability of each row pair."""
        return self.probability(pair_features(emb_a, emb_b))

    def _payload(self) -> dict[str, Any]:
        return {
            "classifier": self.classifier, "calibration": self.calibration, "c": self.c, "mean": self.mean.tolist(),
            "scale": self.scale.tolist(), "coef": self.coef.tolist(), "intercept": self.intercept,
            "calibrator": self.calibrator,
        }


def balanced_pairs(labels: np.ndarray, pairs_per_identity: int, rng: np.random.Generator,
                   groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Balanced same/different pairs of sample indices: up to ``pairs_per_identity`` same pairs per identity,
    then as many different pairs, drawn between identities of one group (``groups``: group id per label value;
    a group with fewer than 2 identities gives no pairs).

    Returns ``(index_a, index_b, same)``.
    """
    labels = np.asarray(labels)
    members = {int(k): np.flatnonzero(labels == k) for k in np.unique(labels)}
    group_of = {k: 0 if groups is None else int(groups[k]) for k in members}
    index_a: list[np.ndarray] = []
    index_b: list[np.ndarray] = []
    same: list[np.ndarray] = []
    for group in sorted(set(group_of.values())):
        ids = [k for k in members if group_of[k] == group]
        if len(ids) < 2:
            continue
        count = 0
        for k in ids:
            rows, cols = np.triu_indices(len(members[k]), 1)
            if len(rows) > pairs_per_identity:
                pick = rng.choice(len(rows), size=pairs_per_identity, replace=False)
                rows, cols = rows[pick], cols[pick]
            index_a.append(members[k][rows])
            index_b.append(members[k][cols])
            same.append(np.ones(len(rows), dtype=bool))
            count += len(rows)
        first = rng.integers(0, len(ids), size=count)
        second = (first + rng.integers(1, len(ids), size=count)) % len(ids)
        index_a.append(np.array([rng.choice(members[ids[i]]) for i in first], dtype=np.int64))
        index_b.append(np.array([rng.choice(members[ids[j]]) for j in second], dtype=np.int64))
        same.append(np.zeros(count, dtype=bool))
    if not index_a:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool)
    return np.concatenate(index_a).astype(np.int64), np.concatenate(index_b).astype(np.int64), np.concatenate(same)


def different_identity_pairs(labels: np.ndarray, max_pairs: int, rng: np.random.Generator
                             ) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) of samples of different identities: all of them when there are at most
    ``max_pairs``, else that many drawn at random (for false-accept curves measured far down in FAR)."""
    labels = np.asarray(labels)
    n = len(labels)
    if n * (n - 1) // 2 <= max_pairs:
        first, second = np.triu_indices(n, 1)
    else:
        first = rng.integers(0, n, size=2 * max_pairs)
        second = rng.integers(0, n, size=2 * max_pairs)
    keep = labels[first] != labels[second]
    return first[keep][:max_pairs], second[keep][:max_pairs]


def identity_groups(labels: np.ndarray, folds: int, rng: np.random.Generator) -> np.ndarray:
    """Assign each identity (label value) with >= 2 samples to one of ``folds`` groups, at random but evenly.

    Returns an array indexed by label: the group id, or -1 for identities left out (a single sample).
    """
    labels = np.asarray(labels)
    values, counts = np.unique(labels, return_counts=True)
    usable = values[counts >= 2]
    groups = np.full(int(labels.max()) + 1 if labels.size else 0, -1, dtype=np.int64)
    groups[usable] = deal_folds(len(usable), folds, rng)
    return groups


def fit_classifier_on_identities(embeddings: np.ndarray, labels: np.ndarray, *, pairs_per_identity: int = 20,
                                 classifier: str = "logistic", c: float | None = None, calibration: str = "sigmoid",
                                 folds: int = 5, seed: int = 0) -> ClassifierMatcher:
    """Build balanced pairs within identity groups from labelled embeddings and fit a calibrated classifier.

    Needs at least 4 identities with 2+ images (2 groups of 2, so each group has different-person pairs).
    """
    embeddings = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    values, counts = np.unique(labels, return_counts=True)
    usable = int((counts >= 2).sum())
    if usable < 4:
        raise ValueError(f"the classifier needs at least 4 identities with 2+ images, found {usable}")
    rng = np.random.default_rng(seed)
    groups = identity_groups(labels, min(folds, usable // 2), rng)
    keep = groups[labels] >= 0
    index = np.flatnonzero(keep)
    a, b, same = balanced_pairs(labels[keep], pairs_per_identity, rng, groups)
    features = pair_features(embeddings[index[a]], embeddings[index[b]])
    pair_groups = groups[labels[index[a]]]
    return ClassifierMatcher.fit(features, same, pair_groups, classifier=classifier, c=c, calibration=calibration,
                                 folds=folds, seed=seed, embedding_size=embeddings.shape[1])


def simulate_open_set(matcher: Matcher, embeddings: np.ndarray, labels: np.ndarray, images_per_identity: int,
                      rounds: int, rng: np.random.Generator) -> dict[str, Any]:
    """Open-set identification on held-out identities, simulated: each round enrols half of the identities
    (``images_per_identity`` random images each) and probes with every image of the other half; the best
    identity score of each such probe (an identity scores its best embedding) is what an impostor would need
    to beat. Returns the ``open_set`` entry :meth:`Matcher.open_set_threshold` reads (scores in similarity
    units, i.e. higher = more alike)."""
    labels = np.asarray(labels)
    values, counts = np.unique(labels, return_counts=True)
    usable = values[counts >= images_per_identity]
    if len(usable) < 4:
        return {}
    best: list[np.ndarray] = []
    enrolled_count = len(usable) // 2
    for _ in range(rounds):
        order = rng.permutation(usable)
        enrolled, unknown = order[:enrolled_count], order[enrolled_count:]
        rows = [rng.choice(np.flatnonzero(labels == k), size=images_per_identity, replace=False) for k in enrolled]
        gallery = embeddings[np.concatenate(rows)]
        owners = np.repeat(np.arange(len(enrolled)), images_per_identity)
        probes = embeddings[np.isin(labels, unknown)]
        best.append(matcher.identity_similarity(probes, gallery, owners, len(enrolled)).max(axis=1))
    return {"gallery_identities": int(enrolled_count), "images_per_identity": int(images_per_identity),
            "rounds": int(rounds), "best_impostor": np.sort(np.concatenate(best)).tolist()}


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(path, "matcher file not found (run train_matching.py)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(path, f"not a matcher file (invalid JSON: {exc})") from None
    return check_header(data, path, MATCHER_FORMAT, READABLE_VERSIONS, "matcher")


def load_matcher(path: str | Path, embedder_sha256: str | None = None, embedding_size: int | None = None) -> Matcher:
    """Read a matcher file; with ``embedder_sha256`` given, refuse one tuned for a different embedder."""
    path = Path(path)
    data = _read_json(path)
    stored = str(data.get("embedder_sha256", ""))
    if embedder_sha256 is not None and stored != embedder_sha256:
        raise MatcherMismatchError(path, f"matcher was tuned for embedder {stored[:12] or '(unknown)'}, "
                                         f"but the embedder in use is {embedder_sha256[:12]}; "
                                         "rerun train_matching.py with this embedder")
    size = int(data.get("embedding_size", 0))
    if embedding_size is not None and size and size != embedding_size:
        raise MatcherMismatchError(path, f"matcher expects {size}-d embeddings, the embedder gives {embedding_size}-d")
    scoring = data.get("gallery_scoring", "best")
    if scoring not in GALLERY_SCORINGS:
        raise DataError(path, f"unknown gallery_scoring {scoring!r} (one of {', '.join(GALLERY_SCORINGS)})")
    centre = data.get("centre")
    if centre is not None and (not isinstance(centre, list) or (size and len(centre) != size)):
        raise DataError(path, f"its centre is not a list of {size} numbers")
    common = {"threshold": float(data["threshold"]), "far_thresholds": data.get("far_thresholds") or {},
              "gallery_scoring": scoring, "centre": None if centre is None else np.asarray(centre, dtype=np.float64),
              "open_set": data.get("open_set") or {},
              "embedding_size": size, "validation": data.get("validation") or {}, "embedder_sha256": stored}
    try:
        if data.get("kind") == ThresholdMatcher.kind:
            return ThresholdMatcher(metric=data["metric"], **common)
        if data.get("kind") == ClassifierMatcher.kind:
            return ClassifierMatcher(
                classifier=data["classifier"], calibration=data["calibration"], c=float(data["c"]),
                mean=np.asarray(data["mean"], dtype=np.float64), scale=np.asarray(data["scale"], dtype=np.float64),
                coef=np.asarray(data["coef"], dtype=np.float64), intercept=float(data["intercept"]),
                calibrator=dict(data["calibrator"]), **common)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(path, f"matcher file is incomplete or malformed ({type(exc).__name__}: {exc})") from None
    raise DataError(path, f"unknown matcher kind {data.get('kind')!r}")


def matcher_summary(matcher: Matcher) -> str:
    """One line naming the matcher and its operating point."""
    centred = "" if matcher.centre is None else ", on centred embeddings"
    if isinstance(matcher, ThresholdMatcher):
        op = ">=" if matcher.higher_is_same else "<="
        return f"threshold matcher: {matcher.metric} {op} {matcher.threshold:.4f}{centred}"
    if isinstance(matcher, ClassifierMatcher):
        return (f"classifier matcher: {matcher.classifier} (C={matcher.c:g}) on {matcher.coef.shape[0]} pair features, "
                f"{matcher.calibration}-calibrated, same when p >= {matcher.threshold:.2f}{centred}")
    return type(matcher).__name__


__all__ = (
    "ClassifierMatcher", "Matcher", "MatcherMismatchError", "ThresholdMatcher", "balanced_pairs", "centre_embeddings",
    "different_identity_pairs", "fit_classifier_on_identities", "identity_groups", "load_matcher", "matcher_summary",
    "pair_features", "simulate_open_set",
)

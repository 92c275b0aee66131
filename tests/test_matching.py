"""Matchers: threshold and calibrated-classifier verification, pair building, save/load, wrong-embedder refusal."""
from __future__ import annotations

import json

import numpy as np
import pytest

from models.matcher import (
    ClassifierMatcher,
    MatcherMismatchError,
    ThresholdMatcher,
    balanced_pairs,
    different_identity_pairs,
    fit_classifier_on_identities,
    identity_groups,
    load_matcher,
    pair_features,
    simulate_open_set,
)
from utils.errors import DataError
from utils.metrics import fine_tune_threshold, pair_scores, threshold_at_far

HASH_A = "a" * 64
HASH_B = "b" * 64


def clustered_embeddings(identities: int, per_identity: int, spread: float, dim: int = 16,
                         seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit embeddings scattered around one random centre per identity: a stand-in for a trained embedder."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(identities, dim))
    labels = np.repeat(np.arange(identities), per_identity)
    emb = centres[labels] / np.sqrt(dim) + spread * rng.normal(size=(len(labels), dim)) / np.sqrt(dim)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True), labels


def test_pair_features_are_symmetric_and_hold_cosine_and_distance() -> None:
    emb, _ = clustered_embeddings(3, 2, 0.5)
    f_ab = pair_features(emb[:3], emb[3:])
    f_ba = pair_features(emb[3:], emb[:3])
    assert f_ab.shape == (3, 2 * 16 + 2)
    np.testing.assert_allclose(f_ab, f_ba)
    np.testing.assert_allclose(f_ab[:, -2], np.sum(emb[:3] * emb[3:], axis=1))
    np.testing.assert_allclose(f_ab[:, -1], np.linalg.norm(emb[:3] - emb[3:], axis=1))


def test_balanced_pairs_are_balanced_labelled_right_and_stay_inside_groups() -> None:
    labels = np.repeat(np.arange(8), 5)
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    a, b, same = balanced_pairs(labels, 6, np.random.default_rng(0), groups)
    assert same.sum() == (~same).sum() == 8 * 6
    np.testing.assert_array_equal(labels[a] == labels[b], same)
    np.testing.assert_array_equal(groups[labels[a]], groups[labels[b]])
    assert np.all(a != b)
    # an identity with only 3 images has 3 distinct same pairs, no more
    a, b, same = balanced_pairs(np.repeat(np.arange(2), 3), 10, np.random.default_rng(0))
    assert same.sum() == 6 and len({(int(x), int(y)) for x, y in zip(a[same], b[same])}) == 6


def test_different_identity_pairs_enumerate_or_sample() -> None:
    labels = np.repeat(np.arange(4), 3)
    first, second = different_identity_pairs(labels, 1000, np.random.default_rng(0))
    assert len(first) == (12 * 11 - 4 * 3 * 2) // 2 and np.all(labels[first] != labels[second])
    assert len({(int(a), int(b)) for a, b in zip(first, second)}) == len(first)
    first, second = different_identity_pairs(labels, 20, np.random.default_rng(0))
    assert len(first) == 20 and np.all(labels[first] != labels[second])


def test_identity_groups_leave_out_single_image_identities_and_spread_evenly() -> None:
    labels = np.array([0, 0, 1, 1, 2, 3, 3, 4, 4, 5, 5])
    groups = identity_groups(labels, 2, np.random.default_rng(0))
    assert groups[2] == -1
    assert sorted(np.bincount(groups[groups >= 0])) == [2, 3]


def test_threshold_matcher_cosine_and_euclidean_decide_in_the_right_direction(tmp_path) -> None:
    emb, labels = clustered_embeddings(10, 4, 0.6)
    a, b, same = balanced_pairs(labels, 6, np.random.default_rng(1))
    for metric in ("cosine", "euclidean"):
        scores, higher = pair_scores(emb[a], emb[b], metric)
        threshold, accuracy = fine_tune_threshold(scores, same, higher_is_same=higher)
        matcher = ThresholdMatcher(threshold=threshold, metric=metric, embedding_size=16)
        first, second = different_identity_pairs(labels, 10_000, np.random.default_rng(0))
        matcher.set_far_curve(matcher.score(emb[first], emb[second]))
        assert matcher.far_thresholds["negatives"] == len(first) == (40 * 39 - 10 * 4 * 3) // 2
        decided = matcher.decide(matcher.score(emb[a], emb[b]))
        assert np.mean(decided == same) == pytest.approx(accuracy)
        assert accuracy > 0.85
        path = matcher.save(tmp_path / f"{metric}.json", HASH_A)
        loaded = load_matcher(path, HASH_A, embedding_size=16)
        assert isinstance(loaded, ThresholdMatcher) and loaded.metric == metric
        np.testing.assert_array_equal(loaded.decide(loaded.score(emb[a], emb[b])), decided)
        # a stricter operating point accepts no more different-person pairs than the accuracy threshold
        strict = loaded.threshold_at_far(1e-3)
        assert loaded.decide(scores, strict)[~same].sum() <= decided[~same].sum()


def test_classifier_learns_on_held_out_identities_and_is_calibrated() -> None:
    emb, labels = clustered_embeddings(40, 6, 0.9, seed=2)
    train = labels < 24  # identities 24..39 are never seen in fitting
    matcher = fit_classifier_on_identities(emb[train], labels[train], pairs_per_identity=15, folds=4, seed=0)
    test_emb, test_labels = emb[~train], labels[~train] - 24
    a, b, same = balanced_pairs(test_labels, 15, np.random.default_rng(5))
    probability = matcher.score(test_emb[a], test_emb[b])
    accuracy = np.mean(matcher.decide(probability) == same)
    chance_free_cosine, _ = pair_scores(test_emb[a], test_emb[b])
    cosine_accuracy = fine_tune_threshold(chance_free_cosine, same)[1]  # best threshold chosen on the test pairs
    assert accuracy > 0.85
    assert accuracy > cosine_accuracy - 0.06  # close to an oracle threshold it never saw
    # calibration: in each probability band, the share of same-person pairs is near the mean probability
    for low, high in ((0.0, 0.3), (0.3, 0.7), (0.7, 1.0)):
        band = (probability >= low) & (probability < high)
        if band.sum() >= 30:
            assert abs(same[band].mean() - probability[band].mean()) < 0.15
    # the numpy re-implementation gives scikit-learn's own calibrated probabilities
    features = pair_features(test_emb[a], test_emb[b])
    np.testing.assert_allclose(probability, matcher.fitted_model.predict_proba(features)[:, 1], atol=1e-9)


@pytest.mark.parametrize(("classifier", "calibration"), [("logistic", "isotonic"), ("linear_svm", "sigmoid")])
def test_classifier_variants_save_and_load_to_the_same_probabilities(tmp_path, classifier: str,
                                                                     calibration: str) -> None:
    emb, labels = clustered_embeddings(12, 5, 0.8, seed=3)
    matcher = fit_classifier_on_identities(emb, labels, pairs_per_identity=8, classifier=classifier,
                                           calibration=calibration, folds=3, seed=1)
    a, b, same = balanced_pairs(labels, 8, np.random.default_rng(2))
    features = pair_features(emb[a], emb[b])
    expected = matcher.fitted_model.predict_proba(features)[:, 1]
    matcher.set_far_curve(expected[~same])
    path = matcher.save(tmp_path / "matcher.json", HASH_A)
    assert path.stat().st_size < 20_000  # a small file
    loaded = load_matcher(path, HASH_A)
    assert isinstance(loaded, ClassifierMatcher)
    assert (loaded.classifier, loaded.calibration) == (classifier, calibration)
    np.testing.assert_allclose(loaded.score(emb[a], emb[b]), expected, atol=1e-9)
    negatives = expected[~same]
    at_far = loaded.threshold_at_far(0.01)  # from the stored curve: the 1% point of these negatives, or stricter
    assert at_far == pytest.approx(max(threshold_at_far(negatives, np.zeros(negatives.size, bool), 0.01),
                                       loaded.threshold))
    assert np.mean(negatives >= at_far) <= 0.01 + 1 / negatives.size


def open_set_acceptance(matcher: ThresholdMatcher, emb: np.ndarray, labels: np.ndarray, enrolled: int,
                        threshold: float, rng: np.random.Generator) -> float:
    """Share of probes of people not in a gallery of ``enrolled`` people (2 images each) accepted at ``threshold``."""
    rates = []
    for _ in range(20):
        order = rng.permutation(np.unique(labels))
        rows = np.concatenate([rng.choice(np.flatnonzero(labels == k), 2, replace=False) for k in order[:enrolled]])
        probes = emb[np.isin(labels, order[enrolled:])]
        rates.append(np.mean(matcher.score_matrix(probes, emb[rows]).max(axis=1) >= threshold))
    return float(np.mean(rates))


def test_open_set_threshold_from_simulated_galleries_holds_on_new_identities() -> None:
    emb, labels = clustered_embeddings(60, 5, 1.0, seed=4)
    matcher = ThresholdMatcher(threshold=0.3, metric="cosine", embedding_size=16)
    matcher.open_set = simulate_open_set(matcher, emb, labels, 2, 20, np.random.default_rng(0))
    assert matcher.open_set["gallery_identities"] == 30 and len(matcher.open_set["best_impostor"]) == 20 * 30 * 5
    new_emb, new_labels = clustered_embeddings(80, 5, 1.0, seed=5)  # people never seen in calibration
    rng = np.random.default_rng(1)
    for target, gallery in ((0.05, 30), (0.05, 60), (0.2, 30)):
        threshold = matcher.open_set_threshold(target, gallery)
        realised = open_set_acceptance(matcher, new_emb, new_labels, gallery, threshold, rng)
        assert target / 2.5 <= realised <= target * 2.0, (target, gallery, realised)
    # a larger gallery gives impostors more chances: the threshold rises
    assert matcher.open_set_threshold(0.05, 60) > matcher.open_set_threshold(0.05, 30)
    # never looser than the matcher's own decision threshold; no calibration -> None
    assert matcher.open_set_threshold(0.99, 1) == matcher.threshold
    assert ThresholdMatcher(threshold=0.3).open_set_threshold(0.05, 30) is None


def test_gallery_scoring_best_or_template_and_it_survives_save_and_load(tmp_path) -> None:
    emb, labels = clustered_embeddings(5, 4, 0.8, seed=2)
    probes, gallery, owners = emb[labels == 0][:1], emb[labels != 0], labels[labels != 0] - 1
    best = ThresholdMatcher(threshold=0.5, metric="cosine")
    scores = best.identity_similarity(probes, gallery, owners, 4)
    expected = [max(float(probes[0] @ g) for g in gallery[owners == k]) for k in range(4)]
    np.testing.assert_allclose(scores[0], expected)
    template = ThresholdMatcher(threshold=0.5, metric="cosine", gallery_scoring="template")
    means = np.stack([gallery[owners == k].mean(axis=0) for k in range(4)])
    np.testing.assert_allclose(template.identity_similarity(probes, gallery, owners, 4)[0],
                               means @ probes[0] / np.linalg.norm(means, axis=1))
    euclidean = ThresholdMatcher(threshold=1.0, metric="euclidean", gallery_scoring="template")
    assert euclidean.identity_similarity(probes, gallery, owners, 4).argmax() == template.identity_similarity(
        probes, gallery, owners, 4).argmax()  # same ranking: distances of unit vectors
    loaded = load_matcher(template.save(tmp_path / "m.json", HASH_A))
    assert loaded.gallery_scoring == "template"
    path = tmp_path / "old.json"
    old = {k: v for k, v in best.to_dict().items() if k != "gallery_scoring"}
    path.write_text(json.dumps(old | {"embedder_sha256": HASH_A}))
    assert load_matcher(path).gallery_scoring == "best"  # files written before the key existed
    path.write_text(json.dumps(best.to_dict() | {"embedder_sha256": HASH_A, "gallery_scoring": "median"}))
    with pytest.raises(DataError, match="gallery_scoring"):
        load_matcher(path)


def test_score_matrix_equals_row_wise_scores() -> None:
    emb, labels = clustered_embeddings(6, 3, 0.7)
    matcher = fit_classifier_on_identities(emb, labels, pairs_per_identity=3, folds=2)
    matrix = matcher.score_matrix(emb[:4], emb, chunk=7)
    for i in range(4):
        np.testing.assert_allclose(matrix[i], matcher.score(np.repeat(emb[i:i + 1], len(emb), 0), emb))


def test_loading_with_another_embedder_is_a_one_line_error(tmp_path) -> None:
    matcher = ThresholdMatcher(threshold=0.5, metric="cosine", embedding_size=16)
    path = matcher.save(tmp_path / "matcher.json", HASH_A)
    with pytest.raises(MatcherMismatchError) as info:
        load_matcher(path, HASH_B)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert HASH_A[:12] in message and HASH_B[:12] in message and "train_matching.py" in message
    with pytest.raises(MatcherMismatchError, match="16-d"):
        load_matcher(path, HASH_A, embedding_size=128)
    assert load_matcher(path).threshold == 0.5  # no embedder given: no check


def test_saving_needs_the_embedder_hash(tmp_path) -> None:
    with pytest.raises(ValueError, match="SHA-256"):
        ThresholdMatcher(threshold=0.5).save(tmp_path / "m.json")


@pytest.mark.parametrize(("content", "expected"), [
    ("not json {", "invalid JSON"),
    (json.dumps({"kind": "threshold"}), "not a matcher file"),
    (json.dumps({"format": "face-matcher", "version": 99}), "version 99"),
    (json.dumps({"format": "face-matcher", "version": 1, "kind": "threshold", "threshold": 0.5}), "malformed"),
])
def test_bad_matcher_files_name_the_file_and_the_problem(tmp_path, content: str, expected: str) -> None:
    path = tmp_path / "matcher.json"
    path.write_text(content)
    with pytest.raises(DataError, match=expected) as info:
        load_matcher(path)
    assert str(path) in str(info.value)
    with pytest.raises(DataError, match="not found"):
        load_matcher(tmp_path / "absent.json")


def test_classifier_refuses_too_few_identities() -> None:
    emb, labels = clustered_embeddings(3, 4, 0.5)
    with pytest.raises(ValueError, match="at least 4 identities"):
        fit_classifier_on_identities(emb, labels)


def test_operating_far_keeps_the_threshold_that_accepts_that_share_of_strangers() -> None:
    from training.matching.methods import evaluate_threshold
    from training.matching.pairs import IdentitySet, PairSet
    emb, labels = clustered_embeddings(40, 6, 1.2, seed=7)
    first, second, same = balanced_pairs(labels, 10, np.random.default_rng(0))
    pairs = PairSet(emb[first], emb[second], same, np.arange(len(same)) % 10, [], [])
    identities = IdentitySet(emb, labels, [str(i) for i in range(40)], [])
    best = evaluate_threshold(pairs, identities, "cosine", (0.01,), seed=0)
    strict = evaluate_threshold(pairs, identities, "cosine", (0.01,), seed=0, operating_far=0.01)
    scores = (pairs.emb_a * pairs.emb_b).sum(axis=1)
    accepted_strangers = float(np.mean(scores[~same] >= strict.matcher.threshold))
    assert accepted_strangers <= 0.01 and strict.matcher.threshold > best.matcher.threshold
    assert strict.metrics["operating_accuracy"] < best.accuracy, "strictness costs accuracy here"
    assert strict.accuracy == best.accuracy, "the cross-validated accuracy is the method's, whatever point is kept"


def test_the_classifier_is_kept_only_when_better_by_more_than_one_standard_error() -> None:
    from training.matching.methods import MethodResult, choose

    def result(name: str, folds: list[float]) -> MethodResult:
        return MethodResult(name, ThresholdMatcher(threshold=0.5), float(np.mean(folds)), float(np.std(folds)),
                            tuple(folds), {}, np.zeros(0), (np.zeros(0), np.zeros(0)))

    threshold = result("threshold", [0.90, 0.80, 0.85, 0.95, 0.88])
    tied = result("classifier", [0.92, 0.78, 0.86, 0.94, 0.90])  # +0.004 on average, folds disagree
    better = result("classifier", [0.93, 0.83, 0.88, 0.97, 0.91])  # +0.028, every fold better
    worse = result("classifier", [0.80, 0.70, 0.75, 0.85, 0.78])
    kept, why = choose([threshold, tied])
    assert kept is threshold and "within one standard error" in why and "+0.0040" in why
    assert choose([threshold, better])[0] is better
    assert choose([threshold, worse])[0] is threshold
    assert choose([threshold]) == (threshold, "the only method fitted")


def _shifted(emb: np.ndarray, direction: np.ndarray, amount: float) -> np.ndarray:
    """Embeddings of another photo source: each moved along one shared direction, re-normalised."""
    moved = emb + amount * direction
    return moved / np.linalg.norm(moved, axis=1, keepdims=True)


@pytest.mark.parametrize("centring", [False, True])
def test_centring_lets_a_threshold_tuned_on_one_source_hold_on_another(centring: bool) -> None:
    """As CelebA-tuned thresholds on LFW photos: the new source's shared direction lifts every stranger's
    similarity; centred on the new gallery's mean, the false-accept rate is about the promised one again."""
    from config import load_config
    from training.matching.methods import fit_methods
    from training.matching.pairs import IdentitySet, PairSet
    emb, labels = clustered_embeddings(40, 6, 1.0, seed=7)
    first, second, same = balanced_pairs(labels, 10, np.random.default_rng(0))
    pairs = PairSet(emb[first], emb[second], same, np.arange(len(same)) % 10, [], [])
    identities = IdentitySet(emb, labels, [str(i) for i in range(40)], [])
    config = load_config(None, [f"matching.centring={str(centring).lower()}", "matching.open_set_rounds=0"])
    matcher = fit_methods("threshold", pairs, identities, config, identities_root=None)[0].matcher
    assert (matcher.centre is not None) == centring

    direction = np.random.default_rng(3).normal(size=16)
    other, other_labels = clustered_embeddings(30, 6, 1.0, seed=9)
    other = _shifted(other, direction / np.linalg.norm(direction), 1.5)
    gallery = other[np.isin(np.arange(len(other)) % 6, (0, 1))]  # 2 photos of each of 30 people: 60 faces
    deployed = matcher.adapted_to(gallery)
    a, b, other_same = balanced_pairs(other_labels, 10, np.random.default_rng(1))
    _, decided = deployed.verify(other[a], other[b])
    far, promised = float(decided[~other_same].mean()), matcher.far_at()
    if centring:
        assert deployed.centre is not None and np.allclose(deployed.centre, gallery.mean(axis=0))
        assert far <= 2 * promised, (far, promised)
        assert np.mean(decided == other_same) > 0.8
    else:
        assert deployed is matcher
        assert far > 4 * promised, (far, promised)


def test_centre_is_saved_and_version_1_files_still_load(tmp_path) -> None:
    centre = np.linspace(-0.2, 0.2, 16)
    matcher = ThresholdMatcher(threshold=0.3, metric="cosine", embedding_size=16, centre=centre)
    loaded = load_matcher(matcher.save(tmp_path / "m.json", HASH_A), HASH_A)
    assert np.allclose(loaded.centre, centre)
    emb, _ = clustered_embeddings(5, 4, 0.5)
    assert np.allclose(loaded.score(emb[:10], emb[10:]), matcher.score(emb[:10], emb[10:]))
    shifted = (emb - centre) / np.linalg.norm(emb - centre, axis=1, keepdims=True)
    assert np.allclose(matcher.score(emb[:10], emb[10:]), (shifted[:10] * shifted[10:]).sum(axis=1))

    data = json.loads((tmp_path / "m.json").read_text())
    del data["centre"]
    data["version"] = 1
    (tmp_path / "v1.json").write_text(json.dumps(data))
    old = load_matcher(tmp_path / "v1.json", HASH_A)
    assert old.centre is None and old.adapted_to(emb) is old, "a version-1 matcher scores as it always did"
    data.update(version=2, centre=[0.1, 0.2])
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="centre is not a list of 16 numbers"):
        load_matcher(tmp_path / "bad.json")


def test_a_centring_matcher_adapts_only_to_enough_faces() -> None:
    from models.matcher import MIN_ADAPT_FACES
    matcher = ThresholdMatcher(threshold=0.3, metric="cosine", embedding_size=16, centre=np.zeros(16))
    emb, _ = clustered_embeddings(10, 4, 0.5)
    assert matcher.adapted_to(emb[:MIN_ADAPT_FACES - 1]) is matcher, "too few faces for a steady mean"
    adapted = matcher.adapted_to(emb[:MIN_ADAPT_FACES])
    assert np.allclose(adapted.centre, emb[:MIN_ADAPT_FACES].mean(axis=0)) and adapted.threshold == matcher.threshold
    assert matcher.centre is not None and not matcher.centre.any(), "the tuned matcher itself is left as it was"

"""LFW-protocol verification metrics with hand-computed answers, and the PNG plots."""
from __future__ import annotations

import math

import numpy as np
import pytest

from utils.images import read_image
from utils.metrics import (
    deal_folds,
    fine_tune_threshold,
    fold_ids,
    pair_scores,
    threshold_at_far,
    verification_metrics,
)
from utils.plots import plot_loss_curves, plot_pr_curve, plot_roc, plot_score_histograms

# Two folds in file order. Fold 0: same 0.9, 0.6; different 0.5, 0.1 (its own best threshold: 0.55).
# Fold 1: same 0.8, 0.7; different 0.3, 0.2 (its own best threshold: midway 0.7/0.3 = 0.5).
# Fold 0 is judged at 0.5 (from fold 1): the 0.5 different pair is accepted -> 3/4. Fold 1 at 0.55: 4/4.
FOLD_SCORES = np.array([0.9, 0.6, 0.5, 0.1, 0.8, 0.7, 0.3, 0.2])
FOLD_SAME = np.array([1, 1, 0, 0, 1, 1, 0, 0], dtype=bool)


def test_fine_tune_threshold_separable_similarity_and_distance() -> None:
    scores = [0.9, 0.8, 0.7, 0.5, 0.2, 0.1]
    same = [True, True, True, False, False, False]
    assert fine_tune_threshold(scores, same) == pytest.approx((0.6, 1.0))
    distances = [0.1, 0.2, 0.3, 0.5, 0.8, 0.9]
    assert fine_tune_threshold(distances, same, higher_is_same=False) == pytest.approx((0.4, 1.0))


def test_fine_tune_threshold_takes_the_middle_of_equally_good_thresholds() -> None:
    # accepting the top 2 or the top 4 both get 5/6 right; the middle of the tied candidates is the top 4
    threshold, accuracy = fine_tune_threshold([0.9, 0.8, 0.7, 0.4, 0.3, 0.1], [1, 1, 0, 1, 0, 0])
    assert accuracy == pytest.approx(5 / 6)
    assert threshold == pytest.approx(0.35)


def test_fine_tune_threshold_can_reject_everything() -> None:
    threshold, accuracy = fine_tune_threshold([0.9, 0.8, 0.1], [False, False, True])
    assert accuracy == pytest.approx(2 / 3)
    assert threshold > 0.9  # nothing is accepted


def test_fold_ids_follow_file_order() -> None:
    ids = fold_ids(600, 10)
    assert np.array_equal(ids, np.repeat(np.arange(10), 60))
    assert np.array_equal(fold_ids(5, 2), [0, 0, 0, 1, 1])
    with pytest.raises(ValueError, match="need 2..5 folds"):
        fold_ids(5, 1)


def test_identities_are_dealt_to_folds_at_random_but_evenly() -> None:
    dealt = deal_folds(23, 5, np.random.default_rng(3))
    assert sorted(np.bincount(dealt).tolist()) == [4, 4, 5, 5, 5], "sizes differ by one at most"
    assert np.array_equal(dealt, deal_folds(23, 5, np.random.default_rng(3))), "the seed decides"
    assert not np.array_equal(dealt, np.arange(23) % 5), "not in input order"


def test_lfw_protocol_known_answer() -> None:
    result = verification_metrics(FOLD_SCORES, FOLD_SAME, folds=2, far_target=0.0)
    assert result.fold_accuracies == pytest.approx([0.75, 1.0])
    assert result.accuracy == pytest.approx(0.875)
    assert result.accuracy_std == pytest.approx(0.125)
    assert result.fold_thresholds == pytest.approx([0.5, 0.55])
    # cross-validated decisions: 4 true accepts, 1 false accept, no false reject
    assert result.precision == pytest.approx(0.8)
    assert result.recall == pytest.approx(1.0)
    assert result.f1 == pytest.approx(2 * 0.8 / 1.8)
    # FAR 0: threshold just above the other fold's highest different pair (0.3, resp. 0.5)
    assert result.val == pytest.approx(1.0)
    assert result.far == pytest.approx((0.5 + 0.0) / 2)
    assert result.num_folds == 2 and result.num_pairs == 8 and result.num_same == 4


def test_lfw_protocol_uses_file_order_not_interleaving() -> None:
    interleaved = verification_metrics(FOLD_SCORES, FOLD_SAME, folds=[0, 1, 0, 1, 0, 1, 0, 1])
    assert interleaved.fold_accuracies != pytest.approx([0.75, 1.0])


def test_distances_give_the_same_protocol_in_their_own_units() -> None:
    similarity = verification_metrics(FOLD_SCORES, FOLD_SAME, folds=2)
    distance = verification_metrics(1.0 - FOLD_SCORES, FOLD_SAME, folds=2, higher_is_same=False)
    assert distance.fold_accuracies == pytest.approx(similarity.fold_accuracies)
    assert distance.fold_thresholds == pytest.approx([0.5, 0.45])
    assert distance.auc == pytest.approx(similarity.auc)
    assert distance.eer == pytest.approx(similarity.eer)


def test_auc_and_eer_known_answer() -> None:
    # same 0.8 0.6 0.4 0.2 vs different 0.7 0.5 0.3 0.1: 10 of 16 orderings right; FAR = FRR = 0.5 at 0.5
    scores = np.array([0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    same = np.array([1, 0, 1, 0, 1, 0, 1, 0], dtype=bool)
    result = verification_metrics(scores, same, folds=2)
    assert result.auc == pytest.approx(10 / 16)
    assert result.eer == pytest.approx(0.5)
    assert result.eer_threshold == pytest.approx(0.5)


def test_eer_is_interpolated_between_roc_points() -> None:
    # same 0.9 0.8 0.3, different 0.7 0.2. ROC (FAR, FRR): t=0.8 -> (0, 1/3), t=0.7 -> (1/2, 1/3).
    # FAR - FRR goes -1/3 -> +1/6, crossing 2/3 of the way: EER = 1/3 at threshold 0.8 - 2/3 * 0.1.
    scores = np.array([0.9, 0.7, 0.3, 0.8, 0.2])
    same = np.array([True, False, True, True, False])
    result = verification_metrics(scores, same, folds=2)
    assert result.eer == pytest.approx(1 / 3)
    assert result.eer_threshold == pytest.approx(0.8 - 0.2 / 3)


def test_threshold_at_far_interpolates_between_negative_scores() -> None:
    negatives = [0.9, 0.5, 0.4, 0.3, 0.2]
    scores = negatives + [0.95, 0.6]
    same = [False] * 5 + [True, True]
    assert threshold_at_far(scores, same, 0.2) == pytest.approx(0.9)  # accept exactly one of five
    assert threshold_at_far(scores, same, 0.3) == pytest.approx(0.7)  # halfway between 1/5 and 2/5
    assert threshold_at_far(scores, same, 0.0) == np.nextafter(0.9, np.inf)  # just above every negative
    assert threshold_at_far([1 - s for s in scores], same, 0.3, higher_is_same=False) == pytest.approx(0.3)


def test_gaussian_scores_match_theory() -> None:
    # same ~ N(1, 1), different ~ N(-1, 1): best accuracy Phi(1) = 0.8413, EER 0.1587, AUC Phi(sqrt 2) = 0.9214
    rng = np.random.default_rng(0)
    same = np.tile([True, False], 6000)
    scores = np.where(same, 1.0, -1.0) + rng.normal(size=same.size)
    result = verification_metrics(scores, same, folds=10, tar_fars=(0.1587,))
    assert result.accuracy == pytest.approx(0.8413, abs=0.01)
    assert result.eer == pytest.approx(0.1587, abs=0.01)
    assert result.auc == pytest.approx(0.9214, abs=0.01)
    assert abs(result.threshold) < 0.1
    assert result.tar_at_far[0.1587] == pytest.approx(0.8413, abs=0.015)
    # FAR 1e-3 on 5400 training negatives; the FAR achieved on held-out folds stays near the target
    # theory: threshold -1 + 3.09 on different pairs, so VAL = P(Z > 1.09) = 0.138
    assert result.far == pytest.approx(1e-3, abs=1e-3)
    assert result.val == pytest.approx(0.138, abs=0.03)
    assert "10 folds" in result.summary() and result.as_dict()["tar@far=0.1587"] == result.tar_at_far[0.1587]


def test_pair_scores() -> None:
    a = np.array([[1.0, 0.0], [1.0, 0.0], [3.0, 4.0]])
    b = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    cosine, higher = pair_scores(a, b, "cosine")
    assert higher and cosine == pytest.approx([1.0, 0.0, 0.0])
    distance, higher = pair_scores(a, b, "euclidean")
    assert not higher and distance == pytest.approx([1.0, math.sqrt(2), 5.0])
    assert pair_scores(a, b, "squared_euclidean")[0] == pytest.approx([1.0, 2.0, 25.0])
    with pytest.raises(ValueError, match="unknown pair metric"):
        pair_scores(a, b, "manhattan")


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="NaN"):
        verification_metrics([0.1, float("nan"), 0.3, 0.4], [1, 0, 1, 0], folds=2)
    with pytest.raises(ValueError, match="both same-identity and different-identity"):
        verification_metrics([0.1, 0.2, 0.3, 0.4], [1, 1, 1, 1], folds=2)
    with pytest.raises(ValueError, match="4 scores but 3"):
        verification_metrics([0.1, 0.2, 0.3, 0.4], [1, 0, 1], folds=2)
    with pytest.raises(ValueError, match="booleans or 0/1"):
        fine_tune_threshold([0.1, 0.2], [2, 0])


def _assert_png(path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = read_image(path).shape
    assert height > 100 and width > 100
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_plots_write_complete_pngs(tmp_path) -> None:
    rng = np.random.default_rng(1)
    same = np.tile([True, False], 200)
    scores = np.where(same, 0.6, 0.2) + 0.2 * rng.normal(size=same.size)
    result = verification_metrics(scores, same, folds=10)
    _assert_png(plot_roc(tmp_path / "roc.png", {"model": (result.fpr, result.tpr), "chance": ([0, 1], [0, 1])}))
    _assert_png(plot_roc(tmp_path / "roc_log.png", {"model": (result.fpr, result.tpr)}, log_far=True))
    _assert_png(plot_score_histograms(tmp_path / "hist.png", scores, same, threshold=result.threshold))
    _assert_png(plot_pr_curve(tmp_path / "pr.png", scores, same))
    _assert_png(plot_loss_curves(tmp_path / "sub" / "loss.png", {"loss/train": [1.0, 0.6, 0.4],
                                                                 "loss/val": [1.1, 0.8, 0.7],
                                                                 "accuracy": [0.5, 0.7, 0.8]}))
    with pytest.raises(ValueError, match="no logged values"):
        plot_loss_curves(tmp_path / "empty.png", {"loss": []})
    assert not (tmp_path / "empty.png").exists()

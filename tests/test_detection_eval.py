"""Detection metrics: greedy matching, ignored faces, AP, mean IoU, landmark NME, FDDB ellipses, reports, plots."""
from __future__ import annotations

import math

import numpy as np
import pytest

from datasets.fddb import ellipse_to_box
from training.mtcnn.evaluation import (
    CascadeEvaluation,
    DetectionEvaluator,
    average_precision,
    ellipse_rect_iou,
    fddb_tpr_at_fp,
    format_report,
    landmark_nme,
    match_detections,
    save_pr_curves,
)

FACES = np.array([[10, 10, 50, 50], [100, 100, 140, 150], [200, 20, 230, 60]], dtype=np.float64)


def test_greedy_matching_by_score_counts_duplicates_as_false_alarms():
    boxes = np.array([[12, 10, 52, 50],    # face 0, high score
                      [10, 12, 50, 52],    # face 0 again: a duplicate, lower score
                      [100, 100, 140, 150],  # face 1 exactly
                      [300, 300, 340, 340]])  # nothing
    scores = np.array([0.9, 0.8, 0.95, 0.7])
    match = match_detections(boxes, scores, FACES)
    assert match.hits.tolist() == [True, False, True, False]
    assert not match.ignored.any()
    assert match.faces == 3
    assert match.ious[2] == pytest.approx(1.0)
    assert match.ious[0] == pytest.approx(38 * 40 / (2 * 1600 - 38 * 40))


def test_the_higher_score_takes_the_face_even_when_listed_later():
    boxes = np.array([[10, 10, 50, 50], [11, 10, 51, 50]])
    match = match_detections(boxes, np.array([0.5, 0.9]), FACES[:1])
    assert match.hits.tolist() == [False, True]


def test_detections_on_ignored_faces_are_neither_hits_nor_false_alarms():
    boxes = np.array([[10, 10, 50, 50], [200, 20, 230, 60]])
    match = match_detections(boxes, np.array([0.9, 0.8]), FACES, gt_ignore=np.array([False, False, True]))
    assert match.hits.tolist() == [True, False]
    assert match.ignored.tolist() == [False, True]
    assert match.faces == 2


def test_faces_below_the_minimum_size_are_ignored_and_so_are_small_unmatched_detections():
    evaluator = DetectionEvaluator(iou_threshold=0.5, min_face_size=20)
    faces = np.array([[0, 0, 40, 40], [100, 100, 110, 112]])  # the second is 12 px: ignored
    boxes = np.array([[0, 0, 40, 40], [100, 100, 110, 112], [300, 300, 312, 312], [400, 400, 440, 440]])
    evaluator.add(boxes, np.array([0.9, 0.8, 0.7, 0.6]), faces)
    summary = evaluator.summary()
    assert summary.faces == 1
    assert summary.detections == 2  # the hit and the large false alarm; both small boxes are ignored
    assert summary.hits == 1 and summary.false_alarms == 1
    assert summary.precision == pytest.approx(0.5) and summary.recall == pytest.approx(1.0)


def test_average_precision_of_hand_computed_curves():
    assert average_precision(np.array([0.5, 1.0]), np.array([1.0, 1.0])) == pytest.approx(1.0)
    # hits at ranks 1 and 3 of 3 detections, 2 faces: P = 1, 1/2, 2/3 at R = 1/2, 1/2, 1
    recall, precision = np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])
    assert average_precision(recall, precision) == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)
    # a face never found caps recall, and AP with it
    assert average_precision(np.array([0.5]), np.array([1.0])) == pytest.approx(0.5)


def test_evaluator_summary_over_images():
    evaluator = DetectionEvaluator(iou_threshold=0.5)
    evaluator.add(np.array([[10, 10, 50, 50], [300, 300, 340, 340]]), np.array([0.9, 0.95]), FACES[:1])
    evaluator.add(np.zeros((0, 4)), np.zeros(0), FACES[1:2])
    summary = evaluator.summary()
    assert (summary.images, summary.faces, summary.detections, summary.hits) == (2, 2, 2, 1)
    assert summary.precision == pytest.approx(0.5)
    assert summary.recall == pytest.approx(0.5)
    assert summary.mean_iou == pytest.approx(1.0)
    # ranked: false alarm (0.95) then hit (0.9): P = 0, 1/2 at R = 0, 1/2 -> AP = 0.5 * 0.5
    assert summary.ap == pytest.approx(0.25)
    precision, recall, thresholds = evaluator.pr_curve()
    assert thresholds.tolist() == [0.95, 0.9]
    assert recall.tolist() == [0.0, 0.5]


def test_landmark_nme_is_mean_point_error_over_the_inter_ocular_distance():
    truth = np.array([[[0, 0], [10, 0], [5, 5], [2, 10], [8, 10]]], dtype=np.float64)
    predicted = truth.copy()
    predicted[0, :, 0] += 1.0  # every point one pixel off
    assert landmark_nme(predicted, truth) == pytest.approx([0.1])
    assert landmark_nme(truth, truth) == pytest.approx([0.0])


def test_ellipse_overlap_with_rectangles():
    ellipse = np.array([[20.0, 10.0, math.pi / 2, 50.0, 50.0]])  # upright face: 20 tall, 10 wide radii
    box = ellipse_to_box(ellipse)
    assert box[0].tolist() == pytest.approx([40, 30, 60, 70], abs=1e-4)
    iou = ellipse_rect_iou(box, ellipse, grid=200)
    assert iou[0, 0] == pytest.approx(math.pi / 4, abs=0.01)  # ellipse area / its bounding box
    assert ellipse_rect_iou(np.array([[200, 200, 240, 240]]), ellipse)[0, 0] == 0.0
    lying = np.array([[20.0, 10.0, 0.0, 50.0, 50.0]])  # same ellipse turned on its side
    assert ellipse_rect_iou(box, lying, grid=200)[0, 0] < 0.5


def test_fddb_true_positive_rate_at_a_number_of_false_positives():
    ellipses = np.array([[20.0, 10.0, math.pi / 2, 50.0, 50.0], [20.0, 10.0, math.pi / 2, 150.0, 50.0]])
    boxes = np.array([[40, 30, 60, 70], [300, 300, 340, 340], [140, 30, 160, 70]], dtype=np.float64)
    scores = np.array([0.9, 0.8, 0.7])
    overlaps = ellipse_rect_iou(boxes, ellipses)
    match = match_detections(boxes, scores, ellipse_to_box(ellipses), None, 0.5, overlaps)
    assert match.hits.tolist() == [True, False, True]
    rates = fddb_tpr_at_fp([match], (0, 1, 5))
    assert rates == {0: 0.5, 1: 1.0, 5: 1.0}


def test_cascade_report_with_subsets_and_plot(tmp_path):
    evaluation = CascadeEvaluation(("pnet", "rnet"), 0.5, 0.0, ("easy",))
    found = {"pnet": (FACES.copy(), np.array([0.9, 0.8, 0.7])), "rnet": (FACES[:2].copy(), np.array([0.9, 0.8]))}
    evaluation.add(found, FACES, np.ones(3, bool), {"easy": np.array([True, False, False])})
    report = evaluation.report()
    assert report["recall"] == pytest.approx(2 / 3)  # the last stage (rnet) found 2 of 3
    assert report["stages"]["pnet"]["recall"] == pytest.approx(1.0)
    assert report["stages"]["pnet"]["target"] == {"recall": 0.9}
    assert report["subsets"]["easy"] == pytest.approx(1.0)  # only face 0 counts; the other hit is ignored
    lines = format_report(report)
    assert "after pnet: recall 1.0000" in lines[1] and "WIDER easy: AP 1.0000" in lines[-1]
    path = save_pr_curves(tmp_path / "pr.png", evaluation.curves(), "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

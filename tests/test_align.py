"""Face alignment: the template, the similarity fit, where pixels land, margins, anti-aliasing, bad input."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from models.alignment import TEMPLATE_112, align_faces, face_template, invert_affine, similarity_transforms
from models.detector import Detections, FaceDetector
from utils.images import read_image


def _similarity(angle_deg: float, scale: float, shift: tuple[float, float]) -> torch.Tensor:
    a = math.radians(angle_deg)
    c, s = scale * math.cos(a), scale * math.sin(a)
    return torch.tensor([[c, -s, shift[0]], [s, c, shift[1]]], dtype=torch.float64)


def _apply(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    return points @ matrix[:, :2].T + matrix[:, 2]


def test_template_scales_with_size_and_margin() -> None:
    torch.testing.assert_close(face_template(112, 0), TEMPLATE_112)
    t160 = face_template(160, 0)
    torch.testing.assert_close(t160, (TEMPLATE_112 + 0.5) * 160 / 112 - 0.5)
    with_margin = face_template(160, 32)
    centre = torch.tensor([79.5, 79.5], dtype=torch.float64)
    # a margin pulls every point towards the centre, keeping the shape
    assert ((with_margin - centre).norm(dim=1) < (t160 - centre).norm(dim=1)).all()
    with pytest.raises(ValueError, match="no room"):
        face_template(160, 160)


def test_similarity_fit_recovers_a_known_transform() -> None:
    template = face_template(160)
    truth = _similarity(17.0, 0.6, (12.0, -5.0))  # template -> image
    landmarks = _apply(truth, template).unsqueeze(0)
    fitted = similarity_transforms(landmarks, template)[0]  # image -> template
    back = _apply(fitted, landmarks[0])
    torch.testing.assert_close(back, template, rtol=0, atol=1e-9)
    torch.testing.assert_close(invert_affine(fitted.unsqueeze(0))[0], truth, rtol=0, atol=1e-9)


def _dots_image(points: torch.Tensor, size: tuple[int, int] = (300, 400)) -> np.ndarray:
    """A black image with a 5x5 dot of a distinct colour at each point."""
    image = np.zeros((*size, 3), np.uint8)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    for (x, y), colour in zip(points.round().long().tolist(), colours):
        image[y - 2:y + 3, x - 2:x + 3] = colour
    return image


def test_landmarks_land_on_the_template() -> None:
    template = face_template(112)
    landmarks = _apply(_similarity(-25.0, 1.5, (150.0, 80.0)), template).float()
    crop = align_faces(_dots_image(landmarks), landmarks.unsqueeze(0), size=112)
    assert crop.shape == (1, 3, 112, 112) and crop.dtype == torch.uint8
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    for (x, y), colour in zip(template.round().long().tolist(), colours):
        assert crop[0, :, y, x].tolist() == list(colour)


def test_box_crop_reads_the_right_pixels_with_margin() -> None:
    height, width = 200, 300
    ys, xs = np.mgrid[0:height, 0:width]
    image = np.stack([xs % 256, ys % 256, np.zeros_like(xs)], axis=2).astype(np.uint8)  # red = x, green = y
    box = torch.tensor([[100.0, 50.0, 164.0, 114.0]])  # a 64 px square
    crop = align_faces(image, box, size=64, margin=0, method="box")[0].float()
    assert abs(crop[0, 0, 0] - 100) <= 1 and abs(crop[0, 0, 63] - 163) <= 1  # x runs 100..163
    assert abs(crop[1, 0, 0] - 50) <= 1 and abs(crop[1, 63, 0] - 113) <= 1  # y runs 50..113
    wide = align_faces(image, box, size=64, margin=32, method="box")[0].float()
    # with a 32 px margin the face fills the middle 32 px, the crop covers 128 input px around the centre
    assert abs(wide[0, 32, 0] - 68) <= 2 and abs(wide[0, 32, 63] - 194) <= 2
    tall = align_faces(image, torch.tensor([[100.0, 50.0, 132.0, 114.0]]), size=64, method="box")[0].float()
    assert abs(tall[0, 0, 0] - 84) <= 1  # the 32x64 box became a 64x64 square around its centre


def test_downscaling_is_anti_aliased_and_faces_are_independent() -> None:
    checker = ((np.indices((400, 400)).sum(axis=0) % 2) * 255).astype(np.uint8)
    image = np.repeat(checker[:, :, None], 3, axis=2)
    boxes = torch.tensor([[0.0, 0.0, 400.0, 400.0], [100.0, 100.0, 140.0, 140.0]])
    both = align_faces(image, boxes, size=40, method="box")
    big = both[0].float()
    assert abs(big.mean() - 127.5) < 3 and big.std() < 10  # 10x reduction averages the checkerboard out
    torch.testing.assert_close(align_faces(image, boxes[:1], size=40, method="box")[0], both[0])
    torch.testing.assert_close(align_faces(image, boxes[1:], size=40, method="box")[0], both[1])


def test_aligned_real_faces_follow_their_transform(pretrained_mtcnn: Path, shared_data: Path) -> None:
    detector = FaceDetector.from_pretrained(pretrained_mtcnn)
    image = read_image(shared_data / "photos" / "multiface.jpg")
    faces = detector.detect(image)[0]
    template = face_template(160, margin=32)
    fitted = similarity_transforms(faces.landmarks, template)
    mapped = (faces.landmarks.double() @ fitted[:, :, :2].transpose(1, 2) + fitted[:, :, 2:].transpose(1, 2)).float()
    assert (mapped - template.float()).norm(dim=2).mean(dim=1).max() < 7  # real faces fit the template closely
    crops = align_faces(image, faces, size=160, margin=32)
    assert crops.shape == (6, 3, 160, 160)
    again = detector.detect([crop for crop in crops])
    for dets, expected in zip(again, mapped):  # the face is found again where the transform put its landmarks
        assert len(dets) >= 1
        assert (dets.landmarks[0] - expected).norm(dim=1).mean() < 2.0
    boxes_only = align_faces(image, faces, size=160, margin=32, method="box")
    assert boxes_only.shape == (6, 3, 160, 160)


def test_bad_alignment_input() -> None:
    image = np.zeros((50, 50, 3), np.uint8)
    with pytest.raises(ValueError, match="method must be one of"):
        align_faces(image, torch.zeros(1, 4), method="affine")
    with pytest.raises(ValueError, match=r"needs landmarks \[N, 5, 2\]"):
        align_faces(image, torch.zeros(1, 4))
    no_marks = Detections(torch.zeros(1, 4), torch.ones(1), None, stage="pnet")
    with pytest.raises(ValueError, match="no landmarks"):
        align_faces(image, no_marks)
    with pytest.raises(ValueError, match="NaN"):
        align_faces(image, torch.full((1, 5, 2), float("nan")))
    with pytest.raises(ValueError, match="degenerate"):
        align_faces(image, torch.full((1, 5, 2), 10.0))
    with pytest.raises(ValueError, match="margin"):
        align_faces(image, torch.zeros(1, 4), size=32, margin=40, method="box")
    assert align_faces(image, torch.zeros(0, 5, 2)).shape == (0, 3, 160, 160)

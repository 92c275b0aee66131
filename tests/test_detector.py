"""FaceDetector with the original weights: real faces found, parity with facenet-pytorch, every input form, bad
input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.detector import Detections, DetectorSettings, FaceDetector, StageTimer, pyramid_scales
from models.mtcnn import ONet, PNet, RNet
from tests.conftest import FACENET_REFERENCE, import_or_skip
from utils.boxes import detection_agreement
from utils.errors import ConfigError, DataError
from utils.images import read_image

# Face centres checked by eye on the photos (x, y in pixels); multiface.jpg has 6 faces, t1.jpg 6 people.
MULTIFACE_CENTRES = [(461, 186), (593, 101), (906, 498), (265, 303), (658, 247), (760, 518)]
T1_CENTRES = [(961, 132), (110, 330), (793, 410), (321, 211), (517, 333), (1181, 335)]


@pytest.fixture(scope="module")
def detector(pretrained_mtcnn: Path) -> FaceDetector:
    torch.set_num_threads(2)
    return FaceDetector.from_pretrained(pretrained_mtcnn)


@pytest.fixture(scope="module")
def photos(shared_data: Path) -> dict[str, np.ndarray]:
    return {p.name: read_image(p) for p in sorted((shared_data / "photos").glob("*"))}


@pytest.fixture(scope="module")
def wider_images(shared_data: Path) -> list[np.ndarray]:
    files = sorted((shared_data / "wider_face_train_subset" / "WIDER_train" / "images").glob("*/*.jpg"))
    return [read_image(p) for p in files[::300][:3]]


def _check_faces(dets: Detections, centres: list[tuple[int, int]]) -> None:
    """Each expected face has exactly one confident box around its centre, with plausible landmarks."""
    confident = dets.scores >= 0.9
    boxes, marks = dets.boxes[confident], dets.landmarks[confident]
    assert len(boxes) == len(centres)
    box_centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    for cx, cy in centres:
        distance = (box_centres - torch.tensor([cx, cy])).norm(dim=1)
        hit = int(distance.argmin())
        assert distance[hit] < 12, f"no box centred near ({cx}, {cy})"
        x1, y1, x2, y2 = boxes[hit].tolist()
        points = marks[hit]
        assert ((points[:, 0] > x1) & (points[:, 0] < x2) & (points[:, 1] > y1) & (points[:, 1] < y2)).all()
        left_eye, right_eye, nose, mouth_left, mouth_right = points
        assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
        assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])


def test_finds_the_faces_a_person_sees(detector: FaceDetector, photos: dict) -> None:
    results = detector.detect([photos["multiface.jpg"], photos["t1.jpg"], photos["astronaut.png"]])
    _check_faces(results[0], MULTIFACE_CENTRES)
    _check_faces(results[1], T1_CENTRES)
    _check_faces(results[2], [(224, 117)])
    assert all(d.boxes.dtype == torch.float32 and d.landmarks.shape == (len(d), 5, 2) for d in results)
    assert all(torch.all(d.scores[:-1] >= d.scores[1:]) for d in results)  # sorted by falling score


def test_agrees_with_facenet_pytorch(detector: FaceDetector, photos: dict, wider_images: list,
                                     pretrained_mtcnn: Path) -> None:
    mtcnn_module = import_or_skip("facenet_pytorch", FACENET_REFERENCE)
    reference = mtcnn_module.MTCNN(keep_all=True, device="cpu", min_face_size=20, thresholds=[0.6, 0.7, 0.7],
                                   factor=0.709)
    for name in ("pnet", "rnet", "onet"):
        getattr(reference, name).load_state_dict(torch.load(pretrained_mtcnn / f"{name}.pt", weights_only=True))
    totals: dict[str, float] = {}
    for image in [*photos.values(), *wider_images]:
        boxes, probs, points = reference.detect(Image.fromarray(image), landmarks=True)
        if boxes is None:
            boxes, probs, points = np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
        ours = detector.detect(image)[0]
        result = detection_agreement(torch.as_tensor(np.asarray(boxes, dtype=np.float32)),
                                     torch.as_tensor(np.asarray(probs, dtype=np.float32)),
                                     ours.boxes, ours.scores,
                                     torch.as_tensor(np.asarray(points, dtype=np.float32)), ours.landmarks)
        for key, value in result.items():
            totals[key] = totals.get(key, 0.0) + value
    assert totals["confident_a"] >= 15 and totals["confident_b"] >= 15
    assert totals["missed_by_a"] == 0 and totals["missed_by_b"] == 0
    assert totals["landmark_distance_sum"] / totals["landmark_pairs"] < 2.0


def test_same_result_in_every_input_form(detector: FaceDetector, photos: dict) -> None:
    rgb = photos["multiface.jpg"][:360, 180:720].copy()  # four faces; a crop keeps the test fast
    small = photos["t1.jpg"][100:400, 200:500].copy()  # another size, two faces
    alone = detector.detect(rgb)[0]
    assert len(alone) == 4
    tensor = torch.from_numpy(rgb).permute(2, 0, 1)
    forms = {
        "numpy rgb": detector.detect(rgb)[0],
        "numpy bgr": detector.detect(np.ascontiguousarray(rgb[:, :, ::-1]), channel_order="bgr")[0],
        "pil": detector.detect(Image.fromarray(rgb))[0],
        "tensor uint8": detector.detect(tensor)[0],
        "tensor float": detector.detect(tensor.float())[0],
        "numpy float64": detector.detect(rgb.astype(np.float64))[0],
        "list with another size": detector.detect([small, rgb, small])[1],
        "numpy batch": detector.detect(np.stack([rgb, rgb]))[1],
        "tensor batch": detector.detect(torch.stack([tensor, tensor]))[0],
    }
    for name, dets in forms.items():
        assert len(dets) == len(alone), name
        torch.testing.assert_close(dets.boxes, alone.boxes, rtol=0, atol=1e-4, msg=name)
        torch.testing.assert_close(dets.scores, alone.scores, rtol=0, atol=1e-6, msg=name)
        torch.testing.assert_close(dets.landmarks, alone.landmarks, rtol=0, atol=1e-4, msg=name)
    # the other image in the same batch is also unchanged
    other = detector.detect(small)[0]
    assert len(other) >= 1
    torch.testing.assert_close(detector.detect([small, rgb])[0].boxes, other.boxes)


def test_memory_bounds_do_not_change_results(pretrained_mtcnn: Path, photos: dict) -> None:
    image = photos["multiface.jpg"][:360, 180:720]
    default = FaceDetector.from_pretrained(pretrained_mtcnn).detect(image)[0]
    # P-Net in row bands of ~40k pixels and R/O-Net in chunks of 8 crops give the same faces
    tight = FaceDetector.from_pretrained(pretrained_mtcnn,
                                         DetectorSettings(max_pnet_pixels=40_000, max_crops_per_batch=8))
    timer = StageTimer()
    banded = tight.detect(image, timer=timer)[0]
    torch.testing.assert_close(banded.boxes, default.boxes, rtol=0, atol=1e-4)
    torch.testing.assert_close(banded.scores, default.scores, rtol=0, atol=1e-6)
    assert timer.counts["rnet_crops"] > 8 and {"pyramid", "pnet", "rnet", "onet", "crop", "nms"} <= set(timer.seconds)
    assert timer.per_image()["total"] > 0 and timer.images == 1


def test_stages_stop_where_asked(detector: FaceDetector, photos: dict) -> None:
    image = photos["multiface.jpg"]
    after_p, after_r, after_o = (detector.detect(image, until=stage)[0] for stage in ("pnet", "rnet", "onet"))
    assert len(after_p) > len(after_r) > len(after_o) == 6
    assert after_p.stage == "pnet" and after_p.landmarks is None and after_r.landmarks is None
    sides = after_p.boxes[:, 2:] - after_p.boxes[:, :2]
    torch.testing.assert_close(sides[:, 0], sides[:, 1], rtol=1e-5, atol=1e-3)  # candidates handed on are squares
    low = FaceDetector(detector.nets["pnet"], detector.nets["rnet"], detector.nets["onet"],
                       DetectorSettings(thresholds=(0.3, 0.4, 0.7)))
    assert len(low.detect(image, until="pnet")[0]) > len(after_p)  # mining thresholds let more through
    with pytest.raises(ValueError, match="until must be one of"):
        detector.detect(image, until="bnet")


def test_pyramid_scales_follow_min_face_and_factor() -> None:
    scales = pyramid_scales(100, 200, min_face_size=20, factor=0.5)
    assert scales == [0.6, 0.3, 0.15]  # the smallest side stays >= 12 px: 60, 30, 15
    assert pyramid_scales(10, 10, 20, 0.709) == []


def test_results_are_ordinary_tensors(detector: FaceDetector, photos: dict) -> None:
    dets = detector.detect(photos["astronaut.png"])[0]
    dets.boxes[:, 0] += 1.0  # no "inference tensor" error outside the detector
    assert dets.numpy()["boxes"].shape == (1, 4)


def test_bad_input_is_an_error_or_empty(detector: FaceDetector, photos: dict, tmp_path: Path) -> None:
    rgb = photos["astronaut.png"]
    reference = detector.detect(rgb)[0]
    assert len(detector.detect(np.zeros((0, 0, 3), np.uint8))[0]) == 0
    assert len(detector.detect(np.zeros((1, 1, 3), np.uint8))[0]) == 0
    assert len(detector.detect(torch.zeros(3, 5, 400)) [0]) == 0
    assert detector.detect([]) == []
    grey = rgb.mean(axis=2).round().astype(np.uint8)
    torch.testing.assert_close(detector.detect(grey)[0].boxes,
                               detector.detect(np.repeat(grey[:, :, None], 3, 2))[0].boxes)
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 7, np.uint8)], axis=2)
    torch.testing.assert_close(detector.detect(rgba)[0].boxes, reference.boxes)
    nan = torch.from_numpy(rgb).permute(2, 0, 1).float()
    nan[0, 10, 10] = float("nan")
    with pytest.raises(DataError, match=r"image\[0\]: image contains NaN"):
        detector.detect([nan])
    with pytest.raises(DataError, match="dtype int16 is not supported"):
        detector.detect(rgb.astype(np.int16))
    with pytest.raises(DataError, match="dtype torch.bool is not supported"):
        detector.detect(torch.ones(3, 50, 50, dtype=torch.bool))
    with pytest.raises(DataError, match="within \\[0, 1\\]"):
        detector.detect(torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)
    with pytest.raises(DataError, match="looks HxWxC"):
        detector.detect(torch.from_numpy(rgb))
    with pytest.raises(DataError, match="span"):
        detector.detect(torch.full((3, 40, 40), -1.0))
    with pytest.raises(DataError, match="unsupported image type str"):
        detector.detect("photo.jpg")
    with pytest.raises(DataError, match="is not HxW"):
        detector.detect(np.zeros((5, 5, 2), np.uint8))
    with pytest.raises(ValueError, match="channel_order"):
        detector.detect(rgb, channel_order="rbg")


def test_bad_construction_is_a_clear_error(pretrained_mtcnn: Path) -> None:
    with pytest.raises(ConfigError, match="expects a rnet in that position, got PNet"):
        FaceDetector(PNet(), PNet(), ONet())
    with pytest.raises(ConfigError, match="scale_factor must be in"):
        DetectorSettings(scale_factor=1.5)
    with pytest.raises(ConfigError, match="thresholds"):
        DetectorSettings(thresholds=(0.6, 0.7))
    with pytest.raises(DataError, match="this state_dict is a onet, expected rnet"):
        FaceDetector.from_checkpoints(pretrained_mtcnn / "pnet.pt", pretrained_mtcnn / "onet.pt",
                                      pretrained_mtcnn / "onet.pt")
    settings = DetectorSettings.from_config(type("Cfg", (), {"min_face_size": 40.0, "fp16": True, "unrelated": 1})())
    assert settings.min_face_size == 40.0 and settings.fp16
    assert FaceDetector(PNet(), RNet(), ONet(), settings).dtype == torch.float32  # fp16 only on CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(pretrained_mtcnn: Path, photos: dict) -> None:
    image = photos["multiface.jpg"]
    cpu = FaceDetector.from_pretrained(pretrained_mtcnn).detect(image)[0]
    for settings in (DetectorSettings(), DetectorSettings(fp16=True)):
        gpu = FaceDetector.from_pretrained(pretrained_mtcnn, settings, device="cuda").detect([image] * 3)
        for dets in gpu:
            assert dets.boxes.device.type == "cuda"
            dets = dets.to("cpu")
            result = detection_agreement(cpu.boxes, cpu.scores, dets.boxes, dets.scores, cpu.landmarks, dets.landmarks)
            assert result["confident_a"] == 6 and result["missed_by_a"] == 0 and result["missed_by_b"] == 0
            assert result["landmark_distance_sum"] / result["landmark_pairs"] < 1.0


def test_integral_images_of_large_images_stay_exact_in_int32() -> None:
    from utils.area_resize import INT32_SAFE_PIXELS, integral_image

    rng = np.random.default_rng(0)
    image = rng.integers(200, 256, (2100, 4100, 3), dtype=np.uint8)  # 8.6 MP: the int32 table wraps around
    assert 2100 * 4100 > INT32_SAFE_PIXELS
    table = integral_image(torch.from_numpy(image))
    assert table.dtype == torch.int32
    for y0, x0, y1, x1 in [(0, 0, 2100, 300), (1500, 3000, 2100, 4100), (7, 11, 1900, 40)]:
        region = (table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]).long()
        expected = torch.from_numpy(image[y0:y1, x0:x1].astype(np.int64).sum(axis=(0, 1)))
        assert torch.equal(region, expected)


def test_box_helpers_round_trip_and_min_nms() -> None:
    from utils.boxes import (
        apply_box_regression,
        box_overlap,
        box_regression_targets,
        clip_boxes,
        decode_landmarks,
        encode_landmarks,
        nms,
        square_boxes,
        xywh_to_xyxy,
        xyxy_to_xywh,
    )

    boxes = torch.tensor([[10.0, 20.0, 50.0, 100.0], [0.0, 0.0, 30.0, 30.0]])
    assert xyxy_to_xywh(boxes)[0].tolist() == [10.0, 20.0, 40.0, 80.0]
    torch.testing.assert_close(xywh_to_xyxy(xyxy_to_xywh(boxes)), boxes)
    clipped = clip_boxes(torch.tensor([[-5.0, 10.0, 70.0, 200.0]]), width=64, height=100)
    assert clipped.tolist() == [[0.0, 10.0, 64.0, 100.0]]
    squared = square_boxes(boxes)
    assert torch.equal(squared[0], torch.tensor([-10.0, 20.0, 70.0, 100.0]))  # 40x80 -> 80x80, same centre
    targets = torch.tensor([[12.0, 18.0, 55.0, 90.0], [1.0, 2.0, 29.0, 33.0]])
    for inclusive in (False, True):
        offsets = box_regression_targets(boxes, targets, inclusive)
        torch.testing.assert_close(apply_box_regression(boxes, offsets, inclusive), targets)
        points = torch.rand(2, 5, 2) * 30 + 10
        encoded = encode_landmarks(boxes, points, inclusive)
        torch.testing.assert_close(decode_landmarks(boxes, encoded, inclusive), points)
    # a small box inside a big one: IoU is low, intersection over the smaller box is 1
    nested = torch.tensor([[0.0, 0.0, 100.0, 100.0], [10.0, 10.0, 30.0, 30.0], [200.0, 0.0, 240.0, 40.0]])
    assert box_overlap(nested[:1], nested[1:2], "union").item() < 0.05
    assert box_overlap(nested[:1], nested[1:2], "min").item() == 1.0
    scores = torch.tensor([0.9, 0.95, 0.8])
    assert nms(nested, scores, None, 0.7, mode="union").tolist() == [1, 0, 2]
    assert nms(nested, scores, None, 0.7, mode="min").tolist() == [1, 2]
    groups = torch.tensor([0, 1, 0])  # in different groups nothing suppresses across
    assert sorted(nms(nested, scores, groups, 0.7, mode="min").tolist()) == [0, 1, 2]
    tie = torch.tensor([1.0, 1.0, 0.5])  # equal scores: the later box wins, as in the reference
    assert nms(nested, tie, None, 0.7, mode="min").tolist() == [1, 2]

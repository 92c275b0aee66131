"""MTCNN samples: area crops, IoU labels, targets in the detector's frame, mirroring, the packed store,
balanced batches, generation with bad inputs, resume and worker determinism, and mining samples."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from config import MTCNNConfig
from datasets.wider import WiderAnnotation, read_wider_annotations, write_wider_annotations
from models.detector import Candidates, FaceDetector
from models.mtcnn import ONet, PNet, RNet
from training.mtcnn.packed import (
    LANDMARK,
    NEGATIVE,
    PART,
    POSITIVE,
    BalancedBatchSampler,
    PackedSamples,
    batch_quota,
    read_manifest,
)
from training.mtcnn.samples import (
    DetectionItem,
    IouRule,
    LandmarkItem,
    Mined,
    augment_batch,
    detection_samples,
    encode_targets,
    generate_samples,
    label_crops,
    landmark_samples,
    mirror_geometry,
    select_faces,
    target_frame,
)
from utils.area_resize import crop_resize, integral_image
from utils.boxes import apply_box_regression, decode_landmarks
from utils.errors import BadInputLog, DataError
from utils.images import write_image

RULE = IouRule(0.3, 0.4, 0.65)


def _noise_image(seed: int, height: int = 120, width: int = 160) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# --- crops and geometry -----------------------------------------------------------------------------------


@pytest.mark.parametrize("box, size", [((10, 20, 60, 70), 12), ((5, 5, 20, 20), 48), ((0, 0, 160, 120), 24),
                                       ((3, 7, 40, 33), 24)])
def test_crop_resize_is_area_interpolation(box, size):
    image = _noise_image(0)
    x0, y0, x1, y1 = box
    reference = F.interpolate(torch.from_numpy(image[y0:y1, x0:x1]).permute(2, 0, 1)[None].float(),
                              size=(size, size), mode="area")[0].permute(1, 2, 0).numpy()
    crop = crop_resize(integral_image(image), np.array([box]), size)[0]
    assert crop.dtype == np.uint8 and crop.shape == (size, size, 3)
    assert np.abs(crop - reference).max() <= 0.5 + 1e-6


def test_crop_resize_pads_outside_the_image_with_black():
    image = _noise_image(1)
    crop = crop_resize(integral_image(image), np.array([[-10, -10, 10, 10]]), 20)[0]
    assert (crop[:10] == 0).all() and (crop[:, :10] == 0).all()
    assert np.array_equal(crop[10:, 10:], image[:10, :10])


def test_crops_equal_the_detectors_crops_of_the_same_regions():
    image = _noise_image(2)
    detector = FaceDetector(PNet(), RNet(), ONet())
    prep = detector.prepare([image])
    boxes = torch.tensor([[20.3, 15.7, 60.2, 55.9], [-5.0, 100.0, 30.0, 135.0], [140.5, 2.0, 170.0, 31.5]])
    cands = Candidates(boxes, torch.ones(3), torch.zeros(3, dtype=torch.long))
    regions, valid = detector.crop_regions(prep, cands)
    theirs = detector.crop_resize(prep, cands.image_index, regions, 24).permute(0, 2, 3, 1).numpy()
    ours = (crop_resize(integral_image(image), regions.numpy(), 24).astype(np.float64) - 127.5) / 128.0
    assert valid.all()
    assert np.abs(ours - theirs).max() <= 0.5 / 128 + 1e-6


@pytest.mark.parametrize("size", [12, 24, 48])
def test_targets_decode_to_the_face_in_the_detectors_frame(size):
    regions = np.array([[10, 20, 34, 44], [0, 0, 100, 100]])
    faces = np.array([[12.0, 22.0, 30.0, 40.0], [-5.0, 10.0, 90.0, 95.0]])
    points = np.random.default_rng(0).uniform(10, 40, (2, 5, 2))
    frames, inclusive = target_frame(regions, size)
    boxes, landmarks = encode_targets(frames, inclusive, faces, points)
    decoded = apply_box_regression(frames, torch.as_tensor(boxes, dtype=torch.float64), inclusive=inclusive)
    assert decoded.numpy() == pytest.approx(faces, abs=1e-4)
    back = decode_landmarks(frames, torch.as_tensor(landmarks, dtype=torch.float64), inclusive=inclusive)
    assert back.numpy() == pytest.approx(points, abs=1e-4)


def test_mirroring_moves_boxes_and_swaps_left_and_right_points():
    regions = np.array([[10, 0, 34, 24]])  # mirror axis at x = 22
    face = np.array([[12.0, 2.0, 30.0, 20.0]])
    points = np.array([[[15, 8], [25, 8], [20, 12], [16, 18], [24, 18]]], dtype=np.float64)
    box, moved = mirror_geometry(regions, face, points)
    assert box[0].tolist() == [14.0, 2.0, 32.0, 20.0]
    assert moved[0].tolist() == [[19, 8], [29, 8], [24, 12], [20, 18], [28, 18]]


def test_labels_follow_the_iou_thresholds_and_negatives_avoid_every_annotated_box():
    faces = np.array([[0.0, 0.0, 100.0, 100.0]])
    small = np.array([[300.0, 300.0, 310.0, 310.0]])  # too small to be a positive, still not background
    crops = np.array([[0, 0, 100, 100],     # IoU 1: positive
                      [0, 0, 100, 150],     # IoU 0.667: positive
                      [0, 0, 100, 200],     # IoU 0.5: part
                      [0, 0, 100, 300],     # IoU 0.333: between part and negative: discarded
                      [0, 0, 100, 400],     # IoU 0.25: negative
                      [298, 298, 312, 312],  # on the small face: not a negative
                      [500, 500, 600, 600]])
    kinds, nearest = label_crops(crops, faces, np.concatenate([faces, small]), RULE)
    assert kinds.tolist() == [POSITIVE, POSITIVE, PART, -1, NEGATIVE, -1, NEGATIVE]
    assert (nearest == 0).all()


def test_select_faces_counts_what_it_skips_and_reports_boxes_outside_the_image():
    item = DetectionItem("x.jpg", np.array([[10, 10, 50, 50], [0, 0, 0, 30], [60, 60, 70, 70], [80, 10, 120, 50],
                                            [200, 10, 240, 50]], dtype=np.float32),
                         np.array([True, False, True, False, True]))
    faces, avoid, counts, problems = select_faces(item, 160, 120, min_face_size=20)
    assert faces.tolist() == [[10, 10, 50, 50]]
    assert (counts.used, counts.zero_size, counts.small, counts.invalid, counts.outside) == (1, 1, 1, 1, 1)
    assert len(problems) == 1 and "outside the 160x120 image" in problems[0]
    assert len(avoid) == 3  # the used, the small and the invalid face; negatives keep away from all of them


def test_detection_samples_label_their_crops_truthfully():
    image = _noise_image(3, 240, 320)
    faces = np.array([[40.0, 40.0, 100.0, 110.0], [180.0, 60.0, 230.0, 120.0]])
    stage = MTCNNConfig().rnet
    samples = detection_samples(image, faces, faces, 24, stage, RULE, np.random.default_rng(0))
    kinds = samples["kinds"]
    assert samples["images"].shape == (len(kinds), 24, 24, 3)
    assert (kinds == NEGATIVE).sum() == stage.negatives_per_image + 2 * stage.negatives_near_face
    assert (kinds == POSITIVE).sum() > 0 and (kinds == PART).sum() > 0
    assert (samples["boxes"][kinds == NEGATIVE] == 0).all()
    assert np.abs(samples["boxes"][kinds == POSITIVE]).max() < 0.5  # positives sit close to their face


def test_landmark_samples_put_each_point_on_its_mark_even_when_mirrored():
    image = np.zeros((120, 120, 3), dtype=np.uint8)
    points = np.array([[45, 50], [75, 50], [60, 65], [48, 80], [72, 80]], dtype=np.float64)
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255]], dtype=np.uint8)
    for (x, y), colour in zip(points.astype(int), colours):
        image[y - 3:y + 4, x - 3:x + 4] = colour  # a coloured mark on every landmark
    box = np.array([30.0, 30.0, 90.0, 100.0])
    samples = landmark_samples(image, box, points, 48, 20, RULE, np.random.default_rng(4), mirror=True)
    assert (samples["kinds"] == LANDMARK).all() and len(samples["kinds"]) >= 10
    regions = np.array([[0, 0, 48, 48]] * len(samples["kinds"]))  # the crop's own pixels
    frames, inclusive = target_frame(regions, 48)
    in_crop = decode_landmarks(frames, torch.as_tensor(samples["landmarks"], dtype=torch.float64), inclusive).numpy()
    orders = {"plain": [0, 1, 2, 3, 4], "mirrored": [1, 0, 2, 4, 3]}  # a mirrored crop's left eye is the right mark
    seen = set()
    for crop, spots in zip(samples["images"], in_crop):
        found = [crop[int(np.clip(y, 0, 47)), int(np.clip(x, 0, 47))].astype(int) for x, y in spots]
        matching = [name for name, order in orders.items()
                    if all(np.abs(pixel - colours[k]).max() < 120 for pixel, k in zip(found, order))]
        assert matching, "a landmark target does not point at its mark"
        assert spots[0][0] < spots[1][0]  # the left eye stays on the image's left
        seen.update(matching)
    assert seen == {"plain", "mirrored"}


def test_rotated_landmark_samples_stay_on_their_marks():
    image = np.zeros((120, 120, 3), dtype=np.uint8)
    points = np.array([[45, 50], [75, 50], [60, 65], [48, 80], [72, 80]], dtype=np.float64)
    for x, y in points.astype(int):
        image[y - 3:y + 4, x - 3:x + 4] = 255
    samples = landmark_samples(image, np.array([30.0, 30.0, 90.0, 100.0]), points, 48, 20, RULE,
                               np.random.default_rng(5), mirror=False, max_rotation=15.0)
    frames, inclusive = target_frame(np.array([[0, 0, 48, 48]] * len(samples["kinds"])), 48)
    spots = decode_landmarks(frames, torch.as_tensor(samples["landmarks"], dtype=torch.float64), inclusive).numpy()
    values = [crop[int(np.clip(y, 0, 47)), int(np.clip(x, 0, 47))].max() for crop, pts in zip(samples["images"], spots)
              for x, y in pts]
    assert np.mean(np.array(values) > 100) > 0.95


# --- the store and the balanced sampler ----------------------------------------------------------------------


def test_balanced_batches_keep_the_ratio_and_depend_only_on_seed_and_epoch():
    kinds = np.array([0] * 100 + [1] * 5 + [2] * 30 + [3] * 40)
    sampler = BalancedBatchSampler(kinds, 14, (3, 1, 1, 2), steps=6, seed=1)
    batches = list(sampler)
    assert len(batches) == 6
    for batch in batches:
        assert np.bincount(kinds[batch], minlength=4).tolist() == [6, 2, 2, 4]
    assert list(sampler) == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches
    assert batch_quota(10, (3, 1, 1, 2), (5, 0, 3, 3)).tolist() == [5, 0, 2, 3]  # absent types give way


# --- generation over files: bad inputs, resume, workers ---------------------------------------------------------


@pytest.fixture()
def tiny_wider(tmp_path):
    """Four images (one without faces, one unreadable) and an annotation file with a malformed record."""
    images = tmp_path / "WIDER_train" / "images" / "0--Test"
    for i in range(3):
        write_image(images / f"{i}.jpg", _noise_image(10 + i, 200, 240))
    (images / "3.jpg").write_bytes(b"not a jpeg at all")
    annotations = [
        # a face, a zero-size box, a box outside the image
        WiderAnnotation("0--Test/0.jpg", [[20, 20, 80, 90], [120, 40, 125, 40], [300, 10, 330, 40]]),
        WiderAnnotation("0--Test/1.jpg", np.zeros((0, 4))),  # no faces
        WiderAnnotation("0--Test/2.jpg", [[60, 60, 140, 150]], [[0, 0, 0, 1, 0, 0]]),  # flagged invalid
        WiderAnnotation("0--Test/3.jpg", [[10, 10, 50, 50]]),  # unreadable image
    ]
    split = tmp_path / "wider_face_split" / "wider_face_train_bbx_gt.txt"
    write_wider_annotations(split, annotations)
    text = split.read_text()
    split.write_text("0--Test/9.jpg\n2\n1 2 3 4 0 0 0 0 0 0\n" + text)  # declares 2 faces, has 1
    return tmp_path, images


def _items(root, images, log):
    annotations = read_wider_annotations(root / "wider_face_split" / "wider_face_train_bbx_gt.txt", log=log)
    return [DetectionItem(str(images.parent / a.image_path), a.boxes, a.valid) for a in annotations]


def test_generation_skips_and_counts_every_kind_of_bad_input(tiny_wider, tmp_path):
    root, images = tiny_wider
    log = BadInputLog(strict=False)
    with pytest.warns(UserWarning):
        items = _items(root, images, log)
        config = MTCNNConfig()
        summary = generate_samples(tmp_path / "store", 12, items, [], config, config.pnet, seed=0, log=log,
                                   progress=False)
    messages = [str(p) for p in log.problems]
    assert any("wider_face_train_bbx_gt.txt:2: '0--Test/9.jpg' declares 2 face(s) but 1 face line(s) follow" in m
               for m in messages)
    assert any("3.jpg" in m and "not an image" in m for m in messages)
    assert any("outside the 240x200 image" in m for m in messages)
    assert summary.images == 3 and summary.images_skipped == 1
    assert (summary.faces.used, summary.faces.zero_size, summary.faces.outside, summary.faces.invalid) == (1, 1, 1, 1)
    store = PackedSamples(tmp_path / "store")
    counts = store.counts()
    assert counts == summary.counts and counts["negative"] >= 3 * 40 and counts["positive"] > 0
    assert "samples: negative" in summary.lines()[0]


def test_strict_generation_stops_at_the_unreadable_image_with_its_name(tiny_wider, tmp_path):
    root, images = tiny_wider
    with pytest.warns(UserWarning):
        items = _items(root, images, BadInputLog(strict=False))
    items = [i for i in items if not i.image_path.endswith("0.jpg")]  # no box problems before the bad image
    config = MTCNNConfig()
    with pytest.raises(DataError) as info:
        generate_samples(tmp_path / "strict", 12, items, [], config, config.pnet, seed=0,
                         log=BadInputLog(strict=True), progress=False)
    assert "3.jpg" in str(info.value) and "not an image" in str(info.value) and "\n" not in str(info.value)


def test_generation_resumes_finished_shards_and_is_the_same_with_workers(tiny_wider, tmp_path):
    root, images = tiny_wider
    with pytest.warns(UserWarning):
        items = _items(root, images, BadInputLog(strict=False))
    items = [i for i in items if not i.image_path.endswith("3.jpg")]
    config = replace(MTCNNConfig(), shard_images=1)
    marks = [LandmarkItem(str(images / "0.jpg"), np.array([20, 20, 80, 90]), np.full((5, 2), 50.0))]
    store = tmp_path / "a"
    with pytest.warns(UserWarning):
        generate_samples(store, 24, items, marks, config, config.rnet, seed=3, log=BadInputLog(), progress=False)
    first = PackedSamples(store).gather(np.arange(len(PackedSamples(store))))
    shard = store / "det-00001.images.npy"
    stamp = (store / "det-00000.images.npy").stat().st_mtime_ns
    (store / "det-00001.json").unlink()
    (store / "manifest.json").unlink()
    shard.unlink()
    with pytest.warns(UserWarning):
        summary = generate_samples(store, 24, items, marks, config, config.rnet, seed=3, log=BadInputLog(),
                                   progress=False)
    assert not summary.reused and shard.is_file()
    assert (store / "det-00000.images.npy").stat().st_mtime_ns == stamp  # finished shards are not redone
    again = PackedSamples(store).gather(np.arange(len(PackedSamples(store))))
    assert all(np.array_equal(first[k], again[k]) for k in first)
    with pytest.warns(UserWarning):
        reused = generate_samples(store, 24, items, marks, config, config.rnet, seed=3, log=BadInputLog(),
                                  progress=False)
    assert reused.reused and reused.counts == summary.counts
    with pytest.warns(UserWarning):
        generate_samples(tmp_path / "w", 24, items, marks, config, config.rnet, seed=3, workers=2,
                         log=BadInputLog(), progress=False)
    parallel = PackedSamples(tmp_path / "w").gather(np.arange(len(PackedSamples(tmp_path / "w"))))
    assert all(np.array_equal(first[k], parallel[k]) for k in first)
    with pytest.warns(UserWarning):
        generate_samples(store, 24, items, marks, config, config.rnet, seed=4, log=BadInputLog(), progress=False)
    assert json.loads((store / "settings.json").read_text())["seed"] == 4  # other settings: store rebuilt
    assert read_manifest(store)["total"] == len(PackedSamples(store))


def test_mined_candidates_become_labelled_samples_with_targets_in_the_candidates_frame(tmp_path):
    image = _noise_image(7, 200, 240)
    write_image(tmp_path / "img.jpg", image)
    face = np.array([[50.0, 40.0, 110.0, 110.0]])
    # IoU with the face: 0.95, none, 0.47
    boxes = np.array([[48.0, 42.0, 112.0, 106.0], [150.0, 120.0, 190.0, 160.0], [50.0, 15.0, 110.0, 85.0]])

    def detect(images):
        assert len(images) == 1 and images[0].shape == image.shape
        regions = np.concatenate([np.floor(boxes[:, :2]) - 1, np.floor(boxes[:, 2:])], axis=1).astype(np.int64)
        return [Mined(boxes, regions)]

    config = MTCNNConfig()
    stage = replace(config.rnet, negatives_per_image=0, negatives_near_face=0, crops_per_face=0)
    item = DetectionItem(str(tmp_path / "img.jpg"), face, np.array([True]))
    generate_samples(tmp_path / "store", 24, [item], [], config, stage, seed=0, detect=detect, progress=False)
    samples = PackedSamples(tmp_path / "store").gather(np.arange(3))
    assert samples["kinds"].tolist() == [POSITIVE, NEGATIVE, PART]
    decoded = apply_box_regression(torch.as_tensor(boxes[[0, 2]]), torch.as_tensor(samples["boxes"][[0, 2]],
                                   dtype=torch.float64), inclusive=True)
    assert decoded.numpy() == pytest.approx(np.repeat(face, 2, axis=0), abs=1e-4)


def test_augmentation_occludes_only_face_crops_and_jitters_every_sample():
    generator = torch.Generator().manual_seed(0)
    images = torch.from_numpy(np.stack([_noise_image(20 + i, 24, 24) for i in range(8)]))
    kinds = torch.tensor([NEGATIVE, POSITIVE, PART, LANDMARK, NEGATIVE, POSITIVE, PART, LANDMARK])
    out = augment_batch(images, kinds, jitter=0.0, occlusion=1.0, generator=generator)
    changed = (out != images.float()).any(dim=3)
    for i, kind in enumerate(kinds.tolist()):
        if kind in (POSITIVE, PART):
            rows, cols = torch.nonzero(changed[i], as_tuple=True)
            height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
            assert 5 <= height <= 13 and 5 <= width <= 13  # 25-50% of 24 px, on the pixel grid
            block = out[i, rows.min():rows.max() + 1, cols.min():cols.max() + 1]
            assert (block == block[0, 0]).all()  # one flat colour
        else:
            assert not changed[i].any()
    jittered = augment_batch(images, kinds, jitter=0.3, occlusion=0.0, generator=generator)
    assert jittered.min() >= 0 and jittered.max() <= 255
    assert (jittered != images.float()).any(dim=(1, 2, 3)).all()

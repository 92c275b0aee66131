"""training.facenet.margin (ArcFace / CosFace heads) and training.facenet.augment (batched photo augmentation)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.facenet.augment import AugmentSettings, augment
from training.facenet.margin import MarginHead

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _unit(rows: int, dim: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


@pytest.mark.parametrize("kind", ["arcface", "cosface"])
def test_margin_head_penalises_only_the_true_class(kind: str) -> None:
    head = MarginHead(8, 5, kind, scale=10.0, margin=0.3)
    embeddings, labels = _unit(6, 8), torch.tensor([0, 1, 2, 3, 4, 0])
    loss, stats = head(embeddings, labels)
    cos = head.cosines(embeddings)
    theta = cos.gather(1, labels[:, None]).squeeze(1).acos()
    expected_target = torch.cos(theta + 0.3) if kind == "arcface" else torch.cos(theta) - 0.3
    logits = (cos * 10.0).scatter(1, labels[:, None], expected_target[:, None] * 10.0)
    assert torch.allclose(loss, F.cross_entropy(logits, labels), atol=1e-5)
    plain = F.cross_entropy(cos * 10.0, labels)
    assert loss > plain, "the margin makes the true class harder, so the loss rises"
    assert 0.0 <= float(stats.train_accuracy) <= 1.0
    assert torch.allclose(stats.mean_target_cos, cos.gather(1, labels[:, None]).mean())


def test_arcface_target_stays_monotonic_past_pi_minus_m() -> None:
    head = MarginHead(2, 2, "arcface", scale=1.0, margin=0.5)
    angles = torch.linspace(0.0, math.pi, 2001)
    penalised = head.margin_cosine(angles.cos())
    assert (penalised[1:] <= penalised[:-1] + 1e-6).all(), "the true class's logit falls as its angle grows"
    inside = angles < math.pi - 0.5
    assert torch.allclose(penalised[inside], (angles[inside] + 0.5).cos(), atol=1e-3)
    assert (penalised <= angles.cos() + 1e-6).all(), "the margin never helps the true class"


@pytest.mark.parametrize("kind", ["arcface", "cosface"])
def test_margin_head_learns_separable_identities(kind: str) -> None:
    torch.manual_seed(0)
    centres = _unit(4, 16, seed=1)
    labels = torch.arange(4).repeat_interleave(16)
    points = F.normalize(centres[labels] + 0.3 * torch.randn(len(labels), 16), dim=1)
    project = torch.nn.Linear(16, 16)
    head = MarginHead(16, 4, kind, scale=16.0, margin=0.2)
    optimizer = torch.optim.SGD([*project.parameters(), *head.parameters()], lr=0.1, momentum=0.9)
    first = None
    for _ in range(60):
        loss, stats = head(F.normalize(project(points), dim=1), labels)
        first = float(loss.detach()) if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < 0.3 * first and float(stats.train_accuracy) == 1.0


def test_margin_head_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown margin loss"):
        MarginHead(4, 2, "sphereface")


def _faces(batch: int = 16, side: int = 40) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    return torch.randint(0, 256, (batch, 3, side, side), dtype=torch.uint8, generator=generator)


def test_default_settings_equal_a_plain_window_and_flip() -> None:
    images = _faces()
    centre = augment(images, 32, AugmentSettings(random_crop=False, flip=False))
    assert torch.equal(centre, images[:, :, 4:36, 4:36].float())
    torch.manual_seed(0)
    windows = augment(images, 32, AugmentSettings())
    for b in range(len(images)):
        candidates = [images[b, :, y:y + 32, x:x + 32].float() for y in range(9) for x in range(9)]
        assert any(torch.equal(windows[b], w) or torch.equal(windows[b], w.flip(-1)) for w in candidates)


def test_affine_path_without_zoom_or_turn_is_the_centre_window() -> None:
    images = _faces()
    tiny = AugmentSettings(random_crop=False, flip=False, scale=1e-9, rotate=1e-9)
    assert tiny.geometric
    out = augment(images, 32, tiny)
    assert (out - images[:, :, 4:36, 4:36].float()).abs().max() < 0.01


def test_rotation_and_zoom_change_the_geometry_within_their_range() -> None:
    image = torch.zeros(1, 3, 41, 41, dtype=torch.uint8)
    image[:, :, 20, :] = 255  # a horizontal line through the centre
    torch.manual_seed(1)
    turned = augment(image.repeat(32, 1, 1, 1), 41, AugmentSettings(random_crop=False, flip=False, rotate=30.0))
    rows_lit = [(t[0] > 100).nonzero()[:, 0] for t in turned]
    spreads = torch.tensor([float(r.max() - r.min()) if len(r) else 0.0 for r in rows_lit])
    assert spreads.max() > 8, "a turned line spans several rows"
    assert spreads.max() <= 41 * math.tan(math.radians(30)) + 3, "never turned past 30 degrees"


def test_photometric_transforms_do_what_they_say() -> None:
    images = _faces(64)
    torch.manual_seed(2)
    grey = augment(images, 32, AugmentSettings(random_crop=False, flip=False, greyscale=1.0))
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    erased = augment(images, 32, AugmentSettings(random_crop=False, flip=False, erase=1.0))
    grey_share = (erased == 127.5).all(dim=1).float().mean(dim=(1, 2))
    assert (grey_share >= 0.015).all() and (grey_share <= 0.25).all(), "each face loses 2-20% of its area"
    large = _faces(8, 96)  # blur sigmas are 0.5-1.5 px at 96 px and scale with the side
    plain = augment(large, 96, AugmentSettings(random_crop=False, flip=False))
    blurred = augment(large, 96, AugmentSettings(random_crop=False, flip=False, blur=1.0))
    low = augment(large, 96, AugmentSettings(random_crop=False, flip=False, low_resolution=1.0))

    def detail(x: torch.Tensor) -> float:  # mean absolute difference of neighbouring pixels
        return float((x[..., 1:] - x[..., :-1]).abs().mean())

    assert detail(blurred) < 0.6 * detail(plain) and detail(low) < 0.6 * detail(plain)
    for out in (grey, erased, blurred, low):
        assert out.shape[1:] in ((3, 32, 32), (3, 96, 96)) and out.min() >= 0 and out.max() <= 255


def test_probabilities_pick_about_that_share_of_faces() -> None:
    images = _faces(400, 32)
    torch.manual_seed(4)
    out = augment(images, 32, AugmentSettings(random_crop=False, flip=False, greyscale=0.25))
    share = float((out[:, 0] == out[:, 1]).all(dim=(1, 2)).float().mean())
    assert 0.17 < share < 0.33


def test_augment_refuses_crops_smaller_than_the_input() -> None:
    with pytest.raises(ValueError, match="cannot give"):
        augment(_faces(2, 20), 32)

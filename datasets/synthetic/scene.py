"""Synthetic photos built around ``FaceModel``: cluttered backgrounds, face-like distractors, occluders,
camera effects, and the three kinds of picture the synthetic set holds: crowd scenes (WIDER-style, 0 to
many faces with honest attributes), one-person portraits (identity and LFW-style photos) and small
landmark crops. Every function takes its own ``numpy.random.Generator``, so results depend only on it.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from datasets.synthetic.looks import HAIR_COLOURS, SKIN_TONES, FaceLook, sample_variation
from datasets.synthetic.render import FaceModel, FacePlacement, composite_face

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


@dataclass
class SceneFace:
    """One face in a picture: clipped box, landmarks, WIDER attribute codes, and its identity key."""

    box: np.ndarray  # float32 [4] x1, y1, x2, y2, inside the image
    landmarks: np.ndarray  # float32 [5, 2]
    attributes: tuple[int, int, int, int, int, int]  # blur, expression, illumination, invalid, occlusion, pose
    identity: int
    height: float  # drawn face height in pixels (hairline to chin, before roll)


@dataclass
class Camera:
    """Whole-picture effects: exposure, colour cast, light falloff, blur, sensor noise, JPEG quality."""

    exposure: float
    cast: tuple[float, float, float]
    ramp: tuple[float, float, float]  # light falloff across the picture: strength, direction cos, sin
    gamma: float
    blur: float
    noise: float
    quality: int

    def gain_at(self, x: float, y: float, width: int, height: int) -> float:
        """Brightness factor at a point (exposure times the light falloff)."""
        strength, dx, dy = self.ramp
        u = ((x / width - 0.5) * dx + (y / height - 0.5) * dy) * 2.0
        return self.exposure * (1.0 + strength * u)


def sample_camera(rng: np.random.Generator, *, blur_chance: float, noise_max: float, quality: tuple[int, int],
                  exposure: tuple[float, float] = (0.4, 1.7)) -> Camera:
    """Draw a camera: mostly good exposure (within ``exposure``), sometimes dark or bright, blurred or noisy."""
    angle = rng.uniform(0, 2 * math.pi)
    return Camera(
        exposure=float(np.clip(math.exp(rng.normal(0.0, 0.28)), *exposure)),
        cast=tuple(float(v) for v in 1.0 + rng.normal(0.0, 0.05, 3)),
        ramp=(float(rng.uniform(0.0, 0.35)), math.cos(angle), math.sin(angle)),
        gamma=float(rng.uniform(0.85, 1.2)),
        blur=float(rng.uniform(0.5, 1.8)) if rng.uniform() < blur_chance else 0.0,
        noise=float(rng.uniform(0.0, noise_max)) if rng.uniform() < 0.6 else 0.0,
        quality=int(rng.integers(quality[0], quality[1] + 1)),
    )


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    c = rng.integers(0, 256, 3)
    return int(c[0]), int(c[1]), int(c[2])


def _texture(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A w x h RGB texture: stripes, checks or smooth noise in two colours."""
    kind = rng.integers(3)
    c0, c1 = np.array(_colour(rng), np.float32), np.array(_colour(rng), np.float32)
    if kind == 0:
        angle, period = rng.uniform(0, math.pi), rng.uniform(4, 24)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        t = ((xs * math.cos(angle) + ys * math.sin(angle)) / period % 1.0 < 0.5).astype(np.float32)
    elif kind == 1:
        cell = int(rng.integers(4, 20))
        ys, xs = np.mgrid[0:h, 0:w]
        t = (((xs // cell) + (ys // cell)) % 2).astype(np.float32)
    else:
        small = rng.uniform(0, 1, (max(2, h // 12), max(2, w // 12))).astype(np.float32)
        t = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    return c0 + (c1 - c0) * t[:, :, None]


def background(rng: np.random.Generator, width: int, height: int, shapes: int) -> np.ndarray:
    """A float32 RGB background: a gradient, ``shapes`` random shapes, lines, textures and letters."""
    c0, c1 = np.array(_colour(rng), np.float32), np.array(_colour(rng), np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    xs = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :] * math.cos(angle)
    ys = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None] * math.sin(angle)
    t = (xs + ys + 0.5).clip(0, 1)
    image = np.ascontiguousarray((c0 + (c1 - c0) * t[:, :, None]).astype(np.uint8))
    scale = min(width, height)
    for _ in range(shapes):
        kind = rng.integers(8)
        colour = _colour(rng)
        x, y = int(rng.integers(width)), int(rng.integers(height))
        size = int(scale * rng.uniform(0.03, 0.4))
        if kind == 0:
            cv2.rectangle(image, (x, y), (x + size, y + int(size * rng.uniform(0.3, 2))), colour,
                          -1 if rng.uniform() < 0.7 else int(rng.integers(1, 6)))
        elif kind == 1:
            cv2.circle(image, (x, y), max(2, size // 2), colour, -1 if rng.uniform() < 0.7 else 2, cv2.LINE_AA)
        elif kind == 2:
            cv2.ellipse(image, (x, y), (max(2, size // 2), max(2, int(size * rng.uniform(0.1, 0.5)))),
                        float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
        elif kind == 3:
            pts = (np.array([x, y]) + rng.normal(0, size / 2, (int(rng.integers(3, 7)), 2))).astype(np.int32)
            cv2.fillPoly(image, [pts], colour, cv2.LINE_AA)
        elif kind == 4:
            for _ in range(int(rng.integers(1, 6))):
                end = (int(rng.integers(width)), int(rng.integers(height)))
                cv2.line(image, (x, y), end, colour, int(rng.integers(1, 5)), cv2.LINE_AA)
        elif kind in (5, 6):
            w, h = max(4, size), max(4, int(size * rng.uniform(0.4, 1.6)))
            x1, y1 = min(x + w, width), min(y + h, height)
            if x1 > x and y1 > y:
                image[y:y1, x:x1] = _texture(rng, x1 - x, y1 - y).astype(np.uint8)
        else:
            text = "".join(_LETTERS[i] for i in rng.integers(len(_LETTERS), size=int(rng.integers(2, 8))))
            cv2.putText(image, text, (x, y), int(rng.integers(0, 8)), rng.uniform(0.4, 2.0), colour,
                        int(rng.integers(1, 4)), cv2.LINE_AA)
    if rng.uniform() < 0.4:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.8, 3.0))
    return image.astype(np.float32)


def add_distractors(rng: np.random.Generator, image: np.ndarray, count: int, size_range: tuple[float, float]) -> None:
    """Face-like things without faces: skin-coloured ovals and hands, heads seen from behind, balls."""
    height, width = image.shape[:2]
    for _ in range(count):
        size = math.exp(rng.uniform(math.log(size_range[0]), math.log(size_range[1])))
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        kind = rng.integers(3)
        layer = np.zeros((height, width), np.uint8)
        if kind == 2:  # back of a head: hair oval on shoulders
            colour = np.array(HAIR_COLOURS[int(rng.integers(len(HAIR_COLOURS)))], np.float32)
            cv2.ellipse(layer, (int(cx), int(cy + size * 0.9)), (int(size * 0.9), int(size * 0.45)), 0, 180, 360,
                        255, -1, cv2.LINE_AA)
            _blend(image, layer, np.array(_colour(rng), np.float32))
            layer[:] = 0
            cv2.ellipse(layer, (int(cx), int(cy)), (max(2, int(size * 0.42)), max(2, int(size * 0.55))), 0, 0, 360,
                        255, -1, cv2.LINE_AA)
        else:
            colour = np.array(SKIN_TONES[int(rng.integers(len(SKIN_TONES)))], np.float32) * rng.uniform(0.8, 1.1)
            blobs = 1 if kind == 0 else int(rng.integers(2, 5))
            for _ in range(blobs):
                ox, oy = rng.normal(0, size * 0.25, 2) if blobs > 1 else (0.0, 0.0)
                axes = (max(2, int(size * rng.uniform(0.3, 0.45))), max(2, int(size * rng.uniform(0.35, 0.6))))
                cv2.ellipse(layer, (int(cx + ox), int(cy + oy)), axes, float(rng.uniform(0, 180)), 0, 360, 255, -1,
                            cv2.LINE_AA)
        _blend(image, layer, colour, shade=True)


def _blend(image: np.ndarray, layer: np.ndarray, colour: np.ndarray, shade: bool = False) -> None:
    """Paint ``colour`` where ``layer`` (uint8 coverage) is set; ``shade`` adds a soft top-left light."""
    x0, y0, w, h = cv2.boundingRect(layer)
    if w == 0 or h == 0:
        return
    x1, y1 = x0 + w, y0 + h
    cover = layer[y0:y1, x0:x1].astype(np.float32)[:, :, None] / 255.0
    fill = np.broadcast_to(colour, (y1 - y0, x1 - x0, 3)).astype(np.float32)
    if shade:
        gy = np.linspace(1.15, 0.75, y1 - y0, dtype=np.float32)[:, None, None]
        gx = np.linspace(1.05, 0.9, x1 - x0, dtype=np.float32)[None, :, None]
        fill = fill * gy * gx
    window = image[y0:y1, x0:x1]
    window += (fill - window) * cover


def _occluder(rng: np.random.Generator, image: np.ndarray, owner: np.ndarray, box: np.ndarray,
              others: list[np.ndarray]) -> None:
    """Cover part of a face box with an object or a hand, marking those pixels as not-face in ``owner``.

    Nothing is drawn when the object would hide more than a quarter of another face's box."""
    height, width = image.shape[:2]
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    cover = rng.uniform(0.25, 0.7)
    side = rng.integers(4)
    layer = np.zeros((height, width), np.uint8)
    if side == 0:
        rect = (x1 - w * 0.2, y2 - h * cover, x2 + w * 0.2, y2 + h * 0.5)
    elif side == 1:
        rect = (x1 - w * 0.3, y1 - h * 0.2, x1 + w * cover, y2 + h * 0.2)
    elif side == 2:
        rect = (x2 - w * cover, y1 - h * 0.2, x2 + w * 0.3, y2 + h * 0.2)
    else:
        rect = (x1 - w * 0.2, y1 - h * 0.4, x2 + w * 0.2, y1 + h * cover * 0.8)
    if any(_covered(other, [np.asarray(rect)]) > 0.25 for other in others):
        return
    pts = np.array([[rect[0], rect[1]], [rect[2], rect[1]], [rect[2], rect[3]], [rect[0], rect[3]]])
    if rng.uniform() < 0.5:  # a hand / arm: rounded skin shape
        centre = pts.mean(axis=0)
        axes = (max(1, int((rect[2] - rect[0]) / 2)), max(1, int((rect[3] - rect[1]) / 2)))
        cv2.ellipse(layer, (int(centre[0]), int(centre[1])), axes, 0, 0, 360, 255, -1, cv2.LINE_AA)
        colour = np.array(SKIN_TONES[int(rng.integers(len(SKIN_TONES)))], np.float32)
    else:
        cv2.fillPoly(layer, [np.round(pts).astype(np.int32)], 255, cv2.LINE_AA)
        colour = np.array(_colour(rng), np.float32)
    _blend(image, layer, colour, shade=True)
    owner[layer > 127] = -1


def finish(rng: np.random.Generator, image: np.ndarray, camera: Camera) -> np.ndarray:
    """Apply the camera (light falloff, exposure, cast, gamma, blur, noise) and return uint8 RGB."""
    height, width = image.shape[:2]
    strength, dx, dy = camera.ramp
    xs = (np.linspace(-1.0, 1.0, width, dtype=np.float32) * dx)[None, :, None]
    ys = (np.linspace(-1.0, 1.0, height, dtype=np.float32) * dy)[:, None, None]
    cast = np.asarray(camera.cast, np.float32) * np.float32(camera.exposure)
    image = image * ((1.0 + strength * (xs + ys)) * cast)
    pixels = np.clip(image, 0, 255).astype(np.uint8)
    lut = np.clip(255.0 * (np.arange(256) / 255.0) ** camera.gamma + 0.5, 0, 255).astype(np.uint8)
    pixels = cv2.LUT(pixels, lut)
    if camera.blur > 0:
        pixels = cv2.GaussianBlur(pixels, (0, 0), camera.blur)
    if camera.noise > 0:
        noise = rng.standard_normal(pixels.shape, dtype=np.float32) * np.float32(camera.noise)
        pixels = np.clip(pixels + noise + 0.5, 0, 255).astype(np.uint8)
    return pixels


def _attributes(model: FaceModel, height: float, face_blur: float, camera: Camera, gain: float,
                visible: float) -> tuple[int, int, int, int, int, int]:
    """WIDER attribute codes from what was actually applied to this face."""
    V = model.var
    sigma = math.hypot(face_blur, camera.blur)
    relative = sigma / height
    blur = 0 if sigma < 0.6 or relative < 0.012 else (2 if relative > 0.04 else 1)
    expression = int(V.mouth_open > 0.6 or (V.smile > 0.85 and V.mouth_open > 0.3) or abs(V.brow_raise) > 0.85)
    illumination = int(gain < 0.55 or gain > 1.5 or V.light_strength > 0.9)
    occlusion = 0 if visible > 0.9 else (1 if visible > 0.6 else 2)
    pose = int(abs(V.roll) > 30 or abs(V.yaw) > 0.4)
    return blur, expression, illumination, 0, occlusion, pose


def _covered(box: np.ndarray, others: list[np.ndarray]) -> float:
    """The largest fraction of ``box`` that any one of ``others`` covers."""
    if not others:
        return 0.0
    o = np.asarray(others)
    ix = np.clip(np.minimum(box[2], o[:, 2]) - np.maximum(box[0], o[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], o[:, 3]) - np.maximum(box[1], o[:, 1]), 0, None)
    return float((ix * iy).max() / ((box[2] - box[0]) * (box[3] - box[1])))


def _footprint(box: np.ndarray) -> np.ndarray:
    """The area a face's hair, neck and shoulders may cover around its box."""
    w, h = box[2] - box[0], box[3] - box[1]
    return np.array([box[0] - 0.6 * w, box[1] - 0.35 * h, box[2] + 0.6 * w, box[3] + 1.1 * h])


def _fits(placement: FacePlacement, width: int, height: int, allow_cut: bool) -> bool:
    """Landmarks inside the picture, and the box inside it (or, when cutting is allowed, 65% of it)."""
    lm, box = placement.landmarks, placement.box
    if lm[:, 0].min() < 1 or lm[:, 1].min() < 1 or lm[:, 0].max() > width - 1 or lm[:, 1].max() > height - 1:
        return False
    clipped = np.array([max(box[0], 0), max(box[1], 0), min(box[2], width), min(box[3], height)])
    inside = (clipped[2] - clipped[0]) * (clipped[3] - clipped[1]) / ((box[2] - box[0]) * (box[3] - box[1]))
    return inside > (0.65 if allow_cut else 0.999)


@dataclass(frozen=True)
class SceneSettings:
    """Crowd-scene knobs: face count and size range, empty-scene share, clutter, effect chances."""

    max_faces: int = 8
    empty_fraction: float = 0.08
    min_face: float = 12.0
    max_face: float = 250.0
    max_roll: float = 40.0
    shapes: tuple[int, int] = (15, 45)
    distractors: tuple[int, int] = (0, 4)
    face_blur_chance: float = 0.15
    occluder_chance: float = 0.12
    cut_chance: float = 0.15
    jpeg_quality: tuple[int, int] = (72, 95)


def render_scene(rng: np.random.Generator, width: int, height: int, settings: SceneSettings,
                 look_of: Callable[[int], FaceLook], identities: int) -> tuple[np.ndarray, list[SceneFace], int]:
    """A crowd scene: uint8 RGB image, its faces (drawn from ``identities`` looks), and its JPEG quality."""
    camera = sample_camera(rng, blur_chance=0.2, noise_max=9.0, quality=settings.jpeg_quality)
    image = background(rng, width, height, int(rng.integers(*settings.shapes)))
    lo, hi = settings.min_face, min(settings.max_face, 0.8 * height)
    add_distractors(rng, image, int(rng.integers(settings.distractors[0], settings.distractors[1] + 1)), (lo, hi * 0.7))
    if rng.uniform() < settings.empty_fraction:
        count = 0
    else:
        weights = 1.0 / np.arange(1, settings.max_faces + 1) ** 0.6
        count = int(rng.choice(np.arange(1, settings.max_faces + 1), p=weights / weights.sum()))
    sizes = sorted((math.exp(rng.uniform(math.log(lo), math.log(hi))) for _ in range(count)), reverse=True)
    placed: list[tuple[FaceModel, FacePlacement, int, bool]] = []
    footprints: list[np.ndarray] = []
    for size in sizes:
        identity = int(rng.integers(identities))
        model = FaceModel(look_of(identity), sample_variation(rng, max_roll=settings.max_roll))
        allow_cut = rng.uniform() < settings.cut_chance
        while size >= lo:
            for _ in range(20):
                centre = (rng.uniform(0, width), rng.uniform(0, height))
                placement = model.place(size, centre)
                # smaller faces are drawn first, behind the larger ones already placed
                if _fits(placement, width, height, allow_cut) and _covered(placement.box, footprints) < 0.25:
                    break
            else:
                size *= 0.75
                continue
            placed.append((model, placement, identity, rng.uniform() < settings.face_blur_chance))
            footprints.append(_footprint(placement.box))
            break
    owner = np.full((height, width), -1, np.int32)
    order = sorted(range(len(placed)), key=lambda i: placed[i][1].area)  # far (small) faces first
    blurs = {}
    for i in order:
        model, placement, _, blurred = placed[i]
        face_height = float(np.hypot(*placement.matrix[:, 0]))
        blurs[i] = rng.uniform(0.02, 0.06) * face_height if blurred else 0.0
        composite_face(image, model, placement, blur=blurs[i], owner=owner, owner_id=i)
    for i in order:
        if rng.uniform() < settings.occluder_chance:
            others = [placed[j][1].box for j in order if j != i]
            _occluder(rng, image, owner, placed[i][1].box, others)
    faces = []
    for i, (model, placement, identity, _) in enumerate(placed):
        face_height = float(np.hypot(*placement.matrix[:, 0]))
        visible = float(np.count_nonzero(owner == i)) / max(placement.area, 1.0)
        centre = (placement.box[:2] + placement.box[2:]) / 2
        gain = camera.gain_at(float(centre[0]), float(centre[1]), width, height)
        box = np.array([max(placement.box[0], 0.0), max(placement.box[1], 0.0), min(placement.box[2], width),
                        min(placement.box[3], height)], np.float32)
        faces.append(SceneFace(box, placement.landmarks, _attributes(model, face_height, blurs[i], camera, gain,
                                                                     min(visible, 1.0)), identity, face_height))
    return finish(rng, image, camera), faces, camera.quality


def render_portrait(rng: np.random.Generator, look: FaceLook, width: int, height: int, *,
                    face_height: tuple[float, float], centred: bool, max_roll: float, shapes: tuple[int, int],
                    jpeg_quality: tuple[int, int] = (75, 95)) -> tuple[np.ndarray, SceneFace, int]:
    """A photo of one person: uint8 RGB image, the face, and its JPEG quality.

    ``face_height`` is a fraction range of the image height; ``centred`` keeps the face near the middle
    (LFW and landmark crops), otherwise it may sit anywhere with its box inside the picture (VGGFace2).
    """
    camera = sample_camera(rng, blur_chance=0.1, noise_max=6.0, quality=jpeg_quality, exposure=(0.6, 1.3))
    image = background(rng, width, height, int(rng.integers(*shapes)))
    model = FaceModel(look, sample_variation(rng, max_roll=max_roll))
    size = rng.uniform(*face_height) * height
    for _ in range(50):
        if centred:
            centre = (width / 2 + rng.normal(0, 0.025 * width), height * 0.5 + rng.normal(0, 0.025 * height))
        else:
            centre = (rng.uniform(0.2, 0.8) * width, rng.uniform(0.25, 0.7) * height)
        placement = model.place(size, centre)
        if _fits(placement, width, height, allow_cut=False):
            break
        size *= 0.97
    else:
        raise RuntimeError(f"no place for a {size:.0f} px face in a {width}x{height} portrait")
    face_blur = rng.uniform(0.01, 0.03) * size if rng.uniform() < 0.1 else 0.0
    composite_face(image, model, placement, blur=face_blur)
    centre_xy = (placement.box[:2] + placement.box[2:]) / 2
    gain = camera.gain_at(float(centre_xy[0]), float(centre_xy[1]), width, height)
    face = SceneFace(placement.box.copy(), placement.landmarks,
                     _attributes(model, size, face_blur, camera, gain, 1.0), -1, size)
    return finish(rng, image, camera), face, camera.quality

"""Drawing one synthetic face: head, hair, eyes, brows, nose, mouth, accessories and shading, in place.

``FaceModel(look, variation)`` holds the face in face units (box = hairline to chin, 1 tall, centred on
the origin). ``place`` gives the image box and five landmarks for a height, centre and roll without
drawing; ``composite`` draws the face there. Features on the face surface are projected through a
shallow ellipsoid so that yaw and pitch shift them (the nose tip most), and landmarks are computed from
the same points that are drawn, through the same affine map the patch is warped with.
Annotation coordinates are continuous pixel coordinates (pixel ``i`` spans ``[i, i + 1)``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from datasets.synthetic.looks import Colour, FaceLook, FaceVariation

PATCH_LEFT, PATCH_RIGHT, PATCH_TOP, PATCH_BOTTOM = -1.05, 1.05, -1.1, 1.45  # drawing area, face units
MIN_DRAW_SCALE = 40.0  # faces smaller than this are drawn at this size, then reduced (anti-aliasing)
_SHIFT = 4  # cv2 sub-pixel bits
_FIX = float(1 << _SHIFT)
_SCLERA = (236.0, 232.0, 226.0)
_DARK = (28.0, 20.0, 18.0)


def _scale(colour: Colour, factor: float) -> Colour:
    return (colour[0] * factor, colour[1] * factor, colour[2] * factor)


def _mix(a: Colour, b: Colour, t: float) -> Colour:
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t)


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 24, power: float = 2.0) -> np.ndarray:
    """Points of an axis-aligned (super)ellipse, face units."""
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    e = 2.0 / power
    return np.stack([cx + rx * np.sign(c) * np.abs(c) ** e, cy + ry * np.sign(s) * np.abs(s) ** e], axis=1)


def polygon_area(points: np.ndarray) -> float:
    """Area of a simple polygon given as [N, 2] points (shoelace formula)."""
    x, y = points[:, 0], points[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


class _Mask:
    """Coverage (0..1) of one shape over a window of the patch starting at (x0, y0)."""

    __slots__ = ("x0", "y0", "a")

    def __init__(self, x0: int, y0: int, a: np.ndarray) -> None:
        self.x0, self.y0, self.a = x0, y0, a

    def on(self, other: _Mask) -> np.ndarray:
        """This mask's coverage over ``other``'s window (zero outside this mask's window)."""
        out = np.zeros_like(other.a)
        h, w = self.a.shape
        oh, ow = other.a.shape
        ix0, iy0 = max(self.x0, other.x0), max(self.y0, other.y0)
        ix1, iy1 = min(self.x0 + w, other.x0 + ow), min(self.y0 + h, other.y0 + oh)
        if ix1 > ix0 and iy1 > iy0:
            out[iy0 - other.y0:iy1 - other.y0, ix0 - other.x0:ix1 - other.x0] = \
                self.a[iy0 - self.y0:iy1 - self.y0, ix0 - self.x0:ix1 - self.x0]
        return out

    def union(self, other: _Mask | None) -> _Mask:
        """The pixel-wise maximum of two masks over a window holding both."""
        if other is None:
            return self
        x0, y0 = min(self.x0, other.x0), min(self.y0, other.y0)
        x1 = max(self.x0 + self.a.shape[1], other.x0 + other.a.shape[1])
        y1 = max(self.y0 + self.a.shape[0], other.y0 + other.a.shape[0])
        out = _Mask(x0, y0, np.zeros((y1 - y0, x1 - x0), np.float32))
        out.a = np.maximum(self.on(out), other.on(out))
        return out


class _Patch:
    """An RGB + alpha drawing surface in face units at ``scale`` pixels per unit (cv2 pixel centres)."""

    def __init__(self, scale: float) -> None:
        self.scale = scale
        self.w = int(math.ceil((PATCH_RIGHT - PATCH_LEFT) * scale)) + 1
        self.h = int(math.ceil((PATCH_BOTTOM - PATCH_TOP) * scale)) + 1
        self.rgb = np.zeros((self.h, self.w, 3), np.float32)
        self.alpha = np.zeros((self.h, self.w), np.float32)

    def pixels(self, points: np.ndarray) -> np.ndarray:
        return np.stack([(points[:, 0] - PATCH_LEFT) * self.scale, (points[:, 1] - PATCH_TOP) * self.scale], axis=1)

    def mask(self, polygons: list[np.ndarray], *, thickness: float = 0.0, closed: bool = True,
             soft: float = 0.0) -> _Mask | None:
        """Rasterise filled polygons (or polylines of ``thickness`` face units), optionally blurred by ``soft``."""
        pix = [self.pixels(p) for p in polygons]
        allpts = np.concatenate(pix)
        width_px = thickness * self.scale
        pad = width_px / 2 + 3 * soft * self.scale + 2
        x0 = max(int(math.floor(allpts[:, 0].min() - pad)), 0)
        y0 = max(int(math.floor(allpts[:, 1].min() - pad)), 0)
        x1 = min(int(math.ceil(allpts[:, 0].max() + pad)) + 1, self.w)
        y1 = min(int(math.ceil(allpts[:, 1].max() + pad)) + 1, self.h)
        if x1 <= x0 or y1 <= y0:
            return None
        canvas = np.zeros((y1 - y0, x1 - x0), np.uint8)
        fixed = [np.round((p - (x0, y0)) * _FIX).astype(np.int32) for p in pix]
        opacity = 1.0
        if thickness > 0:
            line = max(1, int(round(width_px)))
            opacity = min(1.0, width_px)  # hair-thin lines are drawn 1 px wide and fainter
            cv2.polylines(canvas, fixed, closed, 255, line, cv2.LINE_AA, _SHIFT)
        else:
            cv2.fillPoly(canvas, fixed, 255, cv2.LINE_AA, _SHIFT)
        cover = canvas.astype(np.float32) * (opacity / 255.0)
        if soft > 0:
            cover = cv2.GaussianBlur(cover, (0, 0), max(soft * self.scale, 0.3))
        return _Mask(x0, y0, cover)

    def paint(self, mask: _Mask | None, colour: Colour, opacity: float = 1.0, *, clip: _Mask | None = None,
              opaque: bool = False) -> None:
        """Blend ``colour`` where ``mask`` covers (times ``opacity``, limited to ``clip``); ``opaque`` adds alpha."""
        if mask is None:
            return
        cover = mask.a * opacity if opacity != 1.0 else mask.a
        if clip is not None:
            cover = cover * clip.on(mask)
        h, w = cover.shape
        window = (slice(mask.y0, mask.y0 + h), slice(mask.x0, mask.x0 + w))
        region = self.rgb[window]
        region += (np.asarray(colour, np.float32) - region) * cover[:, :, None]
        if opaque:
            np.maximum(self.alpha[window], cover, out=self.alpha[window])


@dataclass
class FacePlacement:
    """Where a face lands in an image: the canonical-to-image map, its box, landmarks and face area."""

    matrix: np.ndarray  # float64 [2, 3], face units -> cv2 pixel coordinates (pixel centres at integers)
    box: np.ndarray  # float32 [4] x1, y1, x2, y2 (continuous pixel coordinates, not clipped)
    landmarks: np.ndarray  # float32 [5, 2]: left eye, right eye, nose tip, left / right mouth corner
    area: float  # face region area in pixels (for occlusion fractions)


class FaceModel:
    """One face (look + variation) in face units; places its annotations and draws it into images."""

    def __init__(self, look: FaceLook, variation: FaceVariation) -> None:
        self.look, self.var = look, variation
        a = look.half_width
        self.a = a
        self.bu = 0.5 + look.skull_height
        self.c = 0.8 * a  # depth of the face surface
        self.bs = 0.62  # vertical semi-axis of the face surface
        self.cy, self.sy = math.cos(variation.yaw), math.sin(variation.yaw)
        self.cp, self.sp = math.cos(variation.pitch), math.sin(variation.pitch)
        self.sw = math.sqrt(self.cy ** 2 + (self.c / a) ** 2 * self.sy ** 2)
        self.sh = math.sqrt(self.cp ** 2 + (self.c / 0.55) ** 2 * self.sp ** 2)
        self.eye_x = look.eye_spacing * a
        self.nose_y = look.eye_y + look.nose_length
        self.mouth_y = min(self.nose_y + look.mouth_gap, 0.34)
        self.mouth_hw = look.mouth_width * a * (1 + 0.12 * variation.smile - 0.12 * variation.mouth_open)
        self.corner_y = self.mouth_y - 0.035 * variation.smile
        self.iris_offset = (variation.gaze[0] * look.eye_width * 0.22, variation.gaze[1] * look.eye_width * 0.08)
        self.x_hairline = self._outline_x(-0.5)
        self.region = self._region()
        self.landmarks = np.concatenate([
            self.surface(np.array([[-self.eye_x + self.iris_offset[0], look.eye_y + self.iris_offset[1]],
                                   [self.eye_x + self.iris_offset[0], look.eye_y + self.iris_offset[1]]]), -0.01),
            self.surface(np.array([[0.0, self.nose_y]]), 0.13),
            self.surface(np.array([[-self.mouth_hw, self.corner_y], [self.mouth_hw, self.corner_y]]), 0.03),
        ])

    # --- geometry ---------------------------------------------------------------------------------------
    def surface(self, points: np.ndarray, dz: float = 0.0) -> np.ndarray:
        """Project points on the face surface (raised by ``dz``) through yaw and pitch."""
        x, y = points[:, 0], points[:, 1]
        q = np.clip(1.0 - (x / self.a) ** 2 - (y / self.bs) ** 2, 0.0, 1.0)
        z = self.c * np.sqrt(q) + dz
        x1 = x * self.cy + z * self.sy
        z1 = -x * self.sy + z * self.cy
        y1 = y * self.cp + z1 * self.sp
        return np.stack([x1, y1], axis=1)

    def outline(self, points: np.ndarray) -> np.ndarray:
        """Map silhouette points (head outline, hair volume) through yaw and pitch: widths change, the chin turns."""
        x, y = points[:, 0], points[:, 1]
        chin = np.clip(y / 0.5, 0.0, 1.0) ** 2
        return np.stack([x * self.sw + self.sy * self.c * 0.5 * chin, y * self.sh + self.sp * self.c * 0.3 * chin],
                        axis=1)

    def _outline_points(self, t: np.ndarray, grow: float = 0.0) -> np.ndarray:
        """Head outline at angles ``t`` (0 = right, pi/2 = chin), optionally grown outward by ``grow``."""
        L = self.look
        c, s = np.cos(t), np.sin(t)
        upper = s < 0
        power = np.where(upper, L.upper_power, L.jaw_power)
        e = 2.0 / power
        x = np.sign(c) * np.abs(c) ** e
        y_unit = np.abs(s) ** e
        y = np.where(upper, -(self.bu + grow) * y_unit, (0.5 + grow) * y_unit)
        taper = np.where(upper, 1.0, 1.0 - L.chin_taper * y_unit ** 2)
        return np.stack([(self.a + grow) * x * taper, y], axis=1)

    def _angle_at(self, y: float) -> float:
        """Outline angle on the right side of the head where the upper outline reaches height ``y`` (< 0)."""
        return -math.asin(min(1.0, (abs(y) / self.bu) ** (self.look.upper_power / 2.0)))

    def _outline_x(self, y: float) -> float:
        """Half width of the head outline at height ``y`` (upper half)."""
        return float(self._outline_points(np.array([self._angle_at(y)]))[0, 0])

    def _region(self) -> np.ndarray:
        """The face region (hairline to chin) as a polygon, after yaw and pitch."""
        t0 = self._angle_at(-0.5)
        return self.outline(self._outline_points(np.linspace(t0, math.pi - t0, 64)))

    def place(self, height: float, centre: tuple[float, float], roll: float | None = None) -> FacePlacement:
        """Box, landmarks and face area of this face drawn ``height`` px tall with its box centre at ``centre``."""
        roll = self.var.roll if roll is None else roll
        r = math.radians(roll)
        cos, sin = math.cos(r) * height, math.sin(r) * height
        matrix = np.array([[cos, -sin, centre[0] - 0.5], [sin, cos, centre[1] - 0.5]], np.float64)
        region = _apply(matrix, self.region) + 0.5
        landmarks = _apply(matrix, self.landmarks) + 0.5
        both = np.concatenate([region, landmarks])
        box = np.array([*both.min(axis=0), *both.max(axis=0)], np.float32)
        return FacePlacement(matrix, box, landmarks.astype(np.float32), polygon_area(region))

    # --- drawing ----------------------------------------------------------------------------------------
    def draw(self, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draw the face at ``scale`` px per unit: premultiplied RGB, alpha, and the face-region mask."""
        patch = _Patch(scale)
        L = self.look
        skin = L.skin
        self._draw_shirt(patch)
        back = self._draw_back_hair(patch)
        if back is not None:
            self._draw_strands(patch, back, behind=True)
        self._draw_neck(patch)
        self._draw_ears(patch)
        head = patch.mask([self.outline(self._outline_points(np.linspace(0, 2 * math.pi, 96, endpoint=False)))])
        patch.paint(head, skin, opaque=True)
        rim = self.outline(self._outline_points(np.linspace(0, 2 * math.pi, 48, endpoint=False), grow=-0.01))
        patch.paint(patch.mask([rim], thickness=0.05, soft=0.025), _scale(skin, 0.6), 0.45, clip=head)
        self._draw_face_shading(patch)
        self._draw_nose(patch)
        for side in (-1, 1):
            self._draw_eye(patch, side)
            self._draw_brow(patch, side)
        self._draw_facial_hair(patch)
        self._draw_mouth(patch)
        self._draw_moustache(patch)
        for x, y, r in L.moles:
            patch.paint(patch.mask([self.surface(_ellipse(x, y, r, r, 12))]), _scale(skin, 0.45), 0.85)
        front = self._draw_front_hair(patch)
        if front is not None:
            self._draw_strands(patch, front, behind=False)
        self._draw_glasses(patch)
        self._shade(patch)
        region = np.zeros((patch.h, patch.w), np.uint8)
        cv2.fillPoly(region, [np.round(patch.pixels(self.region) * _FIX).astype(np.int32)], 255, cv2.LINE_AA, _SHIFT)
        rgb = patch.rgb * patch.alpha[:, :, None]
        return rgb, patch.alpha, region.astype(np.float32) * (1.0 / 255.0)

    def _draw_shirt(self, patch: _Patch) -> None:
        a = self.a
        w = a * 2.4
        pts = np.array([[-0.62 * a, 0.74], [-w * 0.75, 0.86], [-w, 1.02], [-w * 1.05, 1.5], [w * 1.05, 1.5],
                        [w, 1.02], [w * 0.75, 0.86], [0.62 * a, 0.74]])
        patch.paint(patch.mask([self.outline(pts)]), self.var.shirt, opaque=True)
        collar = np.array([[-0.6 * a, 0.75], [0.0, 0.98], [0.6 * a, 0.75]])
        patch.paint(patch.mask([self.outline(collar)], thickness=0.025, closed=False), _scale(self.var.shirt, 0.7))

    def _draw_neck(self, patch: _Patch) -> None:
        a, skin = self.a, self.look.skin
        pts = np.array([[-0.6 * a, 0.2], [0.6 * a, 0.2], [0.66 * a, 0.8], [0.0, 0.94], [-0.66 * a, 0.8]])
        patch.paint(patch.mask([self.outline(pts)]), _scale(skin, 0.9), opaque=True)
        shadow = self.outline(_ellipse(0.0, 0.5, 0.6 * a, 0.16, 24))
        patch.paint(patch.mask([shadow], soft=0.04), _scale(skin, 0.55), 0.7)

    def _draw_ears(self, patch: _Patch) -> None:
        L = self.look
        y0, y1 = L.eye_y - 0.02, self.nose_y + 0.01
        cy, ry, rx = (y0 + y1) / 2, (y1 - y0) / 2 * L.ear_size, 0.05 * L.ear_size
        for side in (-1, 1):
            edge = self._outline_x(min(cy, -0.01)) if cy < 0 else self.a
            cx = side * (edge + rx * 0.55)
            # ears sit behind the face plane (z < 0): yaw moves both against the turn, which tucks the
            # ear on the turning side behind the cheek and brings the other one out
            shift = -self.sy * 0.1
            outer = self.outline(_ellipse(cx, cy, rx, ry, 20)) + (shift, 0.0)
            patch.paint(patch.mask([outer]), _scale(L.skin, 0.93), opaque=True)
            inner = self.outline(_ellipse(cx + side * 0.008, cy, rx * 0.55, ry * 0.7, 16)) + (shift, 0.0)
            patch.paint(patch.mask([inner[: len(inner) // 2 + 3]], thickness=0.012, closed=False),
                        _scale(L.skin, 0.62), 0.8)

    def _draw_face_shading(self, patch: _Patch) -> None:
        L = self.look
        skin = L.skin
        for side in (-1, 1):
            socket = self.surface(_ellipse(side * self.eye_x, L.eye_y - 0.01, L.eye_width * 0.75, 0.06, 20))
            patch.paint(patch.mask([socket], soft=0.02), _scale(skin, 0.72), 0.35)
            cheek = self.surface(_ellipse(side * self.eye_x * 1.05, self.nose_y + 0.01, 0.07, 0.05, 16))
            patch.paint(patch.mask([cheek], soft=0.03), _mix(skin, (214, 96, 104), 0.6), L.blush)
        if self.var.smile > 0.3:  # smile lines from the nose wings to the mouth corners
            for side in (-1, 1):
                fold = self.surface(np.array([[side * L.nose_width * 0.55, self.nose_y - 0.01],
                                              [side * (self.mouth_hw + 0.025), self.corner_y + 0.02]]), 0.02)
                patch.paint(patch.mask([fold], thickness=0.012, closed=False, soft=0.006),
                            _scale(skin, 0.7), 0.6 * (self.var.smile - 0.3))

    def _draw_eye(self, patch: _Patch, side: int) -> None:
        L, V = self.look, self.var
        ex, ey = side * self.eye_x, L.eye_y
        w2 = L.eye_width / 2
        h = L.eye_width * L.eye_openness * (1.0 - 0.92 * V.blink) * (1.0 + 0.12 * V.brow_raise)
        t = np.linspace(-1.0, 1.0, 15)
        xs = ex + t * w2
        tilt = L.eye_tilt * 0.5 * L.eye_width * L.eye_openness * t * side
        shape = (1.0 - t ** 2)
        upper = np.stack([xs, ey - 0.58 * h * shape ** 0.7 - tilt], axis=1)
        lower = np.stack([xs, ey + 0.42 * h * shape ** 0.9 - tilt], axis=1)
        upper_s, lower_s = self.surface(upper, -0.01), self.surface(lower, -0.01)
        if h > 0.012:
            sclera = patch.mask([np.concatenate([upper_s, lower_s[::-1]])])
            patch.paint(sclera, _SCLERA)
            ix, iy = ex + self.iris_offset[0], ey + self.iris_offset[1]
            r = 0.2 * L.eye_width * L.iris_scale
            iris = patch.mask([self.surface(_ellipse(ix, iy, r, r, 24), -0.01)])
            patch.paint(iris, L.iris, clip=sclera)
            ring = patch.mask([self.surface(_ellipse(ix, iy, r, r, 24), -0.01)], thickness=r * 0.25)
            patch.paint(ring, _scale(L.iris, 0.55), 0.8, clip=sclera)
            pupil = patch.mask([self.surface(_ellipse(ix, iy, r * 0.45, r * 0.45, 16), -0.01)])
            patch.paint(pupil, (12.0, 10.0, 10.0), clip=sclera)
            glint = patch.mask([self.surface(_ellipse(ix - r * 0.35, iy - r * 0.35, r * 0.2, r * 0.2, 10), -0.01)])
            patch.paint(glint, (255.0, 255.0, 255.0), 0.9, clip=sclera)
            lid_shadow = patch.mask([upper_s], thickness=h * 0.35, closed=False, soft=0.004)
            patch.paint(lid_shadow, _scale(L.skin, 0.5), 0.35, clip=sclera)
            patch.paint(patch.mask([lower_s], thickness=0.006, closed=False), _scale(L.skin, 0.75), 0.45)
        wing = np.array([[ex + side * w2 * 1.12, upper[-1 if side > 0 else 0, 1] - 0.006]])
        lash_line = np.concatenate([upper, wing]) if side > 0 else np.concatenate([wing, upper])
        patch.paint(patch.mask([self.surface(lash_line, -0.01)], thickness=L.lash, closed=False), _DARK, 0.9)
        crease = upper[2:-2] + (0.0, -0.3 * L.eye_width * L.eye_openness - 0.006)
        patch.paint(patch.mask([self.surface(crease, -0.01)], thickness=0.006, closed=False),
                    _scale(L.skin, 0.68), 0.5)

    def _draw_brow(self, patch: _Patch, side: int) -> None:
        L, V = self.look, self.var
        t = np.linspace(0.0, 1.0, 12)
        inner = self.eye_x - 0.55 * L.eye_width
        outer = self.eye_x + 0.62 * L.eye_width * L.brow_length
        xs = side * (inner + (outer - inner) * t)
        raise_ = 0.03 * max(V.brow_raise, 0.0)
        frown = 0.03 * max(-V.brow_raise, 0.0)
        centre = (L.eye_y - L.brow_gap - raise_ - L.brow_arch * 4 * t * (1 - t) - L.brow_slant * t
                  + frown * (1 - t) ** 2)
        thick = L.brow_thickness * (1.0 - 0.55 * t ** 1.5) * (0.8 + 0.2 * np.sqrt(np.minimum(t * 6, 1)))
        top = np.stack([xs, centre - thick / 2], axis=1)
        bottom = np.stack([xs, centre + thick / 2], axis=1)
        brow = self.surface(np.concatenate([top, bottom[::-1]]), 0.01)
        colour = _mix(_scale(L.hair, 0.8), _DARK, 0.35) if L.hair[0] < 200 else _scale(L.hair, 0.75)
        patch.paint(patch.mask([brow]), colour, 0.92)

    def _draw_nose(self, patch: _Patch) -> None:
        L = self.look
        skin, ny, nw = L.skin, self.nose_y, L.nose_width
        shade_side = -1 if self.var.light[0] > 0 else 1
        bridge = np.array([[shade_side * 0.03, L.eye_y + 0.04], [shade_side * nw * 0.3, ny - 0.05],
                           [shade_side * nw * 0.42, ny - 0.01]])
        patch.paint(patch.mask([self.surface(bridge, 0.06)], thickness=0.022, closed=False, soft=0.012),
                    _scale(skin, 0.62), 0.45)
        under = self.surface(_ellipse(0.0, ny + 0.03, nw * 0.55, 0.022, 16), 0.05)
        patch.paint(patch.mask([under], soft=0.01), _scale(skin, 0.6), 0.45)
        for side in (-1, 1):
            ala = _ellipse(side * nw * 0.4, ny + 0.005, nw * 0.16, 0.028, 16)
            arc = ala[(ala[:, 0] - side * nw * 0.4) * side > -0.002]
            patch.paint(patch.mask([self.surface(arc, 0.07)], thickness=0.008, closed=False), _scale(skin, 0.6), 0.7)
            nostril = self.surface(_ellipse(side * nw * 0.2, ny + 0.022, nw * 0.13, 0.011, 12), 0.08)
            patch.paint(patch.mask([nostril]), _scale(skin, 0.35), 0.85)
        tip = self.surface(_ellipse(0.0, ny - 0.015, nw * 0.18, 0.018, 12), 0.13)
        patch.paint(patch.mask([tip], soft=0.008), _mix(skin, (255, 255, 255), 0.4), 0.4)

    def _lip_curves(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Upper lip top, lip line, lower edge of the opening, lower lip bottom (each [N, 2], left to right)."""
        L, V = self.look, self.var
        t = np.linspace(-1.0, 1.0, 21)
        xs = t * self.mouth_hw
        line = self.mouth_y - 0.035 * V.smile * t ** 2 - 0.004 * (1 - t ** 2)
        ul = L.upper_lip * (1.0 - 0.3 * V.smile)
        bow = 1.0 - 0.4 * np.exp(-(t / 0.12) ** 2)
        top = line - ul * np.sqrt(1 - t ** 2) * bow - 0.006 * (1 - t ** 2)
        gap = 0.085 * V.mouth_open * (1 - t ** 2) ** 0.6 + 0.012 * V.smile * V.mouth_open * (1 - t ** 2)
        opening = line + gap
        bottom = opening + L.lower_lip * (1.0 - 0.25 * V.smile) * (1 - t ** 2) ** 0.5
        return (np.stack([xs, top], 1), np.stack([xs, line], 1), np.stack([xs, opening], 1),
                np.stack([xs, bottom], 1))

    def _draw_mouth(self, patch: _Patch) -> None:
        L, V = self.look, self.var
        top, line, opening, bottom = (self.surface(c, 0.03) for c in self._lip_curves())
        if V.mouth_open > 0.05:
            hole = patch.mask([np.concatenate([line, opening[::-1]])])
            patch.paint(hole, (70.0, 24.0, 30.0))
            teeth_line = line + (0.0, 0.028)
            teeth = patch.mask([np.concatenate([line - (0.0, 0.01), teeth_line[::-1]])])
            patch.paint(teeth, (238.0, 232.0, 218.0), 0.95, clip=hole)
        patch.paint(patch.mask([np.concatenate([top, line[::-1]])]), _scale(L.lip, 0.88), 0.95)
        patch.paint(patch.mask([np.concatenate([opening, bottom[::-1]])]), L.lip, 0.95)
        highlight = self.surface(_ellipse(0.0, self.mouth_y + L.lower_lip * 0.45 + 0.085 * V.mouth_open,
                                          self.mouth_hw * 0.35, L.lower_lip * 0.18, 12), 0.035)
        patch.paint(patch.mask([highlight], soft=0.004), (255.0, 235.0, 235.0), 0.25)
        patch.paint(patch.mask([line], thickness=0.008, closed=False), _scale(L.lip, 0.4), 0.85)
        for side in (-1, 1):  # mouth corners dimple
            corner = line[0 if side < 0 else -1]
            patch.paint(patch.mask([corner[None] + (0.0, 0.0), corner[None] + (side * 0.012, -0.004)],
                                   thickness=0.008, closed=False), _scale(L.skin, 0.55), 0.6)

    def _beard_polygon(self) -> np.ndarray:
        """Full beard: along the jaw from the sideburns round the chin, inner edge down the cheeks to the mouth."""
        L = self.look
        y_top = L.eye_y + 0.05
        rim = self.outline(np.concatenate([
            self._outline_points(np.linspace(self._angle_at(y_top) if y_top < 0 else 0.0, 0.0, 4), grow=0.01),
            self._outline_points(np.linspace(0.0, math.pi, 31)[1:-1], grow=0.025),
            self._outline_points(np.linspace(math.pi, math.pi - (self._angle_at(y_top) if y_top < 0 else 0.0), 4),
                                 grow=0.01)]))
        hw = self.mouth_hw
        ys = [y_top, self.nose_y - 0.02, self.corner_y - 0.005, self.corner_y + 0.03]
        xs = [self._outline_x(min(y_top, -0.001)) - 0.06, 0.75 * self._lower_x(max(ys[1], 0.0)), hw + 0.05, hw + 0.02]
        inner = np.array([[-x, y] for x, y in zip(xs, ys)] + [[0.0, self.mouth_y + 0.03]]
                         + [[x, y] for x, y in zip(xs, ys)][::-1])
        return np.concatenate([rim, self.surface(inner, 0.02)])

    def _angle_below(self, y: float) -> float:
        """Outline angle (right side, lower half) where the jaw reaches height ``y`` >= 0 (0 when y < 0)."""
        if y <= 0:
            return 0.0
        return math.asin(min(1.0, (y / 0.5) ** (self.look.jaw_power / 2.0)))

    def _lower_x(self, y: float) -> float:
        return float(self._outline_points(np.array([self._angle_below(y)]))[0, 0])

    def _draw_facial_hair(self, patch: _Patch) -> None:
        L = self.look
        colour = _scale(L.hair, 0.85)
        if L.facial_hair == "full":
            patch.paint(patch.mask([self._beard_polygon()], soft=0.006), colour, 0.93, opaque=True)
        elif L.facial_hair == "stubble":
            patch.paint(patch.mask([self._beard_polygon()], soft=0.015), _mix(colour, L.skin, 0.3), 0.35)
        elif L.facial_hair == "goatee":
            hw = self.mouth_hw
            pts = np.array([[-hw * 0.75, self.mouth_y + 0.03], [-hw * 0.55, 0.47], [0.0, 0.515], [hw * 0.55, 0.47],
                            [hw * 0.75, self.mouth_y + 0.03]])
            patch.paint(patch.mask([self.surface(pts, 0.02)], soft=0.005), colour, 0.92)

    def _draw_moustache(self, patch: _Patch) -> None:
        L = self.look
        if L.facial_hair not in ("moustache", "goatee", "full"):
            return
        hw, top_lip = self.mouth_hw, self.mouth_y - L.upper_lip - 0.004
        pts = np.array([[-hw * 1.1, self.corner_y + 0.01], [-hw * 0.7, self.nose_y + 0.035],
                        [0.0, self.nose_y + 0.04], [hw * 0.7, self.nose_y + 0.035], [hw * 1.1, self.corner_y + 0.01],
                        [hw * 0.6, top_lip], [0.0, top_lip - 0.004], [-hw * 0.6, top_lip]])
        patch.paint(patch.mask([self.surface(pts, 0.04)], soft=0.004), _scale(L.hair, 0.8), 0.95)

    def _hairline(self, xs: np.ndarray) -> np.ndarray:
        L = self.look
        u = xs / self.x_hairline
        if L.hairline == "peak":
            y = -0.5 + 0.045 * np.exp(-(xs / 0.05) ** 2) + 0.03 * u ** 4
        elif L.hairline == "receding":
            y = -0.5 - 0.1 * u ** 2 + 0.06 * u ** 6
        elif L.hairline == "round":
            y = -0.5 + 0.07 * u ** 2
        else:
            y = -0.5 + 0.05 * u ** 4
        return y - 0.012

    def _side_level(self) -> float:
        style = self.look.hair_style
        if style in ("long", "bob", "curly"):
            return -0.02
        return self.look.eye_y - 0.03

    def _draw_back_hair(self, patch: _Patch) -> _Mask | None:
        L = self.look
        a, bu, vol = self.a, self.bu, L.hair_volume
        rng = np.random.default_rng(L.hair_seed)
        if L.hair_style in ("long", "bob"):
            end = 0.95 if L.hair_style == "long" else 0.3 + vol
            top = self._outline_points(np.linspace(0.0, -math.pi, 30), grow=vol + 0.03)
            n = 9
            bottom_x = np.linspace(a + vol + 0.1, -(a + vol + 0.1), n)
            jag = rng.uniform(-0.03, 0.03, n) if L.hair_style == "long" else np.zeros(n)
            bottom_y = end + jag - (0.0 if L.hair_style == "long" else 0.06 * (1 - (bottom_x / (a + 0.1)) ** 2))
            if L.hair_style == "bob":
                bottom_x = bottom_x * 0.95
            pts = np.concatenate([top, [[-(a + vol + 0.05), 0.05], [-(a + vol + 0.09), end * 0.6]],
                                  np.stack([bottom_x[::-1], bottom_y[::-1]], 1),
                                  [[a + vol + 0.09, end * 0.6], [a + vol + 0.05, 0.05]]])
            mask = patch.mask([self.outline(pts)])
        elif L.hair_style == "curly":
            t = np.linspace(0.0, 2 * math.pi, 72, endpoint=False)
            ry = (bu + 0.1 + vol - 0.2 + 0.55) / 2
            cy = -(bu + 0.1 + vol) + ry
            rx = a + 0.13 + vol
            bump = 1.0 + 0.045 * np.sin(11 * t + rng.uniform(0, 6.3))
            pts = np.stack([rx * np.cos(t) * bump, cy + ry * np.sin(t) * bump], 1)
            mask = patch.mask([self.outline(pts)])
        elif L.hair_style == "bun":
            mask = patch.mask([self.outline(_ellipse(0.0, -bu - 0.06, 0.13, 0.11, 24))])
        else:
            return None
        patch.paint(mask, _scale(L.hair, 0.85), opaque=True)
        return mask

    def _draw_front_hair(self, patch: _Patch) -> _Mask | None:
        L = self.look
        if L.hair_style == "bald":
            return None
        vol = 0.0 if L.hair_style == "buzz" else L.hair_volume
        y_side = self._side_level()
        t0 = self._angle_at(y_side)
        rim = self.outline(self._outline_points(np.linspace(t0, -math.pi - t0, 40), grow=vol))
        xh = self.x_hairline
        xs = np.linspace(-0.94 * xh, 0.94 * xh, 25)
        ys = self._hairline(xs)
        if L.hair_style == "fringe":
            jag = 0.014 * (np.arange(len(xs)) % 2) - 0.007
            target = L.eye_y - L.brow_gap - 0.03 - 0.12 * (xs / xh) ** 2 + jag
            ys = np.maximum(ys, target)
        elif L.hair_style == "side_part":
            side = 1.0 if L.hair_part >= 0 else -1.0
            u = np.clip((xs * side + 0.2 * xh) / (1.2 * xh), 0.0, 1.0)
            ys = ys + 0.1 * np.sin(u * math.pi) ** 1.5
        side_inner = self._outline_x(y_side) - 0.045
        inner = np.concatenate([[[-side_inner, y_side], [-0.97 * xh, ys[0] + 0.01]], np.stack([xs, ys], 1),
                                [[0.97 * xh, ys[-1] + 0.01], [side_inner, y_side]]])
        hairline = self.surface(inner, 0.01)
        mask = patch.mask([np.concatenate([rim, hairline])])
        if L.hair_style == "buzz":
            patch.paint(mask, _mix(L.hair, L.skin, 0.35), 0.7, opaque=True)
        else:
            patch.paint(mask, L.hair, opaque=True)
        return mask

    def _draw_strands(self, patch: _Patch, hair: _Mask, behind: bool) -> None:
        """Darker and lighter strands (curls for curly hair) inside ``hair``; the pattern is the identity's own."""
        L = self.look
        rng = np.random.default_rng(L.hair_seed + (1 if behind else 2))
        curly = L.hair_style == "curly"
        lines_dark, lines_light = [], []
        bottom = 0.8 if behind and L.hair_style == "long" else 0.2 if behind else -0.35
        for i in range(24):
            x0 = rng.uniform(-self.a - 0.12, self.a + 0.12)
            y0 = rng.uniform(-self.bu - 0.1, bottom)
            if curly:
                r = rng.uniform(0.015, 0.03)
                pts = _ellipse(x0, y0, r, r, 10)[:7]
            else:
                t = np.linspace(0.0, 1.0, 6)
                bend = rng.uniform(-0.08, 0.08)
                dx = np.sign(x0) * rng.uniform(0.02, 0.1) + L.hair_part * 0.03
                pts = np.stack([x0 + dx * t + bend * t * (1 - t), y0 + rng.uniform(0.1, 0.25) * t], 1)
            (lines_dark if i % 2 else lines_light).append(self.outline(pts))
        patch.paint(patch.mask(lines_dark, thickness=0.008, closed=False), _scale(L.hair, 0.6), 0.5, clip=hair)
        patch.paint(patch.mask(lines_light, thickness=0.006, closed=False),
                    _mix(L.hair, (255.0, 240.0, 220.0), 0.3), 0.35, clip=hair)

    def _draw_glasses(self, patch: _Patch) -> None:
        L = self.look
        if L.glasses == "none":
            return
        rx = (0.5 * L.eye_width + 0.03) * L.glasses_size
        ry = rx * (0.8 if L.glasses == "round" else 0.66)
        power = 2.0 if L.glasses == "round" else 4.5
        thickness = 0.011 if L.glasses == "round" else 0.018
        frames = []
        for side in (-1, 1):
            cx = side * self.eye_x
            frame = self.surface(_ellipse(cx, L.eye_y + 0.008, rx, ry, 36, power), 0.08)
            frames.append(frame)
            lens = patch.mask([frame])
            patch.paint(lens, (235.0, 240.0, 250.0), 0.1)
            glint = self.surface(np.array([[cx - rx * 0.5, L.eye_y - ry * 0.2], [cx - rx * 0.1, L.eye_y - ry * 0.6]]),
                                 0.08)
            patch.paint(patch.mask([glint], thickness=0.01, closed=False), (255.0, 255.0, 255.0), 0.3)
            arm_end = np.array([[side * (self._outline_x(L.eye_y) - 0.005), L.eye_y - 0.01]])
            arm = np.concatenate([self.surface(np.array([[cx + side * rx, L.eye_y]]), 0.08), self.outline(arm_end)])
            patch.paint(patch.mask([arm], thickness=thickness * 0.8, closed=False), L.glasses_colour)
        bridge = self.surface(np.array([[-self.eye_x + rx, L.eye_y - 0.005], [0.0, L.eye_y - 0.025],
                                        [self.eye_x - rx, L.eye_y - 0.005]]), 0.1)
        patch.paint(patch.mask(frames, thickness=thickness), L.glasses_colour)
        patch.paint(patch.mask([bridge], thickness=thickness * 0.8, closed=False), L.glasses_colour)

    def _shade(self, patch: _Patch) -> None:
        """Directional light on a head-shaped ellipsoid: the side away from the light darkens."""
        V = self.var
        xs = (np.arange(patch.w, dtype=np.float32) / patch.scale + PATCH_LEFT)[None, :]
        ys = (np.arange(patch.h, dtype=np.float32) / patch.scale + PATCH_TOP)[:, None]
        ax, by, cz = self.a * 1.1 * self.sw, 0.7, self.c
        q = np.clip(1.0 - (xs / ax) ** 2 - ((ys + 0.08) / by) ** 2, 0.04, 1.0)
        nz = np.sqrt(q) / cz
        nx, ny = xs / ax ** 2, (ys + 0.08) / by ** 2
        norm = np.sqrt(nx ** 2 + ny ** 2 + nz ** 2)
        lx, ly, lz = V.light
        lx, lz = lx * self.cy - lz * self.sy, lx * self.sy + lz * self.cy
        lit = np.maximum((nx * lx + ny * ly + nz * lz) / norm, 0.0)
        s = V.light_strength
        shade = (1.0 - s) * 0.95 + s * (0.15 + lit)  # lit side at most 1.15, shadow side down to 0.15
        patch.rgb *= shade[:, :, None]


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def composite_face(image: np.ndarray, model: FaceModel, placement: FacePlacement, *, blur: float = 0.0,
                   owner: np.ndarray | None = None, owner_id: int = 0) -> None:
    """Draw ``model`` into float32 ``image`` (HxWx3, 0..255) at ``placement``; ``blur`` is a Gaussian sigma in px.

    ``owner`` (int32 HxW) records which face each pixel shows: the face region becomes ``owner_id``,
    hair, neck and clothes become -1, so occlusion by later faces and objects can be measured.
    """
    height = float(np.hypot(*placement.matrix[:, 0]))
    scale = max(height, MIN_DRAW_SCALE)
    rgb, alpha, region = model.draw(scale)
    # patch pixel p -> face units u = p / scale + (left, top) -> image via placement.matrix
    to_units = np.array([[1.0 / scale, 0.0, PATCH_LEFT], [0.0, 1.0 / scale, PATCH_TOP], [0.0, 0.0, 1.0]])
    matrix = placement.matrix @ to_units
    layers = [np.dstack([rgb, alpha]), region]  # cv2 resizes and warps at most 4 channels at a time
    if blur > 0.3:
        sigma = blur * scale / height
        layers = [cv2.GaussianBlur(layer, (0, 0), sigma) for layer in layers]
    factor = height / scale
    if factor < 0.75:
        h, w = layers[1].shape
        new_w, new_h = max(2, int(round(w * factor))), max(2, int(round(h * factor)))
        layers = [cv2.resize(layer, (new_w, new_h), interpolation=cv2.INTER_AREA) for layer in layers]
        fx, fy = new_w / w, new_h / h
        # resized pixel q <- original pixel p = (q + 0.5) / f - 0.5
        back = np.array([[1.0 / fx, 0.0, 0.5 / fx - 0.5], [0.0, 1.0 / fy, 0.5 / fy - 0.5], [0.0, 0.0, 1.0]])
        matrix = matrix @ back
    h, w = layers[1].shape
    corners = _apply(matrix, np.array([[0, 0], [w, 0], [0, h], [w, h]], np.float64))
    x0 = max(int(math.floor(corners[:, 0].min())) - 1, 0)
    y0 = max(int(math.floor(corners[:, 1].min())) - 1, 0)
    x1 = min(int(math.ceil(corners[:, 0].max())) + 2, image.shape[1])
    y1 = min(int(math.ceil(corners[:, 1].max())) + 2, image.shape[0])
    if x1 <= x0 or y1 <= y0:
        return
    shifted = matrix.copy()
    shifted[:, 2] -= (x0, y0)
    colour, region = (cv2.warpAffine(layer, shifted, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_CONSTANT, borderValue=0) for layer in layers)
    window = image[y0:y1, x0:x1]
    window *= 1.0 - colour[:, :, 3:4]
    window += colour[:, :, :3]
    if owner is not None:
        own = owner[y0:y1, x0:x1]
        own[colour[:, :, 3] > 0.5] = -1
        own[region > 0.5] = owner_id

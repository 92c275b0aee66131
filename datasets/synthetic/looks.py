"""Who a synthetic face is (``FaceLook``) and how one photo of it differs (``FaceVariation``).

A look is a combination of attributes drawn independently from shared palettes and ranges, so no single
attribute tells identities apart; a variation holds everything that changes between photos of the same
person (pose, expression, gaze, light, clothes). Geometry is in face units: the face box (hairline to
chin) is 1 tall and centred on the origin, x to the image right, y down.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Colour = tuple[float, float, float]

SKIN_TONES: tuple[Colour, ...] = (  # albedos: lit faces go above them, so the palest stays off white
    (234, 198, 172), (224, 184, 152), (212, 166, 130), (196, 144, 108),
    (176, 124, 88), (148, 100, 68), (118, 78, 52), (88, 58, 40),
)
HAIR_COLOURS: tuple[Colour, ...] = (
    (26, 22, 20), (58, 38, 26), (98, 64, 38), (146, 104, 64), (206, 170, 110),
    (136, 58, 30), (176, 84, 40), (138, 136, 132), (218, 214, 206),
)
EYE_COLOURS: tuple[Colour, ...] = (
    (54, 34, 22), (98, 62, 34), (118, 96, 48), (74, 116, 66), (64, 104, 166), (112, 124, 136), (120, 160, 198),
)
GLASSES_COLOURS: tuple[Colour, ...] = (
    (20, 20, 22), (104, 64, 36), (176, 176, 182), (186, 156, 76), (140, 28, 36), (36, 56, 132),
)
SHIRT_COLOURS: tuple[Colour, ...] = (
    (200, 40, 40), (40, 80, 160), (30, 30, 34), (230, 230, 226), (60, 130, 70), (120, 120, 128),
    (220, 170, 40), (120, 60, 130), (200, 110, 150), (90, 60, 40), (40, 150, 170), (240, 120, 40),
)
HAIR_STYLES = ("short", "buzz", "bald", "long", "bob", "fringe", "curly", "side_part", "bun")
HAIRLINES = ("straight", "peak", "receding", "round")
FACIAL_HAIR = ("none", "none", "stubble", "moustache", "goatee", "full")
GLASSES = ("none", "none", "round", "rect")


@dataclass(frozen=True)
class FaceLook:
    """The fixed appearance of one identity: face shape, skin, eyes, brows, nose, mouth, hair, extras."""

    half_width: float  # half the face width (box height = 1)
    skull_height: float  # how far the head outline rises above the hairline
    upper_power: float  # superellipse exponent of the forehead/skull outline
    jaw_power: float  # superellipse exponent of the jaw (low: pointed chin, high: square jaw)
    chin_taper: float  # narrowing of the jaw toward the chin
    skin: Colour
    blush: float  # cheek redness (opacity)
    eye_y: float  # eye line
    eye_spacing: float  # eye centre distance from the midline, as a fraction of half_width
    eye_width: float
    eye_openness: float  # eye height / eye width
    eye_tilt: float  # outer corner up (+) or down (-)
    iris_scale: float
    iris: Colour
    lash: float  # upper lid line thickness
    brow_gap: float
    brow_thickness: float
    brow_arch: float
    brow_slant: float  # outer end up (+) or down (-)
    brow_length: float
    nose_length: float  # eye line to nose tip
    nose_width: float
    mouth_gap: float  # nose tip to mouth line
    mouth_width: float  # half width as a fraction of half_width
    upper_lip: float
    lower_lip: float
    lip: Colour
    ear_size: float
    hair_style: str
    hairline: str
    hair: Colour
    hair_volume: float
    hair_part: float  # -1..1, where a side part or parting sits
    hair_seed: int  # fixes the strand pattern
    facial_hair: str
    glasses: str
    glasses_colour: Colour
    glasses_size: float
    moles: tuple[tuple[float, float, float], ...]  # (x, y, radius)


@dataclass(frozen=True)
class FaceVariation:
    """What changes between photos of one person: pose, expression, gaze, lighting, clothes."""

    yaw: float  # radians, + turns the face toward image right
    pitch: float  # radians, + nods down
    roll: float  # degrees, in-plane, + clockwise on screen
    smile: float  # 0..1
    mouth_open: float  # 0..1
    brow_raise: float  # -1 (frown) .. 1 (raised)
    blink: float  # 0 open .. 1 closed
    gaze: tuple[float, float]
    light: tuple[float, float, float]  # unit direction toward the light (x right, y down, z to camera)
    light_strength: float  # 0 flat .. 1 hard directional light
    shirt: Colour


def _jitter(rng: np.random.Generator, colour: Colour, amount: float) -> Colour:
    """A palette colour moved by a small per-channel offset (kept within 0..255)."""
    values = np.clip(np.asarray(colour) + rng.normal(0.0, amount, 3), 0, 255)
    return (float(values[0]), float(values[1]), float(values[2]))


def _pick(rng: np.random.Generator, palette: tuple) -> object:
    return palette[int(rng.integers(len(palette)))]


def sample_look(rng: np.random.Generator) -> FaceLook:
    """Draw one identity: every attribute independently from the shared palettes and ranges."""
    u = rng.uniform
    skin = _jitter(rng, _pick(rng, SKIN_TONES), 5.0)
    redness = u(0.25, 0.55)
    lip = tuple(float(s * (1 - redness) + c * redness) for s, c in zip(skin, (186, 70, 84)))
    hair = _jitter(rng, _pick(rng, HAIR_COLOURS), 6.0)
    n_moles = int(rng.choice([0, 0, 1, 1, 2, 3]))
    moles = tuple((float(u(-0.28, 0.28)), float(u(-0.3, 0.38)), float(u(0.009, 0.016))) for _ in range(n_moles))
    return FaceLook(
        half_width=float(u(0.36, 0.46)),
        skull_height=float(u(0.16, 0.26)),
        upper_power=float(u(2.0, 2.6)),
        jaw_power=float(u(1.7, 3.0)),
        chin_taper=float(u(0.0, 0.28)),
        skin=skin,
        blush=float(u(0.0, 0.3)),
        eye_y=float(u(-0.12, -0.04)),
        eye_spacing=float(u(0.4, 0.52)),
        eye_width=float(u(0.12, 0.17)),
        eye_openness=float(u(0.38, 0.62)),
        eye_tilt=float(u(-0.2, 0.3)),
        iris_scale=float(u(0.85, 1.12)),
        iris=_jitter(rng, _pick(rng, EYE_COLOURS), 6.0),
        lash=float(u(0.008, 0.02)),
        brow_gap=float(u(0.065, 0.1)),
        brow_thickness=float(u(0.014, 0.04)),
        brow_arch=float(u(0.0, 0.035)),
        brow_slant=float(u(-0.03, 0.04)),
        brow_length=float(u(0.8, 1.25)),
        nose_length=float(u(0.17, 0.27)),
        nose_width=float(u(0.09, 0.16)),
        mouth_gap=float(u(0.1, 0.15)),
        mouth_width=float(u(0.36, 0.5)),
        upper_lip=float(u(0.012, 0.03)),
        lower_lip=float(u(0.018, 0.042)),
        lip=lip,
        ear_size=float(u(0.85, 1.2)),
        hair_style=str(_pick(rng, HAIR_STYLES)),
        hairline=str(_pick(rng, HAIRLINES)),
        hair=hair,
        hair_volume=float(u(0.02, 0.07)),
        hair_part=float(u(-1.0, 1.0)),
        hair_seed=int(rng.integers(2**31)),
        facial_hair=str(_pick(rng, FACIAL_HAIR)),
        glasses=str(_pick(rng, GLASSES)),
        glasses_colour=_pick(rng, GLASSES_COLOURS),
        glasses_size=float(u(0.9, 1.15)),
        moles=moles,
    )


def sample_variation(rng: np.random.Generator, *, max_yaw: float = 0.45, max_roll: float = 25.0,
                     light_strength: tuple[float, float] = (0.2, 0.95)) -> FaceVariation:
    """Draw one photo's pose, expression, gaze, light and clothes (angles: yaw radians, roll degrees)."""
    u = rng.uniform
    kind = rng.uniform()
    if kind < 0.45:  # neutral
        smile, mouth_open = u(0.0, 0.2), 0.0
    elif kind < 0.8:  # smile
        smile, mouth_open = u(0.4, 1.0), u(0.0, 0.35)
    elif kind < 0.92:  # talking / surprised
        smile, mouth_open = u(0.0, 0.4), u(0.35, 1.0)
    else:  # laughing
        smile, mouth_open = u(0.7, 1.0), u(0.5, 1.0)
    azimuth = u(-np.pi, np.pi)
    elevation = u(0.3, 1.3)  # angle of the light away from the camera axis (up to 75 degrees: side light)
    light = (float(np.sin(elevation) * np.cos(azimuth)), float(np.sin(elevation) * np.sin(azimuth) * 0.7 - 0.3),
             float(np.cos(elevation)))
    norm = float(np.linalg.norm(light))
    return FaceVariation(
        yaw=float(np.clip(rng.normal(0.0, max_yaw / 2.2), -max_yaw, max_yaw)),
        pitch=float(np.clip(rng.normal(0.0, 0.08), -0.2, 0.2)),
        roll=float(np.clip(rng.normal(0.0, max_roll / 2.5), -max_roll, max_roll)),
        smile=float(smile),
        mouth_open=float(mouth_open),
        brow_raise=float(np.clip(rng.normal(0.0, 0.45), -1.0, 1.0)),
        blink=float(1.0 if rng.uniform() < 0.04 else u(0.0, 0.25)),
        gaze=(float(u(-0.25, 0.25)), float(u(-0.15, 0.15))),
        light=(light[0] / norm, light[1] / norm, light[2] / norm),
        light_strength=float(u(*light_strength)),
        shirt=_jitter(rng, _pick(rng, SHIRT_COLOURS), 12.0),
    )

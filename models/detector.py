"""The MTCNN cascade as one object: ``FaceDetector.detect(images)`` -> boxes, scores and five landmarks per image.

Stages (each a public method, so mining and evaluation can stop after any of them with ``until=``):

1. ``prepare``: every input (numpy HxWxC, PIL, torch CxHxW, batches and lists of mixed sizes) becomes
   an RGB image and its integral image (summed-area table) on the detector's device.
2. ``pnet_stage``: the image pyramid (smallest face ``min_face_size``, ratio ``scale_factor``) is read
   from the integral image, P-Net runs on each scale for all same-sized images at once, windows over
   the threshold become boxes, NMS within each scale then across scales, box regression, squaring.
3. ``rnet_stage`` / ``onet_stage``: all candidate boxes of all images are cropped and resized in one
   gather from the integral images (24x24 / 48x48), in chunks that bound memory, then R-Net/O-Net,
   threshold, regression, landmarks and NMS (intersection over the smaller box at the end).

Resampling is area averaging with the bin edges of ``torch.nn.functional.adaptive_avg_pool2d``
(the resizing the released weights are used with in facenet-pytorch), computed exactly from integer
integral images, so the same thresholds send the same boxes on. Box and landmark conventions of the
original cascade are kept (see ``utils/boxes.py``): boxes are ``x1, y1, x2, y2`` in pixels, landmarks
``[5, 2]`` (left eye, right eye, nose, left and right mouth corner) as ``(x, y)``.

Inputs: numpy arrays are HxWxC (OpenCV/PIL layout), torch tensors CxHxW (torchvision layout); both are
RGB unless ``channel_order="bgr"``; uint8, or float on the 0..255 scale. Grey images are repeated to
three channels and alpha is dropped. Images too small for the smallest face give no detections.

Speed (CPU): the nets run in ``channels_last`` under ``torch.inference_mode`` with fused output heads
and a two-maxima 2x2 pooling; the pyramid and all crops are vectorised gathers from the integral
images (numpy ``take``, single-threaded and contention-proof) instead of one resize per box; NMS is
torchvision's, run per image so an image gives the same result alone or in a batch.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from config import DetectorBackend
from models.mtcnn import NET_INPUT_SIZE, NET_NAMES, PIXEL_MEAN, PIXEL_MULTIPLIER, NetOutput
from models.weights import WHEEL_SOURCE, load_net
from utils.area_resize import area_resize, integral_image, mean_pixels, take_difference
from utils.boxes import apply_box_regression, decode_landmarks, nms, square_boxes
from utils.device import select_device
from utils.errors import ConfigError, DataError
from utils.images import pil_to_rgb

BACKENDS = get_args(DetectorBackend)  # how the nets run: PyTorch modules, or exported files on ONNX Runtime
CHANNEL_ORDERS = ("rgb", "bgr")


@dataclass
class DetectorSettings:
    """Cascade settings; field names match ``config.DetectorConfig`` (defaults: Zhang et al. 2016)."""

    min_face_size: float = 20.0
    scale_factor: float = 0.709
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    nms_pnet_scale: float = 0.5  # IoU NMS within one pyramid scale
    nms_pnet: float = 0.7  # IoU NMS across scales
    nms_rnet: float = 0.7  # IoU NMS after R-Net
    nms_onet: float = 0.7  # NMS after O-Net, intersection over the smaller box
    fp16: bool = False  # half-precision networks on CUDA (ignored on the CPU)
    max_crops_per_batch: int = 512  # R-Net crops per forward (O-Net: a quarter); bounds memory, 512 is fastest on CPU
    max_pnet_pixels: int = 4_000_000  # pyramid pixels per P-Net forward; large images go in row bands

    def __post_init__(self) -> None:
        self.thresholds = tuple(float(t) for t in self.thresholds)  # type: ignore[assignment]
        problems = []
        if not self.min_face_size >= 1:
            problems.append(f"min_face_size must be >= 1, got {self.min_face_size}")
        if not 0.0 < self.scale_factor < 1.0:
            problems.append(f"scale_factor must be in (0, 1), got {self.scale_factor}")
        if len(self.thresholds) != 3 or not all(0.0 <= t <= 1.0 for t in self.thresholds):
            problems.append(f"thresholds must be three values in [0, 1], got {self.thresholds}")
        for name in ("nms_pnet_scale", "nms_pnet", "nms_rnet", "nms_onet"):
            if not 0.0 < getattr(self, name) <= 1.0:
                problems.append(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if self.max_crops_per_batch < 4 or self.max_pnet_pixels < 10_000:
            problems.append("max_crops_per_batch must be >= 4 and max_pnet_pixels >= 10000")
        if problems:
            raise ConfigError("detector settings: " + "; ".join(problems))

    @classmethod
    def from_config(cls, config: Any) -> DetectorSettings:
        """Build from any object (e.g. ``config.DetectorConfig``) that has some of these fields."""
        names = {f.name for f in fields(cls)}
        return cls(**{name: getattr(config, name) for name in names if hasattr(config, name)})


@dataclass
class Detections:
    """Faces found in one image: ``boxes [N, 4]`` (x1, y1, x2, y2), ``scores [N]``, ``landmarks [N, 5, 2]``.

    ``landmarks`` is None after a stage whose net has no landmark head (the released P-Net/R-Net).
    After ``until="pnet"``/``"rnet"`` the boxes are the squared candidates handed to the next stage.
    """

    boxes: Tensor
    scores: Tensor
    landmarks: Tensor | None
    stage: str = "onet"

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def to(self, device: str | torch.device) -> Detections:
        """The same detections on another device."""
        lm = None if self.landmarks is None else self.landmarks.to(device)
        return Detections(self.boxes.to(device), self.scores.to(device), lm, self.stage)

    def numpy(self) -> dict[str, np.ndarray | None]:
        """Boxes, scores and landmarks as numpy arrays (for JSON reports, plotting, OpenCV)."""
        lm = None if self.landmarks is None else self.landmarks.cpu().numpy()
        return {"boxes": self.boxes.cpu().numpy(), "scores": self.scores.cpu().numpy(), "landmarks": lm}


class StageTimer:
    """Seconds and item counts per stage, summed over ``detect`` calls (pass None to detect for no timing).

    ``clock`` is wall time by default; ``time.thread_time`` measures CPU time instead, which other
    processes on a shared machine disturb far less (with one intra-op thread it is the whole work).
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.images = 0

    @contextlib.contextmanager
    def section(self, name: str, device: torch.device) -> Iterator[None]:
        """Time the enclosed block under ``name`` (CUDA work is synchronised so it is counted where it runs)."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = self.clock()
        try:
            yield
        finally:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            self.seconds[name] = self.seconds.get(name, 0.0) + self.clock() - start

    def count(self, name: str, n: int) -> None:
        """Add ``n`` items (boxes, crops) to the counter ``name``."""
        self.counts[name] = self.counts.get(name, 0) + int(n)

    def per_image(self) -> dict[str, float]:
        """Mean seconds per image for each stage, plus their total."""
        n = max(self.images, 1)
        out = {name: s / n for name, s in self.seconds.items()}
        out["total"] = sum(self.seconds.values()) / n
        return out

    def reset(self) -> None:
        """Forget everything measured so far."""
        self.seconds.clear()
        self.counts.clear()
        self.images = 0


@dataclass
class Candidates:
    """Boxes of a whole batch between stages; ``image_index`` says which image each row belongs to.

    ``offsets`` holds box-regression offsets not yet applied (inside a stage only).
    """

    boxes: Tensor
    scores: Tensor
    image_index: Tensor
    landmarks: Tensor | None = None
    offsets: Tensor | None = None

    def select(self, keep: Tensor) -> Candidates:
        """The rows ``keep`` (indices or mask)."""
        return Candidates(self.boxes[keep], self.scores[keep], self.image_index[keep],
                          None if self.landmarks is None else self.landmarks[keep],
                          None if self.offsets is None else self.offsets[keep])

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


@dataclass
class PreparedImages:
    """A batch ready for the cascade: sizes, integral images in one flat buffer, same-size groups."""

    sizes: list[tuple[int, int]]  # (height, width) per image
    flat: Tensor  # [sum (H+1)*(W+1), 3] integral images, one after another
    offsets: Tensor  # [B] start row of each image's integral image in ``flat``
    groups: list[list[int]] = field(default_factory=list)  # indices of images with the same size, stored adjacently

    def integral(self, index: int) -> Tensor:
        """Image ``index``'s integral image as an [H+1, W+1, 3] view."""
        h, w = self.sizes[index]
        start = int(self.offsets[index])
        return self.flat[start:start + (h + 1) * (w + 1)].view(h + 1, w + 1, 3)

    def group_integrals(self, group: list[int]) -> Tensor:
        """The integral images of one same-size group as a [G, H+1, W+1, 3] view."""
        h, w = self.sizes[group[0]]
        start = int(self.offsets[group[0]])
        return self.flat[start:start + len(group) * (h + 1) * (w + 1)].view(len(group), h + 1, w + 1, 3)


def _label(index: int | None) -> str:
    """How an in-memory image is named in error messages."""
    return "image" if index is None else f"image[{index}]"


def _check_values(array: Tensor, label: str) -> Tensor:
    """Check a float image: finite and on the 0..255 scale; returns it as float32."""
    if not bool(torch.isfinite(array).all()):
        raise DataError(label, "image contains NaN or infinite values")
    if array.numel():
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 255.0:
            raise DataError(label, f"float image values span [{low:g}, {high:g}]; the detector expects 0..255 pixels")
        if 0.0 < high <= 1.0:
            raise DataError(label, "float image values lie within [0, 1]; the detector expects 0..255 pixels "
                                   "(multiply by 255)")
    return array.float()


def _from_numpy(array: np.ndarray) -> Tensor:
    """``torch.from_numpy`` without copying read-only arrays (PIL's); the detector never writes into its input."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def to_rgb_tensor(image: Any, channel_order: str = "rgb", index: int | None = None) -> Tensor:
    """One image as an HxWx3 RGB tensor (uint8, or float32 on the 0..255 scale), on the input's device.

    Accepts numpy ``HxW``/``HxWxC`` (C = 1, 3, 4), torch ``HxW``/``CxHxW`` (C = 1, 3, 4) and PIL images.
    ``channel_order="bgr"`` says numpy/torch inputs are BGR (OpenCV); PIL images are always RGB.
    Grey images are repeated to three channels and alpha is dropped; dtypes other than uint8 and
    floating point, NaN, and float values outside 0..255 raise DataError.
    """
    label = _label(index)
    if channel_order not in CHANNEL_ORDERS:
        raise ValueError(f"channel_order must be one of {CHANNEL_ORDERS}, got {channel_order!r}")
    if isinstance(image, Image.Image):
        return _from_numpy(pil_to_rgb(image))
    if isinstance(image, np.ndarray):
        if image.dtype.kind not in "uf" or (image.dtype.kind == "u" and image.dtype != np.uint8):
            raise DataError(label, f"numpy image dtype {image.dtype} is not supported; use uint8 or float (0..255)")
        tensor = _from_numpy(np.ascontiguousarray(image))
        if tensor.dim() == 3:
            tensor = tensor.permute(2, 0, 1)  # numpy is HxWxC; continue in torch's CxHxW
    elif isinstance(image, Tensor):
        tensor = image.detach()
        if tensor.dim() == 3 and tensor.shape[0] not in (1, 3, 4) and tensor.shape[-1] in (1, 3, 4):
            raise DataError(label, f"tensor of shape {tuple(tensor.shape)} looks HxWxC; tensors must be CxHxW "
                                   "(use .permute(2, 0, 1))")
    else:
        raise DataError(label, f"unsupported image type {type(image).__name__}; use numpy, PIL or torch")
    if tensor.dim() == 2:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 3 or tensor.shape[0] not in (1, 3, 4):
        raise DataError(label, f"image shape {tuple(image.shape)} is not HxW, HxWxC (numpy) or CxHxW (torch) "
                               "with C in 1, 3, 4")
    if tensor.dtype != torch.uint8:
        if not tensor.dtype.is_floating_point:
            raise DataError(label, f"tensor image dtype {tensor.dtype} is not supported; use uint8 or float (0..255)")
        tensor = _check_values(tensor, label)
    if tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1)
    elif tensor.shape[0] == 4:
        tensor = tensor[:3]
    if channel_order == "bgr":
        tensor = tensor.flip(0)
    return tensor.permute(1, 2, 0).contiguous()


def _split_batch(images: Any) -> list[Any]:
    """A single image or a batch (list/tuple, numpy NxHxWxC, torch NxCxHxW) as a list of images."""
    if isinstance(images, (list, tuple)):
        return list(images)
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    if isinstance(images, Tensor) and images.dim() == 4:
        return list(images.unbind(0))
    return [images]


def pyramid_scales(height: int, width: int, min_face_size: float, factor: float) -> list[float]:
    """Scales of the image pyramid: the smallest face maps to 12 px, then each scale is ``factor`` smaller."""
    scale = 12.0 / min_face_size
    shortest = min(height, width) * scale
    scales = []
    while shortest >= 12:
        scales.append(scale)
        scale *= factor
        shortest *= factor
    return scales


def _net_input(sums: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Area sums -> mean pixel -> the networks' input scale."""
    return mean_pixels(sums, rows, cols).sub_(PIXEL_MEAN).mul_(PIXEL_MULTIPLIER)


def _concat(parts: list[Candidates]) -> Candidates:
    """Candidates of several pieces as one."""
    def join(values: list[Tensor | None]) -> Tensor | None:
        return None if values[0] is None else torch.cat(values)  # type: ignore[arg-type]
    return Candidates(torch.cat([p.boxes for p in parts]), torch.cat([p.scores for p in parts]),
                      torch.cat([p.image_index for p in parts]), join([p.landmarks for p in parts]),
                      join([p.offsets for p in parts]))


@contextlib.contextmanager
def _without_tf32(device: torch.device) -> Iterator[None]:
    """Full-precision fp32 convolutions and matmuls on CUDA: with TF32 (on by default for cuDNN convolutions)
    an H200 missed 3 of 44 faces the CPU found at IoU 0.9 on 16 WIDER images; without it 1, landmarks equal."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class FaceDetector:
    """The MTCNN cascade (P-Net -> R-Net -> O-Net) over one image or a batch; holds its own copies of the nets."""

    def __init__(self, pnet: nn.Module | Any, rnet: nn.Module | Any, onet: nn.Module | Any,
                 settings: DetectorSettings | None = None, device: str | torch.device = "cpu") -> None:
        self.settings = settings or DetectorSettings()
        self.device = select_device(device) if isinstance(device, str) else torch.device(device)
        self.dtype = torch.float16 if self.settings.fp16 and self.device.type == "cuda" else torch.float32
        self.nets: dict[str, Callable[[Tensor], NetOutput]] = {}
        for name, net in zip(NET_NAMES, (pnet, rnet, onet)):
            if not isinstance(net, nn.Module) and getattr(net, "name", None) == name:
                self.nets[name] = net  # a runtime adapter (models/onnx_nets.OnnxNet): used as it is
                continue
            if type(net).__name__.lower() != name:
                raise ConfigError(f"FaceDetector expects a {name} in that position, got {type(net).__name__}")
            own = copy.deepcopy(net).eval().to(self.device, self.dtype)
            self.nets[name] = own.to(memory_format=torch.channels_last)

    @classmethod
    def from_checkpoints(cls, pnet: str | Path, rnet: str | Path, onet: str | Path,
                         settings: DetectorSettings | None = None, device: str | torch.device = "cpu",
                         backend: str = "torch") -> FaceDetector:
        """Load the three nets from files or folders: original state_dicts or toolkit checkpoints (``backend``
        "torch"), or the ``.onnx`` files ``python -m deploy.export`` writes (``backend`` "onnx", ONNX Runtime)."""
        if backend not in BACKENDS:
            raise ConfigError(f"detector backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if backend == "onnx":
            from models.onnx_nets import load_onnx_net  # optional dependency, imported only when asked for
            where = select_device(device) if isinstance(device, str) else torch.device(device)
            nets: list[Any] = [load_onnx_net(source, name, device=where)
                               for source, name in zip((pnet, rnet, onet), NET_NAMES)]
        else:
            nets = [load_net(source, name) for source, name in zip((pnet, rnet, onet), NET_NAMES)]
        return cls(*nets, settings=settings, device=device)

    @classmethod
    def from_pretrained(cls, source: str | Path = WHEEL_SOURCE, settings: DetectorSettings | None = None,
                        device: str | torch.device = "cpu") -> FaceDetector:
        """The three nets from one source: a folder of pnet.pt, rnet.pt, onet.pt, a model-zoo entry (``"mtcnn_wider"``
        or ``"weights/mtcnn_wider"``), or the original weights in the facenet-pytorch wheel (the default)."""
        return cls.from_checkpoints(source, source, source, settings=settings, device=device)

    # ----------------------------------------------------------------------------------------------
    def _clock(self, timer: StageTimer | None, name: str) -> contextlib.AbstractContextManager[None]:
        """A timing section when a timer is given, otherwise nothing."""
        return timer.section(name, self.device) if timer is not None else contextlib.nullcontext()

    def prepare(self, images: Any, channel_order: str = "rgb", timer: StageTimer | None = None) -> PreparedImages:
        """Convert the input to RGB and build the integral images the stages read pixels from."""
        with self._clock(timer, "prepare"):
            rgbs = [to_rgb_tensor(img, channel_order, i) for i, img in enumerate(_split_batch(images))]
            sizes = [(int(r.shape[0]), int(r.shape[1])) for r in rgbs]
            integer = all(r.dtype == torch.uint8 for r in rgbs)
            by_size: dict[tuple[int, int], list[int]] = {}
            for i, size in enumerate(sizes):
                by_size.setdefault(size, []).append(i)
            groups = list(by_size.values())
            order = [i for group in groups for i in group]
            offsets = torch.zeros(len(rgbs), dtype=torch.long)
            start = 0
            for i in order:
                offsets[i] = start
                start += (sizes[i][0] + 1) * (sizes[i][1] + 1)
            tables = [integral_image(rgbs[i].to(self.device), integer).view(-1, 3) for i in order]
            if len(tables) == 1:
                flat = tables[0]
            elif tables:
                flat = torch.cat(tables)
            else:
                flat = torch.zeros(0, 3, device=self.device)
            if timer is not None:
                timer.images += len(rgbs)
        return PreparedImages(sizes, flat.to(self.device), offsets.to(self.device), groups)

    def _run(self, name: str, x: Tensor) -> NetOutput:
        """Forward one net on a channels_last batch; outputs back in float32."""
        if x.dtype != self.dtype:
            x = x.to(self.dtype)
        if self.dtype == torch.float32:
            with _without_tf32(self.device):
                return self.nets[name](x)
        out = self.nets[name](x)
        lm = None if out.landmarks is None else out.landmarks.float()
        return NetOutput(out.box.float(), lm, out.face.float())

    def pnet_stage(self, prep: PreparedImages, timer: StageTimer | None = None) -> Candidates:
        """P-Net over every pyramid scale of every image; returns the regressed, squared candidates."""
        s = self.settings
        found: list[Candidates] = []
        for group in prep.groups:
            h, w = prep.sizes[group[0]]
            tables = prep.group_integrals(group)
            group_index = torch.as_tensor(group, device=self.device)
            for scale in pyramid_scales(h, w, s.min_face_size, s.scale_factor):
                out_h, out_w = int(h * scale + 1), int(w * scale + 1)
                per_call, band = self._pnet_split(len(group), out_h, out_w)
                for first in range(0, len(group), per_call):
                    part = tables[first:first + per_call]
                    windows = self._pnet_level(part, h, w, out_h, out_w, scale, band, timer)
                    if len(windows):
                        with self._clock(timer, "nms"):  # within this scale, per image
                            groups = windows.image_index if len(part) > 1 else None
                            windows = windows.select(nms(windows.boxes, windows.scores, groups, s.nms_pnet_scale))
                        windows.image_index = group_index[first + windows.image_index]
                        found.append(windows)
        return self._merge_pnet(found, len(prep.sizes), timer)

    def _pnet_split(self, n_images: int, out_h: int, out_w: int) -> tuple[int, int | None]:
        """Images per P-Net call for one pyramid level, and P-Net output rows per band when one image is too big."""
        budget = self.settings.max_pnet_pixels
        if out_h * out_w <= budget:
            return max(1, budget // (out_h * out_w)), None
        return 1, max(1, (budget // out_w - 10) // 2)  # a band of r output rows reads 2r + 10 input rows

    def _pnet_level(self, tables: Tensor, h: int, w: int, out_h: int, out_w: int, scale: float,
                    band: int | None, timer: StageTimer | None) -> Candidates:
        """P-Net on one pyramid level of a few same-size images (in row bands when large): windows over threshold.

        A band of output rows [r0, r1) needs level rows [2 r0, 2 r1 + 10); the last band runs to the
        level's bottom edge, so the ceil-mode pooling sees the same partial window as a whole-level pass.
        """
        rows_i, cols_i = np.arange(out_h), np.arange(out_w)
        y0, y1 = (rows_i * h) // out_h, ((rows_i + 1) * h + out_h - 1) // out_h
        x0, x1 = (cols_i * w) // out_w, ((cols_i + 1) * w + out_w - 1) // out_w
        row_count = torch.from_numpy((y1 - y0).astype(np.float32)[:, None, None])
        col_count = torch.from_numpy((x1 - x0).astype(np.float32)[None, :, None])
        if self.device.type != "cpu":
            row_count, col_count = row_count.to(self.device), col_count.to(self.device)
        out_rows = math.ceil((out_h - 2) / 2) - 4  # P-Net output rows for this level
        starts = list(range(0, max(out_rows, 0), band or max(out_rows, 1)))
        if len(starts) > 1 and out_rows - starts[-1] < 2:
            starts.pop()  # a last band of one row would read fewer than 12 rows; the band before takes it
        parts = []
        for i, r0 in enumerate(starts):
            r1 = starts[i + 1] if i + 1 < len(starts) else out_rows
            in0, in1 = 2 * r0, (out_h if r1 == out_rows else 2 * r1 + 10)
            with self._clock(timer, "pyramid"):
                rows = take_difference(tables, y1[in0:in1], y0[in0:in1], dim=1)
                sums = take_difference(rows, x1, x0, dim=2)
                del rows
                level = _net_input(sums, row_count[in0:in1], col_count)
                del sums
            with self._clock(timer, "pnet"):
                out = self._run("pnet", level.permute(0, 3, 1, 2))
            with self._clock(timer, "boxes"):
                parts.append(self._windows(out, scale, r0))
            if timer is not None:
                timer.count("pnet_windows", len(parts[-1]))
        if len(parts) == 1:
            return parts[0]
        return _concat(parts) if parts else self._empty()

    def _windows(self, out: NetOutput, scale: float, row_offset: int) -> Candidates:
        """Windows whose face probability reaches the P-Net threshold, as boxes in image pixels."""
        prob = out.face[:, 1]
        where = (prob >= self.settings.thresholds[0]).nonzero()
        image, row, col = where.unbind(1)
        cells = torch.stack([col, row + row_offset], dim=1).float()
        top_left = ((2 * cells + 1) / scale).floor()
        bottom_right = ((2 * cells + 12) / scale).floor()
        boxes = torch.cat([top_left, bottom_right], dim=1)
        marks = None
        if out.landmarks is not None:
            marks = decode_landmarks(boxes, out.landmarks[image, :, row, col], inclusive=False)
        return Candidates(boxes, prob[image, row, col], image, marks, out.box[image, :, row, col])

    def _merge_pnet(self, found: list[Candidates], n_images: int, timer: StageTimer | None) -> Candidates:
        """NMS across the scales of each image, then box regression and squaring."""
        if not found:
            return self._empty()
        cands = _concat(found)
        with self._clock(timer, "nms"):
            groups = cands.image_index if n_images > 1 else None
            cands = cands.select(nms(cands.boxes, cands.scores, groups, self.settings.nms_pnet))
        with self._clock(timer, "boxes"):
            assert cands.offsets is not None  # set by _windows
            cands.boxes = square_boxes(apply_box_regression(cands.boxes, cands.offsets, inclusive=False))
            cands.offsets = None
        return cands

    @staticmethod
    def _nms_groups(prep: PreparedImages, cands: Candidates) -> Tensor | None:
        """NMS groups for per-image suppression (None when there is only one image)."""
        return cands.image_index if len(prep.sizes) > 1 else None

    def _empty(self) -> Candidates:
        """No candidates."""
        zero = torch.zeros(0, device=self.device)
        return Candidates(zero.view(0, 4), zero, zero.long(), None)

    def crop_regions(self, prep: PreparedImages, cands: Candidates) -> tuple[Tensor, Tensor]:
        """Integer pixel rectangles [N, 4] (x0, y0, x1, y1, end exclusive) the nets see, and a validity mask.

        As in the original cascade the box corners are truncated, the rectangle starts one pixel
        before them (1-based heritage) and is clipped to the image; boxes with no pixel inside are invalid.
        """
        sizes = torch.tensor(prep.sizes, dtype=torch.float32, device=self.device)[cands.image_index]
        corners = cands.boxes.trunc()
        x0 = corners[:, 0].clamp(min=1) - 1
        y0 = corners[:, 1].clamp(min=1) - 1
        x1 = torch.minimum(corners[:, 2], sizes[:, 1])
        y1 = torch.minimum(corners[:, 3], sizes[:, 0])
        valid = (x1 > x0) & (y1 > y0)
        regions = torch.stack([x0, y0, x1, y1], dim=1)
        regions = torch.minimum(regions, sizes[:, [1, 0, 1, 0]]).clamp(min=0).long()
        return regions, valid

    def crop_resize(self, prep: PreparedImages, image_index: Tensor, regions: Tensor, size: int) -> Tensor:
        """Area-resize each region to ``size x size`` from the integral images: [N, 3, size, size] channels_last,
        net scale."""
        sizes = torch.tensor(prep.sizes, device=self.device)[image_index]
        crops = area_resize(prep.flat, prep.offsets[image_index], sizes, regions, size, _net_input)
        return crops.permute(0, 3, 1, 2)

    def _classify(self, prep: PreparedImages, cands: Candidates, name: str, timer: StageTimer | None) -> Candidates:
        """Crop every candidate, run ``name`` in memory-bounded chunks, keep those over its threshold.

        The kept rows carry the net's score, its box offsets (not yet applied) and, when the net has
        a landmark head, landmarks decoded against the crop box.
        """
        size = NET_INPUT_SIZE[name]
        if len(cands) == 0:
            return cands
        with self._clock(timer, "crop"):
            regions, valid = self.crop_regions(prep, cands)
            if not bool(valid.all()):
                cands, regions = cands.select(valid), regions[valid]
        if timer is not None:
            timer.count(f"{name}_crops", len(cands))
        if len(cands) == 0:
            return cands
        chunk = max(1, self.settings.max_crops_per_batch * (24 * 24) // (size * size))
        parts: list[NetOutput] = []
        for start in range(0, len(cands), chunk):
            with self._clock(timer, "crop"):
                crops = self.crop_resize(prep, cands.image_index[start:start + chunk], regions[start:start + chunk],
                                         size)
            with self._clock(timer, name):
                parts.append(self._run(name, crops))
        with self._clock(timer, "boxes"):
            face = torch.cat([p.face for p in parts])[:, 1]
            keep = face > self.settings.thresholds[NET_NAMES.index(name)]
            boxes = cands.boxes[keep]
            marks = None
            if parts[0].landmarks is not None:
                marks = decode_landmarks(boxes, torch.cat([p.landmarks for p in parts])[keep], inclusive=True)  # type: ignore[misc]
            offsets = torch.cat([p.box for p in parts])[keep]
        return Candidates(boxes, face[keep], cands.image_index[keep], marks, offsets)

    def rnet_stage(self, prep: PreparedImages, cands: Candidates, timer: StageTimer | None = None) -> Candidates:
        """R-Net on the P-Net candidates: threshold, NMS, box regression, squaring."""
        kept = self._classify(prep, cands, "rnet", timer)
        if len(kept) == 0:
            return kept
        with self._clock(timer, "nms"):
            kept = kept.select(nms(kept.boxes, kept.scores, self._nms_groups(prep, kept), self.settings.nms_rnet))
        with self._clock(timer, "boxes"):
            assert kept.offsets is not None  # set by _classify
            kept.boxes = square_boxes(apply_box_regression(kept.boxes, kept.offsets, inclusive=True))
            kept.offsets = None
        return kept

    def onet_stage(self, prep: PreparedImages, cands: Candidates, timer: StageTimer | None = None) -> Candidates:
        """O-Net on the R-Net candidates: threshold, landmarks, box regression, min-overlap NMS."""
        kept = self._classify(prep, cands, "onet", timer)
        if len(kept) == 0:
            kept.landmarks = torch.zeros(0, 5, 2, device=self.device)
            return kept
        with self._clock(timer, "boxes"):
            assert kept.offsets is not None  # set by _classify
            kept.boxes = apply_box_regression(kept.boxes, kept.offsets, inclusive=True)
            kept.offsets = None
        with self._clock(timer, "nms"):
            keep = nms(kept.boxes, kept.scores, self._nms_groups(prep, kept), self.settings.nms_onet, mode="min")
        return kept.select(keep)

    def split(self, prep: PreparedImages, cands: Candidates, stage: str) -> list[Detections]:
        """Per-image Detections (sorted by falling score), as ordinary tensors usable outside inference mode."""
        order = torch.argsort(cands.scores, descending=True, stable=True)
        cands = cands.select(order)
        result = []
        with torch.inference_mode(False):
            for i in range(len(prep.sizes)):
                mine = cands.image_index == i
                lm = None if cands.landmarks is None else cands.landmarks[mine].clone()
                result.append(Detections(cands.boxes[mine].clone(), cands.scores[mine].clone(), lm, stage))
        return result

    def detect(self, images: Any, until: str = "onet", channel_order: str = "rgb",
               timer: StageTimer | None = None) -> list[Detections]:
        """Find faces in one image or a batch; returns one :class:`Detections` per image, on this device.

        ``images``: numpy HxWxC / NxHxWxC, PIL, torch CxHxW / NxCxHxW, or a list of any of these (sizes
        may differ). Numpy and torch inputs are RGB unless ``channel_order="bgr"``; uint8 or float 0..255.
        ``until="pnet"|"rnet"`` stops after that stage (hard-example mining, per-stage evaluation).
        ``timer`` (a :class:`StageTimer`) accumulates seconds per stage.
        """
        if until not in NET_NAMES:
            raise ValueError(f"until must be one of {NET_NAMES}, got {until!r}")
        with torch.inference_mode():
            prep = self.prepare(images, channel_order, timer)
            cands = self.pnet_stage(prep, timer)
            if timer is not None:
                timer.count("pnet_out", len(cands))
            if until != "pnet":
                cands = self.rnet_stage(prep, cands, timer)
                if timer is not None:
                    timer.count("rnet_out", len(cands))
            if until == "onet":
                cands = self.onet_stage(prep, cands, timer)
            with self._clock(timer, "boxes"):
                return self.split(prep, cands, until)

    __call__ = detect

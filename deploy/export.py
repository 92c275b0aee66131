"""Export P-Net, R-Net, O-Net and the embedder to ONNX, check each against PyTorch on real photos, and quantize
the embedder to int8.

    python -m deploy.export                                  # the four nets into paths.onnx, checked
    python -m deploy.export --int8                           # ... plus embedder_int8.onnx (calibrated)
    python -m deploy.export --set paths.pnet=../shared/pretrained/mtcnn_facenet_pytorch ... --nets pnet rnet onet

Each net goes through ``torch.onnx.export`` (the dynamo exporter; P-Net with dynamic batch, height and width,
the others with a dynamic batch) into memory, then onnxruntime runs it on the very inputs the PyTorch cascade
fed that net while detecting faces in real photos (the embedder: the faces aligned from those detections), and
only a file whose largest absolute difference stays within the tolerance is written (atomically). Beside each
``NAME.onnx`` a ``NAME.json`` records the source checkpoint and its SHA-256, the config, the export versions and
the check. After the three MTCNN nets, the whole cascade runs on ONNX Runtime over the same photos and must find
the same faces (every box matched at IoU >= 0.99).

Int8: ``onnxruntime.quantization.quantize_static`` (QDQ, per-channel int8 weights, uint8 activations whose ranges
are set by default at the 99.999th percentile) calibrated on a few hundred aligned training crops cut exactly as
training's validation crops are. Weights use 7 of their 8 bits (``reduce_range``): on x86 CPUs without VNNI
(AVX2 only, e.g. AMD Zen 2) onnxruntime multiplies uint8 by int8 with an instruction whose 16-bit pair sums
saturate, which with full-range weights cut the trained CelebA embedder's cosine to fp32 to 0.78. onnx, onnxscript and
onnxruntime come from ``requirements-export.txt``; the rest of the toolkit does not need them.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import json
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from config import load_config
from datasets.identity import IdentityFolder
from models.detector import Detections, DetectorSettings, FaceDetector
from models.embedder import Embedder
from models.face_preprocess import AlignSettings, EmbedderRecord, cut_faces, resize_crops
from models.mtcnn import NET_INPUT_SIZE, NET_NAMES, NetOutput
from models.onnx_nets import (
    EMBEDDER_OUTPUT,
    INPUT_NAME,
    MTCNN_OUTPUTS,
    ONNX_FILES,
    SIDECAR_FORMAT,
    make_session,
    require,
    sidecar_path,
)
from models.system import read_embedder
from models.weights import load_net, resolve_weights
from training.facenet.augment import AugmentSettings, augment
from training.facenet.crops import FaceCrops, training_side
from utils.atomic import atomic_path, atomic_write_text
from utils.boxes import detection_agreement
from utils.checkpoint import load_checkpoint
from utils.cli import add_config_args, config_from_args, run
from utils.errors import BadInputLog, DataError, ToolkitError
from utils.hashing import sha256_file
from utils.images import IMAGE_EXTENSIONS, read_image

EXPORT_NETS = (*NET_NAMES, "embedder")
DEFAULT_OPSET = 18  # runs on onnxruntime >= 1.14 and most other ONNX runtimes
DEFAULT_TOLERANCE = 1e-4  # largest |ONNX - PyTorch| accepted for an fp32 export (observed: ~1e-6)
BOX_IOU = 0.99  # the ONNX cascade must find every PyTorch box at this IoU (and nothing else)
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
DEFAULT_CALIBRATION = "percentile"  # on the synthetic preset: closest to fp32 in accuracy and AUC (README table)


class ExportCheckError(ToolkitError):
    """An exported model does not reproduce its PyTorch source within the tolerance."""


# --- export ---------------------------------------------------------------------------------------------------


class NamedOutputs(nn.Module):
    """An MTCNN net whose :class:`NetOutput` is flattened to the tensors an ONNX file names: box, face[, landmarks]."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        """The net's box offsets, face probabilities and (when it has the head) landmarks."""
        out = self.net(images)
        return (out.box, out.face) + (() if out.landmarks is None else (out.landmarks,))


class ExportPReLU(nn.Module):
    """``nn.PReLU`` written with ops ONNX Runtime runs fast; the same numbers, bit for bit.

    onnxruntime's ``PRelu`` kernel broadcasts per-channel slopes slowly (about 60% of the embedder's CPU time);
    ``Max(x, w * x)`` (valid when every slope is <= 1) and ``Relu(x) - w * Relu(-x)`` (any slopes) run as
    vectorised element-wise kernels (with the first, the exported embedder runs about 1.5x faster than PyTorch
    on one CPU thread, and its Mul quantizes).
    Each picks ``x`` or ``w * x`` exactly, as PReLU does.
    """

    def __init__(self, prelu: nn.PReLU) -> None:
        super().__init__()
        self.register_buffer("weight", prelu.weight.detach().clone())
        self.as_max = bool((self.weight <= 1).all())

    def forward(self, x: Tensor) -> Tensor:
        """PReLU of ``x`` ([N, C, ...], or any shape with one shared slope)."""
        w = self.weight.view(1, -1, *([1] * (x.dim() - 2))) if self.weight.numel() > 1 else self.weight
        if self.as_max:
            return torch.maximum(x, x * w)
        return torch.relu(x) - w * torch.relu(-x)


def export_friendly(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) whose PReLU layers are :class:`ExportPReLU`; the original is untouched."""
    model = copy.deepcopy(model).eval()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.PReLU):
                setattr(parent, name, ExportPReLU(child))
    return model


def mtcnn_output_names(net: nn.Module) -> list[str]:
    """The output names of an exported MTCNN net (box, face, and landmarks when it has that head)."""
    return list(MTCNN_OUTPUTS if net.has_landmarks else MTCNN_OUTPUTS[:2])


def export_bytes(model: nn.Module, example: Tensor, output_names: Sequence[str], dynamic: dict[int, tuple[str, int]],
                 opset: int = DEFAULT_OPSET) -> bytes:
    """``model`` (one input called ``images``; exported in eval mode, PReLU as :class:`ExportPReLU`) as a
    single-file ONNX model in memory. ``dynamic`` maps input axes to (name, smallest size); the other axes keep
    the example's sizes.
    """
    require("onnx")
    require("onnxscript")
    dims = {axis: torch.export.Dim(name, min=low) for axis, (name, low) in dynamic.items()}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # the exporter's progress prints
        warnings.simplefilter("ignore")
        program = torch.onnx.export(export_friendly(model), (example,), None, dynamo=True, external_data=False,
                                    dynamic_shapes={INPUT_NAME: dims}, input_names=[INPUT_NAME],
                                    output_names=list(output_names), opset_version=opset, verbose=False)
    if program is None:
        raise ExportCheckError("torch.onnx.export returned no program")
    return program.model_proto.SerializeToString()


def export_versions() -> dict[str, str]:
    """Versions of the libraries that made and checked the export (recorded in every sidecar)."""
    return {name: str(getattr(require(name), "__version__", "?")) for name in ("onnx", "onnxscript", "onnxruntime")} | {
        "torch": torch.__version__}


def write_checked(path: Path, data: bytes, check: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """Write ``data`` to ``path`` only if ``check`` (run on the written bytes, raising ExportCheckError) passes;
    returns the check's report. A failed check leaves any earlier file in place."""
    with atomic_path(path, suffix=".onnx") as tmp:
        tmp.write_bytes(data)
        return check(tmp)


def write_sidecar(onnx_path: Path, kind: str, source: Path, extra: dict[str, Any]) -> dict[str, Any]:
    """Write ``NAME.json`` beside ``NAME.onnx``: kind, hashes of the file and of its source checkpoint, versions,
    ``extra``."""
    meta = {"format": SIDECAR_FORMAT, "kind": kind, "file": onnx_path.name, "onnx_sha256": sha256_file(onnx_path),
            "source": str(source), "source_sha256": sha256_file(source), "versions": export_versions(), **extra}
    atomic_write_text(sidecar_path(onnx_path), json.dumps(meta, indent=2) + "\n")
    return meta


# --- checks ---------------------------------------------------------------------------------------------------


def max_abs_differences(reference: dict[str, Tensor], candidate: dict[str, Tensor]) -> dict[str, float]:
    """Largest absolute difference per named output."""
    return {name: float((reference[name].float() - candidate[name].float()).abs().max()) if reference[name].numel()
            else 0.0 for name in reference}


def net_output_dict(out: NetOutput) -> dict[str, Tensor]:
    """A NetOutput keyed by the exported output names."""
    values = {"box": out.box, "face": out.face}
    if out.landmarks is not None:
        values["landmarks"] = out.landmarks
    return values


def compare_mtcnn(net: nn.Module, onnx_file: Path, batches: Sequence[Tensor], threads: int = 0) -> dict[str, Any]:
    """Run the PyTorch net and the ONNX file on the same input batches: max |difference| per output, over all."""
    session = make_session(onnx_file, threads)
    names = [o.name for o in session.get_outputs()]
    worst: dict[str, float] = {}
    with torch.inference_mode():
        for batch in batches:
            x = batch.contiguous().float()
            reference = net_output_dict(net.eval()(x))
            values = session.run(names, {INPUT_NAME: x.numpy()})
            got = {name: torch.from_numpy(v) for name, v in zip(names, values)}
            if set(got) != set(reference):
                raise ExportCheckError(f"{onnx_file.name}: outputs {sorted(got)} differ from PyTorch's "
                                       f"{sorted(reference)}")
            for name, diff in max_abs_differences(reference, got).items():
                worst[name] = max(worst.get(name, 0.0), diff)
    shapes = sorted({tuple(b.shape[1:]) for b in batches})
    return {"batches": len(batches), "inputs": int(sum(len(b) for b in batches)),
            "input_shapes": [list(s) for s in shapes],
            "max_abs_diff": worst}


def compare_embedder(model: Embedder, onnx_file: Path, faces: Tensor, threads: int = 0) -> dict[str, Any]:
    """Run the PyTorch embedder and the ONNX file on the same faces: max |difference| and cosine similarities."""
    session = make_session(onnx_file, threads)
    x = faces.float()
    with torch.inference_mode():
        reference = model.eval()(x)
    got = torch.from_numpy(session.run([EMBEDDER_OUTPUT], {INPUT_NAME: x.numpy()})[0])
    cosine = (reference * got).sum(dim=1) / (reference.norm(dim=1) * got.norm(dim=1)).clamp(min=1e-12)
    return {"faces": len(faces),
            "max_abs_diff": max_abs_differences({EMBEDDER_OUTPUT: reference}, {EMBEDDER_OUTPUT: got}),
            "min_cosine": float(cosine.min()), "mean_cosine": float(cosine.mean())}


def check_within(report: dict[str, Any], tolerance: float, what: str) -> dict[str, Any]:
    """Raise ExportCheckError when any output's max |difference| exceeds ``tolerance``; else return the report."""
    report["tolerance"] = tolerance
    over = {name: diff for name, diff in report["max_abs_diff"].items() if not diff <= tolerance}
    if over:
        worst = ", ".join(f"{name} {diff:.3g}" for name, diff in over.items())
        raise ExportCheckError(f"{what}: ONNX Runtime differs from PyTorch by {worst} (tolerance {tolerance:g}); "
                               "nothing was written")
    return report


def compare_detections(reference: Sequence[Detections], candidate: Sequence[Detections],
                       iou: float = BOX_IOU) -> dict[str, Any]:
    """Two detectors' faces, image by image (``utils.boxes.detection_agreement`` over every face, any score):
    faces each found, faces of either with no partner at IoU >= ``iou`` in the other, and the mean landmark
    distance (pixels) of matched faces."""
    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} reference images but {len(candidate)} candidate images")
    totals: dict[str, float] = {}
    for a, b in zip(reference, candidate):
        agreement = detection_agreement(a.boxes.cpu(), a.scores.cpu(), b.boxes.cpu(), b.scores.cpu(),
                                        None if a.landmarks is None else a.landmarks.cpu(),
                                        None if b.landmarks is None else b.landmarks.cpu(), min_score=0.0, min_iou=iou)
        for key, value in agreement.items():
            totals[key] = totals.get(key, 0.0) + value
    pairs = totals.get("landmark_pairs", 0.0)
    return {"images": len(reference), "faces_reference": int(totals.get("confident_a", 0)),
            "faces_candidate": int(totals.get("confident_b", 0)),
            "unmatched": int(totals.get("missed_by_b", 0) + totals.get("missed_by_a", 0)), "iou_threshold": iou,
            "landmark_distance": totals.get("landmark_distance_sum", 0.0) / pairs if pairs else 0.0}


class _Recorder:
    """Stands in for one net of a detector: runs it and keeps (up to ``limit``) the batches it was fed."""

    def __init__(self, net: Callable[[Tensor], NetOutput], limit: int) -> None:
        self.net, self.limit, self.batches = net, limit, []

    def __call__(self, x: Tensor) -> NetOutput:
        if len(self.batches) < self.limit:
            self.batches.append(x.detach().to("cpu", copy=True).contiguous())
        return self.net(x)


def cascade_inputs(detector: FaceDetector, images: Sequence[np.ndarray], limit: int = 16
                   ) -> tuple[dict[str, list[Tensor]], list[Detections]]:
    """Detect faces in real photos with ``detector`` while keeping the input batches each net was fed (up to
    ``limit`` per net: P-Net pyramid levels, R-Net and O-Net crops); returns them and the detections."""
    originals = dict(detector.nets)
    recorders = {name: _Recorder(net, limit) for name, net in originals.items()}
    detector.nets.update(recorders)
    try:
        detections = [d.to("cpu") for d in detector.detect(list(images))]
    finally:
        detector.nets.update(originals)
    return {name: r.batches for name, r in recorders.items()}, detections


def aligned_faces(images: Sequence[np.ndarray], detections: Sequence[Detections], input_size: int,
                  cut: AlignSettings) -> Tensor:
    """Every detected face cut as the embedder's faces are (:func:`models.face_preprocess.cut_faces` with
    ``cut``), then resized to ``input_size``: uint8 [N, 3, input_size, input_size]."""
    crops = [crop for image, found in zip(images, detections) if len(found)
             for crop in cut_faces(image, found, cut.size, cut.margin, cut.method) if crop is not None]
    if not crops:
        return torch.empty(0, 3, input_size, input_size, dtype=torch.uint8)
    return resize_crops(torch.stack(crops), input_size)


def photo_paths(sources: Sequence[str | Path], count: int) -> list[Path]:
    """Up to ``count`` image files: the given files, and the images under given folders (sorted, recursive)."""
    found: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise DataError(path, "check images: no such file or folder")
    if not found:
        raise DataError(", ".join(str(s) for s in sources), "check images: no image files found")
    return found[:count]


# --- int8 -----------------------------------------------------------------------------------------------------


def quantize_int8(fp32_path: Path, out_path: Path, calibration: Tensor, method: str = DEFAULT_CALIBRATION,
                  batch_size: int = 32) -> None:
    """Static int8 quantization of an exported model: QDQ format, per-channel signed int8 weights, uint8
    activations whose ranges come from ``calibration`` (float 0..255 inputs) by ``method``; written atomically."""
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}")
    if len(calibration) == 0:
        raise DataError(fp32_path, "no calibration images to quantize with")
    quant = require("onnxruntime.quantization")
    from onnxruntime.quantization.shape_inference import quant_pre_process
    methods = {"minmax": quant.CalibrationMethod.MinMax, "entropy": quant.CalibrationMethod.Entropy,
               "percentile": quant.CalibrationMethod.Percentile}

    # Equal batches (the largest divisor of the count up to batch_size): the histogram methods stack them.
    batch_size = max(d for d in range(1, min(batch_size, len(calibration)) + 1) if len(calibration) % d == 0)

    class Batches(quant.CalibrationDataReader):
        """The calibration images as onnxruntime reads them: one input dict per ``get_next``, then None."""

        def __init__(self) -> None:
            self.chunks = iter([{INPUT_NAME: calibration[i:i + batch_size].float().contiguous().numpy()}
                                for i in range(0, len(calibration), batch_size)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.chunks, None)

    with tempfile.TemporaryDirectory(prefix=".quant.", dir=out_path.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # the calibrators print
            warnings.simplefilter("ignore")
            # onnxruntime's symbolic shape inference cannot follow the exporter's Expand nodes; ONNX's own suffices.
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
            with atomic_path(out_path, suffix=".onnx") as target:
                quant.quantize_static(str(prepared), str(target), Batches(), quant_format=quant.QuantFormat.QDQ,
                                      per_channel=True, activation_type=quant.QuantType.QUInt8,
                                      weight_type=quant.QuantType.QInt8, calibrate_method=methods[method],
                                      reduce_range=True)


def calibration_faces(config: Any, root: Path, count: int, input_size: int, seed: int = 0) -> Tensor:
    """``count`` aligned training crops from the identity folders under ``root`` (drawn evenly at random), cut as
    training's validation crops are (centre of the train_size framing, at ``input_size``): float 0..255."""
    folder = IdentityFolder(root)
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(len(folder.samples), size=min(count, len(folder.samples)), replace=False))
    sized = dataclasses.replace(config, facenet=dataclasses.replace(config.facenet, input_size=input_size))
    crops = FaceCrops([folder.samples[i][0] for i in picks], [folder.samples[i][1] for i in picks],
                      training_side(sized), preload=True, workers=0, log=BadInputLog(strict=config.runtime.strict))
    assert crops.images is not None  # preloaded
    return augment(crops.images, input_size, AugmentSettings(random_crop=False, flip=False))


# --- the command ----------------------------------------------------------------------------------------------


def get_args_parser() -> argparse.ArgumentParser:
    """The command line (every flag explained in ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m deploy.export",
        description="Export P-Net, R-Net, O-Net and the embedder to ONNX (P-Net: dynamic batch, height, width; the "
                    "others: dynamic batch), check each against PyTorch with onnxruntime on real photos, and write "
                    "NAME.onnx + NAME.json (config, source checkpoint and its SHA-256, the check) atomically. "
                    "Needs the packages in requirements-export.txt.")
    parser.add_argument("--output-dir", metavar="DIR", default=None,
                        help="where the .onnx files and their .json sidecars go (default: paths.onnx)")
    parser.add_argument("--nets", nargs="+", choices=EXPORT_NETS, default=list(EXPORT_NETS),
                        help="which nets to export (default: all four); the MTCNN nets come from paths.pnet/rnet/onet, "
                             "the embedder from --embedder")
    parser.add_argument("--embedder", metavar="FILE", default=None,
                        help="embedder checkpoint to export (default: paths.embedder)")
    parser.add_argument("--int8", action="store_true",
                        help="also write embedder_int8.onnx: static int8 quantization (QDQ, per-channel) calibrated "
                             "on aligned training crops")
    parser.add_argument("--calibration", metavar="DIR", default=None,
                        help="with --int8: identity folders of aligned training crops to calibrate on "
                             "(default: the first root of facenet.train_images)")
    parser.add_argument("--calibration-count", type=int, default=300,
                        help="with --int8: how many crops to calibrate on (default: 300)")
    parser.add_argument("--calibration-method", choices=CALIBRATION_METHODS, default=DEFAULT_CALIBRATION,
                        help="with --int8: how activation ranges are set from the calibration crops: minmax (full "
                             "observed range), entropy, percentile (99.999%% of |values|; default)")
    parser.add_argument("--check-images", metavar="PATH", nargs="+", default=None,
                        help="photos (files or folders) the checks run on: the cascade's own inputs to each net, and "
                             "the faces it aligns for the embedder (default: <paths.wider_face>/WIDER_val/images)")
    parser.add_argument("--check-count", type=int, default=8, help="how many check photos to use (default: 8)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help=f"largest |ONNX - PyTorch| accepted per output for the fp32 exports (default: "
                             f"{DEFAULT_TOLERANCE:g}); a net over it is not written and the command fails")
    parser.add_argument("--int8-min-cosine", type=float, default=0.95,
                        help="with --int8: lowest cosine similarity accepted between int8 and PyTorch embeddings of "
                             "the check faces (default: 0.95)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset to write (default: {DEFAULT_OPSET})")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for PyTorch and onnxruntime while checking (default: 0, the libraries' own)")
    add_config_args(parser)
    return parser


def export_mtcnn_net(name: str, source: str | Path, out_dir: Path, batches: Sequence[Tensor],
                     detector_config: dict[str, Any], tolerance: float = DEFAULT_TOLERANCE,
                     opset: int = DEFAULT_OPSET, threads: int = 0) -> dict[str, Any]:
    """Export one MTCNN net from its weights ``source`` (file or folder) to ``out_dir/NAME.onnx``, checked on
    ``batches`` (real inputs of that net); returns the sidecar it wrote."""
    net = load_net(source, name).eval()
    size = NET_INPUT_SIZE[name]
    if name == "pnet":
        example, dynamic = (torch.zeros(2, 3, 3 * size, 4 * size),
                            {0: ("batch", 1), 2: ("height", size), 3: ("width", size)})
    else:
        example, dynamic = torch.zeros(2, 3, size, size), {0: ("batch", 1)}
    data = export_bytes(NamedOutputs(net), example, mtcnn_output_names(net), dynamic, opset)
    path = out_dir / ONNX_FILES[name]
    check = write_checked(path, data,
                          lambda tmp: check_within(compare_mtcnn(net, tmp, batches, threads), tolerance, path.name))
    axes = ["batch", 3, "height", "width"] if name == "pnet" else ["batch", 3, size, size]
    return write_sidecar(path, name, resolve_weights(source, name), {
        "precision": "fp32", "opset": opset, "inputs": {INPUT_NAME: axes}, "outputs": mtcnn_output_names(net),
        "input_scale": "(pixel - 127.5) / 128, RGB, N x 3 x H x W", "config": {"detector": detector_config},
        "check": check})


def load_embedder_for_export(checkpoint: Path) -> tuple[Embedder, dict[str, Any]]:
    """The PyTorch embedder of a toolkit checkpoint (CPU, eval) and its ``embedder`` architecture record."""
    model, _ = read_embedder(checkpoint, torch.device("cpu"))
    return model, dict(load_checkpoint(checkpoint)["embedder"])


def embedder_faces(images: Sequence[np.ndarray], detections: Sequence[Detections], model: Embedder,
                   arch: dict[str, Any], align_config: Any) -> Tensor:
    """The detected faces cut as the embedder's record says its faces were (``align_config`` when it records
    none), at the embedder's input size: uint8 [N, 3, s, s]."""
    cut = EmbedderRecord.from_dict(arch).align or AlignSettings(align_config.eval_size, align_config.margin,
                                                                align_config.method)
    return aligned_faces(images, detections, model.input_size, cut)


def export_embedder(model: Embedder, arch: dict[str, Any], checkpoint: Path, out_dir: Path, faces: Tensor,
                    tolerance: float = DEFAULT_TOLERANCE, opset: int = DEFAULT_OPSET,
                    threads: int = 0) -> dict[str, Any]:
    """Export the embedder of ``checkpoint`` (``model`` with its ``arch`` record) to ``out_dir/embedder.onnx``
    (pixels 0..255 in, unit embeddings out), checked on ``faces``; returns the sidecar it wrote."""
    side = model.input_size
    data = export_bytes(model, torch.zeros(2, 3, side, side), [EMBEDDER_OUTPUT], {0: ("batch", 1)}, opset)
    path = out_dir / ONNX_FILES["embedder"]
    check = write_checked(path, data, lambda tmp: check_within(compare_embedder(model, tmp, faces, threads), tolerance,
                                                              path.name))
    return write_sidecar(path, "embedder", checkpoint, {
        "precision": "fp32", "opset": opset, "inputs": {INPUT_NAME: ["batch", 3, side, side]},
        "outputs": [EMBEDDER_OUTPUT], "input_scale": "RGB pixels 0..255 (standardised inside)",
        "embedder": arch, "check": check})


def export_embedder_int8(model: Embedder, checkpoint: Path, out_dir: Path, calibration: Tensor, faces: Tensor,
                         method: str = DEFAULT_CALIBRATION, min_cosine: float = 0.95, calibration_source: str = "",
                         threads: int = 0) -> dict[str, Any]:
    """Quantize ``out_dir/embedder.onnx`` to ``embedder_int8.onnx`` on ``calibration`` faces and check it against
    the PyTorch ``model`` on ``faces`` (lowest cosine similarity >= ``min_cosine``); returns the sidecar."""
    fp32 = out_dir / ONNX_FILES["embedder"]
    meta = json.loads(sidecar_path(fp32).read_text(encoding="utf-8"))
    path = out_dir / ONNX_FILES["embedder_int8"]
    with tempfile.TemporaryDirectory(prefix=".int8.", dir=out_dir) as tmp:
        staged = Path(tmp) / path.name
        quantize_int8(fp32, staged, calibration, method)
        check = compare_embedder(model, staged, faces, threads)
        if not check["min_cosine"] >= min_cosine:
            raise ExportCheckError(f"{path.name}: lowest cosine similarity to PyTorch {check['min_cosine']:.4f} < "
                                   f"{min_cosine} (try --calibration-method or more --calibration-count); "
                                   f"nothing was written")
        check["min_cosine_required"] = min_cosine
        write_checked(path, staged.read_bytes(), lambda _: check)
    return write_sidecar(path, "embedder", checkpoint, {
        "precision": "int8", "opset": meta.get("opset"), "inputs": meta["inputs"], "outputs": meta["outputs"],
        "input_scale": meta["input_scale"], "embedder": meta["embedder"], "quantized_from": fp32.name,
        "quantization": {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ",
                         "weights": "int8 per-channel, 7-bit range",
                         "activations": "uint8", "calibration_method": method, "calibration_images": len(calibration),
                         "calibration_source": calibration_source},
        "check": check})


def _format_check(meta: dict[str, Any]) -> str:
    """One report line of a sidecar's check."""
    check = meta["check"]
    diffs = ", ".join(f"{k} {v:.2e}" for k, v in check["max_abs_diff"].items())
    what = (f"{check['faces']} faces" if "faces" in check
            else f"{check['inputs']} inputs in {check['batches']} batch(es)")
    extra = f", min cosine {check['min_cosine']:.5f}" if "min_cosine" in check else ""
    return f"  {meta['file']:<20} {meta['precision']:<5} max |onnx - torch|: {diffs}{extra} ({what})"


def main(args: argparse.Namespace) -> int:
    """Export the requested nets, check each, print the report; returns the exit code."""
    config = config_from_args(args, load_config)
    for name in ("onnx", "onnxscript", "onnxruntime"):
        require(name)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    out_dir = Path(args.output_dir) if args.output_dir else config.path("onnx")
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = args.check_images or [config.path("wider_face") / "WIDER_val" / "images"]
    photos = photo_paths(sources, args.check_count)
    images = [read_image(p) for p in photos]
    settings = DetectorSettings.from_config(config.detector)
    mtcnn_sources = {name: config.path(name) for name in NET_NAMES}
    detector = FaceDetector.from_checkpoints(*mtcnn_sources.values(), settings=settings, device="cpu")
    batches, detections = cascade_inputs(detector, images)
    print(f"checking on {len(photos)} photos ({sum(len(d) for d in detections)} faces found by PyTorch), "
          f"e.g. {photos[0]}")
    written = []
    detector_record = {k: v for k, v in dataclasses.asdict(config.detector).items() if k != "backend"}
    for name in NET_NAMES:
        if name in args.nets:
            written.append(export_mtcnn_net(name, mtcnn_sources[name], out_dir, batches[name],
                                             detector_record, args.tolerance, args.opset, args.threads))
            print(_format_check(written[-1]))
    if all(name in args.nets for name in NET_NAMES):
        onnx_detector = FaceDetector.from_checkpoints(out_dir, out_dir, out_dir, settings=settings, device="cpu",
                                                      backend="onnx")
        same = compare_detections(detections, [d.to("cpu") for d in onnx_detector.detect(images)])
        print(f"  cascade on ONNX Runtime: {same['faces_candidate']} faces vs {same['faces_reference']} with PyTorch, "
              f"{same['unmatched']} without a partner at IoU >= {BOX_IOU}, "
              f"landmarks {same['landmark_distance']:.2g} px apart")
        if same["unmatched"]:
            raise ExportCheckError(f"the ONNX cascade in {out_dir} finds other faces than PyTorch's "
                                   f"on the check photos")
    if "embedder" in args.nets:
        checkpoint = Path(args.embedder) if args.embedder else config.path("embedder")
        model, arch = load_embedder_for_export(checkpoint)
        faces = embedder_faces(images, detections, model, arch, config.align)
        if len(faces) == 0:
            raise DataError(sources[0], "no face found in the check photos to check the embedder on")
        meta = export_embedder(model, arch, checkpoint, out_dir, faces, args.tolerance, args.opset, args.threads)
        print(_format_check(meta))
        if args.int8:
            root = Path(args.calibration) if args.calibration else config.train_roots()[0]
            calibration = calibration_faces(config, root, args.calibration_count, model.input_size, config.runtime.seed)
            meta = export_embedder_int8(model, checkpoint, out_dir, calibration, faces, args.calibration_method,
                                        args.int8_min_cosine, str(root), args.threads)
            print(_format_check(meta))
    print(f"written to {out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main, get_args_parser()))

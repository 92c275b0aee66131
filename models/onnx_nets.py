"""ONNX Runtime versions of the MTCNN nets and the embedder, shaped like the PyTorch ones they were exported from.

``python -m deploy.export`` writes ``pnet.onnx``, ``rnet.onnx``, ``onet.onnx``, ``embedder.onnx`` (and
``embedder_int8.onnx``), each with a JSON sidecar (same name, ``.json``) recording the source checkpoint's
SHA-256, the config and the check against PyTorch. Here they are loaded back:

* :class:`OnnxNet` is called like a P/R/O-Net (float tensor in, :class:`~models.mtcnn.NetOutput` out), so
  ``FaceDetector`` runs its one cascade on it unchanged (``FaceDetector.from_checkpoints(..., backend="onnx")``);
* :class:`OnnxEmbedder` has the ``Embedder`` inference interface (``embed``, ``input_size``,
  ``embedding_size``), so the system, the matcher and ``training.facenet.validation.evaluate`` take it as they are.

``onnxruntime`` is optional (``requirements-export.txt``): it is imported on first use, and its absence is
one clear error naming that file.
"""
from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from models.embedder import embed_in_batches
from models.face_preprocess import EmbedderRecord
from models.mtcnn import NET_INPUT_SIZE, NET_NAMES, NetOutput
from utils.errors import DataError, ToolkitError
from utils.hashing import sha256_file

EXPORT_REQUIREMENTS = "requirements-export.txt"
SIDECAR_FORMAT = "face-toolkit-onnx/1"
ONNX_FILES = {"pnet": "pnet.onnx", "rnet": "rnet.onnx", "onet": "onet.onnx",
              "embedder": "embedder.onnx", "embedder_int8": "embedder_int8.onnx"}
EMBEDDER_VARIANTS = ("embedder", "embedder_int8")
INPUT_NAME = "images"
MTCNN_OUTPUTS = ("box", "face", "landmarks")  # NetOutput order is (box, landmarks, face); files name each
EMBEDDER_OUTPUT = "embeddings"


class MissingDependencyError(ToolkitError, ImportError):
    """An optional package (onnx, onnxscript, onnxruntime) is needed for what was asked and is not installed."""


def require(module: str) -> ModuleType:
    """Import an optional export/runtime package, or raise one line saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(
            f"{module} is not installed; ONNX export and the ONNX backend need the optional packages in "
            f"{EXPORT_REQUIREMENTS} (pip install -r {EXPORT_REQUIREMENTS})") from None


def sidecar_path(onnx_path: str | Path) -> Path:
    """The JSON file written beside an exported ``.onnx`` file (same name, ``.json`` suffix)."""
    return Path(onnx_path).with_suffix(".json")


def read_sidecar(onnx_path: str | Path, kind: str) -> dict[str, Any]:
    """The sidecar of ``onnx_path``, checked: right format and kind, and describing these very bytes (SHA-256)."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise DataError(onnx_path, f"exported {kind} not found (write it with `python -m deploy.export`)")
    meta_path = sidecar_path(onnx_path)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(meta_path, "sidecar JSON of the exported model is missing; export again") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(meta_path, f"unreadable sidecar JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
        raise DataError(meta_path, f"not a {SIDECAR_FORMAT} sidecar")
    if meta.get("kind") != kind:
        raise DataError(meta_path, f"describes a {meta.get('kind')!r} export, expected {kind!r}")
    if meta.get("onnx_sha256") != sha256_file(onnx_path):
        raise DataError(onnx_path, f"content does not match its sidecar {meta_path.name} (export again)")
    return meta


def resolve_onnx(source: str | Path, name: str) -> Path:
    """The ``.onnx`` file of ``name`` (a key of ONNX_FILES) given that file or the folder holding it."""
    path = Path(source)
    return path / ONNX_FILES[name] if path.is_dir() else path


def providers_for(device: torch.device | str | None) -> list[str]:
    """Execution providers for ``device``: CUDA first when asked for and present in this onnxruntime, then CPU."""
    ort = require("onnxruntime")
    wanted = ["CPUExecutionProvider"]
    if (device is not None and torch.device(device).type == "cuda"
            and "CUDAExecutionProvider" in ort.get_available_providers()):
        wanted.insert(0, "CUDAExecutionProvider")
    return wanted


def make_session(path: str | Path, threads: int = 0, device: torch.device | str | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` with full graph optimisation; ``threads`` 0: onnxruntime's default."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle pool threads sleep instead of spinning: the cascade does NumPy/PyTorch work between net calls, and
    # spinning threads would take those cores (same speed on 1 thread, far less CPU burnt on shared machines).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads > 0:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=providers_for(device))
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable or invalid models
        raise DataError(path, f"onnxruntime cannot load this model "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from None


def _numpy_input(x: Tensor) -> np.ndarray:
    """A float32 C-contiguous CPU array of ``x`` (channels-last tensors are repacked)."""
    return np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())


class OnnxNet:
    """An exported P/R/O-Net on ONNX Runtime, called like the PyTorch net: [N, 3, H, W] float in (scaled to
    [-1, 1]), :class:`NetOutput` (box offsets, landmarks or None, face probabilities) out, on the input's device."""

    def __init__(self, path: str | Path, name: str, threads: int = 0, device: torch.device | str | None = None) -> None:
        if name not in NET_NAMES:
            raise ValueError(f"unknown MTCNN net {name!r}; expected one of {', '.join(NET_NAMES)}")
        require("onnxruntime")  # the missing package is the first thing to hear about
        self.path = Path(path)
        self.meta = read_sidecar(self.path, name)
        self.name = name
        self.input_size = NET_INPUT_SIZE[name]
        self.session = make_session(self.path, threads, device)
        self.outputs = [o.name for o in self.session.get_outputs()]
        if sorted(self.outputs) not in (sorted(MTCNN_OUTPUTS[:2]), sorted(MTCNN_OUTPUTS)):
            raise DataError(self.path, f"outputs {self.outputs} are not {', '.join(MTCNN_OUTPUTS)}")

    @property
    def has_landmarks(self) -> bool:
        """Whether this net predicts the five landmarks."""
        return "landmarks" in self.outputs

    def __call__(self, x: Tensor) -> NetOutput:
        """Run the net on a batch; the outputs come back as float32 tensors on ``x``'s device."""
        values = dict(zip(self.outputs, self.session.run(self.outputs, {INPUT_NAME: _numpy_input(x)})))
        out = {name: torch.from_numpy(value).to(x.device) for name, value in values.items()}
        return NetOutput(out["box"], out.get("landmarks"), out["face"])

    def __repr__(self) -> str:
        return f"OnnxNet({self.name}, {self.path})"


def load_onnx_net(source: str | Path, name: str, threads: int = 0, device: torch.device | str | None = None) -> OnnxNet:
    """The exported ``name`` net from its ``.onnx`` file or the export folder (``pnet.onnx`` etc. inside)."""
    return OnnxNet(resolve_onnx(source, name), name, threads, device)


class OnnxEmbedder:
    """An exported embedder (fp32 or int8) on ONNX Runtime with the inference interface of ``Embedder``:
    ``embed`` (batched, optional flip test-time augmentation), ``input_size``, ``embedding_size``.

    ``source_sha256`` is the SHA-256 of the PyTorch checkpoint it was exported from: matchers and galleries
    made with that checkpoint apply to it. ``record`` is the checkpoint's embedder record (with how its faces were cut).
    """

    def __init__(self, path: str | Path, threads: int = 0, device: torch.device | str | None = None) -> None:
        require("onnxruntime")
        self.path = Path(path)
        self.meta = read_sidecar(self.path, "embedder")
        try:
            self.record = EmbedderRecord.from_dict(self.meta.get("embedder"))
            self.source_sha256 = str(self.meta["source_sha256"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(sidecar_path(self.path), f"sidecar lacks a complete embedder record or source_sha256 "
                                                     f"({type(exc).__name__}: {exc})") from None
        self.input_size, self.embedding_size = self.record.input_size, self.record.embedding_size
        self.precision = str(self.meta.get("precision", "fp32"))
        self.session = make_session(self.path, threads, device)

    def __call__(self, images: Tensor) -> Tensor:
        """[N, 3, input_size, input_size] pixels 0..255 -> [N, D] L2-normalised embeddings (float32, CPU)."""
        return torch.from_numpy(self.session.run([EMBEDDER_OUTPUT], {INPUT_NAME: _numpy_input(images)})[0])

    def embed(self, images: Tensor | Sequence[np.ndarray], batch_size: int = 64, flip: bool = False,
              device: torch.device | str | None = None) -> Tensor:
        """Embed images (uint8 [N,3,H,W] tensor or HxWx3 RGB arrays) as ``Embedder.embed`` does; [N, D] on CPU.
        ``device`` is accepted for interface parity; the session's providers decide where it runs."""
        return embed_in_batches(self, images, self.input_size, self.embedding_size, batch_size, flip)

    def eval(self) -> OnnxEmbedder:
        """Nothing to switch (an exported graph is inference-only); returns self, as ``nn.Module.eval`` does."""
        return self

    def __repr__(self) -> str:
        return f"OnnxEmbedder({self.path}, {self.precision}, {self.input_size}px -> {self.embedding_size})"


def load_onnx_embedder(source: str | Path, int8: bool = False, threads: int = 0,
                       device: torch.device | str | None = None) -> OnnxEmbedder:
    """The exported embedder from its ``.onnx`` file or the export folder (``embedder.onnx`` or, with ``int8``,
    ``embedder_int8.onnx``)."""
    return OnnxEmbedder(resolve_onnx(source, "embedder_int8" if int8 else "embedder"), threads, device)

"""Import and export of MTCNN weights: the original release and this toolkit's own checkpoints.

Where weights come from (a *source*, as ``config.py`` stores it per net):

* a ``.pt`` file: either a plain ``state_dict`` (the original release, or an export with
  ``plain=True``) or this toolkit's checkpoint dict ``{"model": state_dict, "kind": "pnet", ...}``
  as written by training (``utils/checkpoint.py``) and by :func:`save_net` (``"net"`` is read as ``"kind"``);
* a folder holding ``pnet.pt``, ``rnet.pt`` and ``onet.pt`` (e.g. ``../shared/pretrained/mtcnn_facenet_pytorch``);
* the word ``"facenet-pytorch"``: the same original files inside an installed ``facenet-pytorch`` wheel
  (``pip install --no-deps facenet-pytorch==2.6.0``), found through package metadata without importing it;
* a model-zoo entry's name (``mtcnn_wider`` or ``weights/mtcnn_wider``; see ``models/zoo.py``).

Everything is read with ``torch.load(..., weights_only=True)``; a file that is not a checkpoint, or is a
checkpoint of another net or with other shapes, raises :class:`utils.errors.DataError` naming the file.
"""
from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from models.mtcnn import NET_NAMES, build_net
from models.zoo import resolve_entry
from utils.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from utils.errors import DataError

WHEEL_SOURCE = "facenet-pytorch"
WHEEL_DISTRIBUTION = "facenet-pytorch"
WHEEL_DATA_DIR = "facenet_pytorch/data"
LANDMARK_HEADS = {"pnet": "conv4_3", "rnet": "dense5_3", "onet": "dense6_3"}
# A key that only this net has: used to name the net a wrong checkpoint belongs to.
SIGNATURE_KEYS = {"pnet": "conv4_1.weight", "rnet": "dense5_1.weight", "onet": "dense6_1.weight"}


def wheel_weights_dir() -> Path:
    """The folder of original weights inside the installed facenet-pytorch wheel; DataError when absent."""
    try:
        dist = importlib.metadata.distribution(WHEEL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise DataError(WHEEL_SOURCE, "package not installed; run `pip install --no-deps facenet-pytorch==2.6.0` "
                        "or point the model paths at a folder with pnet.pt, rnet.pt, onet.pt") from None
    folder = Path(str(dist.locate_file(WHEEL_DATA_DIR)))
    if not (folder / "pnet.pt").is_file():
        raise DataError(folder, "the installed facenet-pytorch has no MTCNN weight files here")
    return folder


def resolve_weights(source: str | Path, net: str) -> Path:
    """Turn a weight source (file, folder, zoo entry name, or "facenet-pytorch") into the file holding ``net``'s
    weights."""
    if net not in NET_NAMES:
        raise ValueError(f"unknown MTCNN net {net!r}; expected one of {', '.join(NET_NAMES)}")
    if str(source) == WHEEL_SOURCE:
        return wheel_weights_dir() / f"{net}.pt"
    path = resolve_entry(source)
    if path.is_dir():
        path = path / f"{net}.pt"
    if not path.is_file():
        raise DataError(path, f"{net} weights not found")
    return path


def original_weight_paths(source: str | Path = WHEEL_SOURCE) -> dict[str, Path]:
    """Paths of the three original weight files in a folder or in the installed wheel, keyed by net name."""
    return {net: resolve_weights(source, net) for net in NET_NAMES}


def _net_of_state_dict(state: Mapping[str, Any]) -> str | None:
    """Which MTCNN net a state_dict belongs to, judged by its output-head keys (None when unknown)."""
    for net, key in SIGNATURE_KEYS.items():
        if key in state:
            return net
    return None


def read_state_dict(path: str | Path, net: str) -> dict[str, Tensor]:
    """Read ``net``'s state_dict from a plain-state_dict file or a toolkit checkpoint dict."""
    payload = load_checkpoint(path)
    if isinstance(payload.get("model"), Mapping):
        stored_net = payload.get("kind", payload.get("net"))
        if stored_net is not None and stored_net != net:
            raise DataError(path, f"this is a {stored_net} checkpoint, expected {net}")
        payload = payload["model"]
    state = dict(payload)
    if not state or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise DataError(path, "checkpoint is not a state_dict of tensors")
    found = _net_of_state_dict(state)
    if found is None:
        raise DataError(path, f"no MTCNN output layer in this state_dict (keys: {', '.join(list(state)[:6])}...)")
    if found != net:
        raise DataError(path, f"this state_dict is a {found}, expected {net}")
    return state


def load_state_into(model: nn.Module, state: Mapping[str, Tensor], net: str, path: str | Path) -> list[str]:
    """Load ``state`` into ``model``; only the landmark head may be missing. Returns the missing keys."""
    missing = load_model_state(model, dict(state), path, strict=False)
    not_head = [k for k in missing if not k.startswith(LANDMARK_HEADS[net] + ".")]
    if not_head:
        raise DataError(path, f"weights do not fit {type(model).__name__}: missing keys {not_head[:4]}")
    return missing


def load_net(source: str | Path, net: str, landmarks: bool | None = None) -> nn.Module:
    """Build ``net`` and load its weights from ``source``; ``landmarks=None`` adds the head when the file has it.

    ``landmarks=True`` on a file without the P/R-Net landmark head (the original release) leaves that
    head freshly initialised, for fine-tuning with landmark samples.
    """
    path = resolve_weights(source, net)
    state = read_state_dict(path, net)
    if landmarks is None:
        landmarks = any(k.startswith(LANDMARK_HEADS[net] + ".") for k in state)
    model = build_net(net, landmarks=True if net == "onet" else landmarks)
    load_state_into(model, state, net, path)
    return model.eval()


def net_name(model: nn.Module) -> str:
    """The name ("pnet", "rnet", "onet") of an MTCNN net instance."""
    name = type(model).__name__.lower()
    if name not in NET_NAMES:
        raise ValueError(f"{type(model).__name__} is not an MTCNN net")
    return name


def save_net(model: nn.Module, path: str | Path, config: Mapping[str, Any] | None = None, plain: bool = False) -> None:
    """Write ``model``'s weights atomically: a toolkit checkpoint dict, or with ``plain`` a bare state_dict.

    The checkpoint dict is ``{"model", "kind", "config"}`` as ``utils/checkpoint.py`` writes it (``config``
    must hold plain values: numbers, strings, lists, dicts). A plain export of a net without the
    P/R-Net landmark head has the original release's exact keys, so facenet-pytorch and other readers
    of the original files accept it.
    """
    state = {k: v.detach().to("cpu", memory_format=torch.contiguous_format).clone()
             for k, v in model.state_dict().items()}
    payload: dict[str, Any] = state if plain else {"model": state, "kind": net_name(model),
                                                   "config": dict(config or {})}
    save_checkpoint(path, payload)

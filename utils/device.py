"""Device choice: ``auto`` takes the first CUDA GPU when there is one and the CPU otherwise."""
from __future__ import annotations

import torch

from utils.errors import ConfigError


def select_device(spec: str = "auto", local_rank: int | None = None) -> torch.device:
    """Resolve ``auto|cpu|cuda|cuda:N``; under torchrun ``auto``/``cuda`` mean this process's GPU."""
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r} was asked for but CUDA is not available here (use --device cpu or auto)")
    if spec in ("auto", "cuda"):
        index = local_rank or 0
    elif spec.startswith("cuda:") and spec[5:].isdigit():
        index = int(spec[5:])
    else:
        raise ConfigError(f"device {spec!r} is not auto, cpu, cuda or cuda:N")
    if index >= torch.cuda.device_count():
        raise ConfigError(f"device cuda:{index} does not exist ({torch.cuda.device_count()} GPU(s) visible)")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)

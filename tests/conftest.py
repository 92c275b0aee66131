"""Shared fixtures: where the read-only real data lives, one torch thread for training tests,
``run_script``, which runs a top-level script as its command line would (tests never import a script), and
``import_or_skip``, which imports an optional package a test compares against (skip without it, fail in CI)."""
from __future__ import annotations

import importlib
import os
import runpy
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FACENET_REFERENCE = "the facenet-pytorch reference, requirements-reference.txt"  # import_or_skip's purpose


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-format dataset copies in ../shared/data; the test is skipped when they are absent."""
    root = SHARED / "data"
    if not root.is_dir():
        pytest.skip(f"real data folder {root} is absent")
    return root


@pytest.fixture(scope="session")
def pretrained_mtcnn() -> Path:
    """The original MTCNN weights (pnet.pt, rnet.pt, onet.pt); skipped when absent."""
    root = SHARED / "pretrained" / "mtcnn_facenet_pytorch"
    if not (root / "pnet.pt").is_file():
        pytest.skip(f"original MTCNN weights not found in {root}")
    return root


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a training test: on a busy 2-core machine a second spinning thread costs more than
    it gives. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_script(name: str, argv: list[str]) -> int:
    """Run the top-level script ``name`` (e.g. "train_mtcnn.py") in this process as ``python name *argv`` would,
    and return its exit code. The script's imports run afresh, so a test patches library modules, not the script."""
    path = REPO / name
    saved = sys.argv
    sys.argv = [str(path), *argv]
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        sys.argv = saved
    return 0


def import_or_skip(module: str, purpose: str) -> ModuleType:
    """Import ``module`` for a test. Without it the test is skipped, naming ``purpose``; but where the ``CI``
    environment variable is set (CI installs requirements-reference.txt and requirements-export.txt) the test
    fails instead, so a broken install cannot turn the strongest checks into silent skips."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(f"{module} is required in CI ({purpose}): {exc}", pytrace=False)
        pytest.skip(f"{module} is not installed ({purpose})")

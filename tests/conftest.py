"""Shared fixtures: where the read-only real data lives, one torch thread for training tests, and
``run_script``, which runs a top-level script as its command line would (tests never import a script)."""
from __future__ import annotations

import runpy
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


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

"""Reliability of the test suite and benches themselves: checks that cannot run say so, in CI a missing package
fails, and a benchmark's baseline does no work an honest loop would not."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from bench.bench_mtcnn_data import _crop_one
from tests.conftest import REPO, import_or_skip


def test_reliability_missing_reference_package_skips_here_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"no_such_reference is not installed \(the parity checks\)"):
        import_or_skip("no_such_reference", "the parity checks")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"no_such_reference is required in CI \(the parity checks\)"):
        import_or_skip("no_such_reference", "the parity checks")
    assert import_or_skip("json", "the parity checks").dumps([]) == "[]"


def test_reliability_cuda_cases_show_as_skipped_without_cuda() -> None:
    """With CUDA hidden, every CUDA case of the device tests is collected and reported as skipped, with the reason."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-k", "cuda",
                           "tests/test_devices.py"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert "4 skipped" in done.stdout, done.stdout + done.stderr
    reported = [int(n) for n in re.findall(r"^SKIPPED \[(\d+)\] .*CUDA is not available on this machine$",
                                           done.stdout, flags=re.MULTILINE)]
    assert sum(reported) == 4, done.stdout  # -rs groups the cases of one test under one line


def test_reliability_bench_loop_crops_a_view_inside_the_image(monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-crop baseline slices a crop inside the image (as the public scripts do) and pads only at the border."""
    image = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    padded: list[tuple] = []
    zeros = np.zeros

    def counted_zeros(shape: tuple, *args: object, **kwargs: object) -> np.ndarray:
        padded.append(shape)
        return zeros(shape, *args, **kwargs)

    monkeypatch.setattr(np, "zeros", counted_zeros)
    inside = _crop_one(image, np.array([10, 5, 34, 29]), 12, cv2.INTER_AREA)
    assert padded == []
    assert np.array_equal(inside, cv2.resize(image[5:29, 10:34], (12, 12), interpolation=cv2.INTER_AREA))
    border = _crop_one(image, np.array([-4, 50, 20, 74]), 12, cv2.INTER_AREA)
    assert padded == [(24, 24, 3)]
    expected = zeros((24, 24, 3), np.uint8)
    expected[:10, 4:] = image[50:60, 0:20]
    assert np.array_equal(border, cv2.resize(expected, (12, 12), interpolation=cv2.INTER_AREA))

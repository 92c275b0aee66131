"""Reliability of the test suite itself: checks that cannot run say so, and in CI a missing package fails."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

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
    assert "3 skipped" in done.stdout, done.stdout + done.stderr
    assert done.stdout.count("SKIPPED") == 3 and "CUDA is not available on this machine" in done.stdout

"""The README's "Use from Python" example runs as written (from a repository root with a trained embedder and
matcher: here an untrained embedder and a cosine matcher stand in), on the shared photo and the original MTCNN
weights."""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from config import load_config
from models import ThresholdMatcher
from tests.conftest import REPO, SHARED
from training.facenet.model import architecture, build_model
from utils.checkpoint import save_checkpoint
from utils.hashing import sha256_file


def readme_example() -> str:
    """The first python block of the README's "Use from Python" section."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Use from Python\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_readme_python_example_runs(pretrained_mtcnn: Path, shared_data: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config()
    best = tmp_path / "runs" / "facenet" / "best.pt"
    save_checkpoint(best, {"model": build_model(config.facenet).state_dict(), "embedder": architecture(config)})
    ThresholdMatcher(threshold=0.5, metric="cosine", embedding_size=config.facenet.embedding_size).save(
        best.parent / "matcher.json", sha256_file(best))
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(readme_example().replace("../shared", str(SHARED)), "README.md", "exec"), {})
    lines = out.getvalue().splitlines()
    faces = int(lines[0].split()[0])
    assert faces >= 2 and lines[0].endswith(f"aligned crops ({faces}, 3, 160, 160)")
    assert lines[1].startswith("VerifyResult(same=True")
    assert len(lines) == 2 + faces and " crowd " in lines[2]  # the main face, enrolled, is named first

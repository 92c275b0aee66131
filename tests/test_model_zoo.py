"""The model zoo (README "Models"): entry names resolve under the weights root from any working directory, an
unknown name lists the entries, SHA256SUMS catches a changed file; ``deploy.package`` turns tiny run folders
(the original MTCNN weights as a cascade run's checkpoints, a randomly initialised embedder) into entries that
load by name and by path with ``weights_only=True`` and find the 6 faces of the shared group photo;
``deploy.evaluate`` prints the README's table. The last test checks every entry committed under weights/."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from models.detector import FaceDetector
from models.weights import resolve_weights
from models.zoo import (
    CASCADE_FILES,
    SUMS_FILE,
    WEIGHTS_ENV,
    entry_file,
    list_entries,
    resolve_entry,
    sums_text,
    verify_entry,
    weights_root,
)
from tests.conftest import REPO, run_script
from utils.errors import DataError

COMMITTED = list_entries(REPO / "weights")


@pytest.fixture
def weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty weights root, named by $FACE_TOOLKIT_WEIGHTS; the working directory is elsewhere."""
    root = tmp_path / "weights"
    monkeypatch.setenv(WEIGHTS_ENV, str(root))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    return root


def copied_cascade(root: Path, source: Path, name: str = "tiny") -> Path:
    """An entry holding only the three original weight files and their SHA256SUMS."""
    folder = root / name
    folder.mkdir(parents=True)
    for file in CASCADE_FILES:
        shutil.copyfile(source / file, folder / file)
    (folder / SUMS_FILE).write_text(sums_text(folder))
    return folder


# --- names ------------------------------------------------------------------------------------------------


def test_names_resolve_under_the_weights_root(weights: Path, pretrained_mtcnn: Path) -> None:
    entry = copied_cascade(weights, pretrained_mtcnn)
    (weights / "half_done").mkdir()  # no SHA256SUMS: not an entry
    (weights / ".tiny.1234.tmp").mkdir()
    assert list_entries() == ["tiny"] and weights_root() == weights
    assert resolve_entry("tiny") == resolve_entry("weights/tiny") == resolve_entry(entry) == entry
    assert resolve_weights("tiny", "onet") == resolve_weights("weights/tiny", "onet") == entry / "onet.pt"
    assert entry_file("tiny", "rnet.pt") == entry / "rnet.pt"
    assert entry_file(entry / "pnet.pt", "rnet.pt") == entry / "pnet.pt"  # a file names itself
    assert resolve_entry("runs/mtcnn/pnet/best.pt") == Path("runs/mtcnn/pnet/best.pt")  # a path keeps its own error
    with pytest.raises(DataError, match="pnet weights not found"):
        resolve_weights("runs/mtcnn", "pnet")


def test_the_default_root_is_the_repository_weights_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    assert weights_root() == REPO / "weights"
    assert weights_root("/somewhere") == Path("/somewhere")


def test_an_unknown_name_is_one_line_that_lists_the_entries(weights: Path, pretrained_mtcnn: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    copied_cascade(weights, pretrained_mtcnn, "first")
    copied_cascade(weights, pretrained_mtcnn, "second")
    with pytest.raises(DataError) as caught:
        FaceDetector.from_pretrained("mtcnn_wider")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("mtcnn_wider:") and "first, second" in message
    assert run_script("test_system.py", ["--embedder", "nope", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope" in err and "first, second" in err


def test_checksums_name_a_changed_missing_or_unlisted_file(weights: Path, pretrained_mtcnn: Path) -> None:
    entry = copied_cascade(weights, pretrained_mtcnn)
    assert verify_entry(entry) == sorted(CASCADE_FILES)
    if shutil.which("sha256sum"):  # the file is in sha256sum's own format
        subprocess.run(["sha256sum", "--check", "--quiet", SUMS_FILE], cwd=entry, check=True)
    (entry / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match=r"notes\.txt: not listed in SHA256SUMS"):
        verify_entry(entry)
    (entry / "notes.txt").unlink()
    with open(entry / "onet.pt", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(DataError) as caught:
        verify_entry(entry)
    assert str(caught.value).startswith(str(entry / "onet.pt")) and "\n" not in str(caught.value)
    (entry / "onet.pt").unlink()
    with pytest.raises(DataError, match="onet.pt: listed in SHA256SUMS but missing"):
        verify_entry(entry)

"""One face preprocessing: the same photos through ``prepare_training_data.py --align`` (the crops it writes) and
through the system (the crops its embedder gets) give bitwise-identical crops, with the original MTCNN
weights; the embedder record is written and read by one pair of functions; main-face ties are settled."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import datasets.align_dataset as align_module
from config import load_config
from datasets.align_dataset import CropTarget, align_photos, detector_for_alignment, list_photos
from models.face_preprocess import AlignSettings, EmbedderRecord, main_face_order
from models.system import FaceRecognitionSystem, read_embedder
from training.facenet.model import architecture, build_model
from utils.checkpoint import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LFW = {"Colin_Powell": ("0001", "0002", "0003"), "Tony_Blair": ("0001", "0002")}


def _photo_tree(root: Path, shared_data: Path) -> Path:
    """An identity-folder tree of the shared photos (one with six faces) and a few LFW images."""
    for photo in sorted((shared_data / "photos").iterdir()):
        (root / "photos").mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, root / "photos" / photo.name)
    for name, numbers in LFW.items():
        (root / name).mkdir(parents=True)
        for number in numbers:
            shutil.copy(shared_data / "lfw_top12_100px" / "images" / name / f"{name}_{number}.jpg", root / name)
    return root


def test_align_path_and_system_cut_identical_crops(shared_data: Path, pretrained_mtcnn: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    source = _photo_tree(tmp_path / "photos", shared_data)
    config = load_config(None, [f"paths.{net}={pretrained_mtcnn / (net + '.pt')}" for net in ("pnet", "rnet", "onet")]
                         + ["facenet.input_size=32", "facenet.width=0.25", "facenet.embedding_size=16",
                            "align.eval_size=96", "align.margin=8", "align.batch_images=4",
                            "system.detect_batch_images=4", "runtime.device=cpu"])
    written: dict[str, np.ndarray] = {}
    monkeypatch.setattr(align_module, "write_image", lambda path, pixels, quality: written.update({str(path): pixels}))
    photos, _, _ = list_photos(source)
    a = config.align
    report = align_photos(photos, [CropTarget(tmp_path / "aligned", a.eval_size, a.margin)],
                          detector_for_alignment(config), tmp_path / "progress.tsv", method=a.method, select=a.select,
                          batch_images=a.batch_images, show_progress=False)
    assert report.aligned == len(photos) == 8 and report.several_faces, "every photo has a face, one has several"

    save_checkpoint(tmp_path / "embedder.pt", {"model": build_model(config.facenet).state_dict(),
                                               "embedder": architecture(config)})
    system = FaceRecognitionSystem.from_config(config, embedder=tmp_path / "embedder.pt", matcher=None)
    crops = system.crop_faces([photo.source for photo in photos], all_faces=False)
    for photo, (crop,) in zip(photos, crops):
        expected = written[str(tmp_path / "aligned" / photo.identity / photo.name)]
        assert crop.shape == (3, a.eval_size, a.eval_size)
        assert np.array_equal(crop.permute(1, 2, 0).numpy(), expected), f"{photo.source}: the crops differ"


def test_the_embedder_record_round_trips(tmp_path: Path) -> None:
    config = load_config(None, ["facenet.input_size=32", "facenet.width=0.25", "facenet.embedding_size=16",
                                "align.eval_size=64", "align.margin=4", "align.method=box"])
    entry = architecture(config)
    record = EmbedderRecord.from_dict(entry)
    assert record.align == AlignSettings(64, 4.0, "box") and record.as_dict() == entry
    assert entry["align"]["margin_at_input_size"] == 2.0
    save_checkpoint(tmp_path / "e.pt", {"model": build_model(config.facenet).state_dict(), "embedder": entry})
    model, align = read_embedder(tmp_path / "e.pt", torch.device("cpu"))
    assert (model.input_size, model.embedding_size, align) == (32, 16, AlignSettings(64, 4.0, "box"))


def test_main_face_ties_go_to_the_other_rule_then_to_the_detector_order() -> None:
    # Two faces of equal area: the more central one leads under "largest"; equally central: the larger one.
    boxes = np.array([[0, 0, 20, 20], [40, 40, 60, 60], [80, 80, 100, 100]])  # the outer two equally far out
    assert main_face_order(boxes, 100, 100, "largest") == [1, 0, 2]
    rings = np.array([[45, 45, 55, 55], [40, 40, 60, 60], [40, 40, 60, 60]])  # one centre, two sizes
    assert main_face_order(rings, 100, 100, "central") == [1, 2, 0]
    assert main_face_order(torch.tensor(rings, dtype=torch.float32), 100, 100, "largest") == [1, 2, 0]

"""The face-recognition system end to end on real photos: no face, several faces, unknown people, rebuild
after a model change, and the train_matching.py / test_system.py command lines on a small LFW-layout set.

Detection uses the original MTCNN weights (skipped when absent). The embedder is Eigenfaces: a PCA fitted
on real face crops (a learned model that takes a second to fit), wrapped in the toolkit's ``Embedder``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import Tensor, nn

from datasets.lfw import Pair, write_pairs
from models.alignment import align_faces
from models.detector import FaceDetector
from models.embedder import Embedder
from models.face_preprocess import main_face_order
from models.gallery import Gallery, GalleryModelMismatch
from models.matcher import ThresholdMatcher, load_matcher
from models.system import FaceRecognitionSystem
from tests.conftest import run_script
from utils.checkpoint import save_checkpoint
from utils.errors import DataError
from utils.hashing import sha256_file
from utils.images import IMAGE_EXTENSIONS, read_image, write_image

PEOPLE = ("Ariel_Sharon", "Colin_Powell", "Donald_Rumsfeld", "George_W_Bush", "Gerhard_Schroeder", "Hugo_Chavez",
          "Jacques_Chirac", "Tony_Blair")


class Eigenfaces(nn.Module):
    """Whitened PCA of a 32x32 face crop, each crop first brought to zero mean and unit variance: the classic
    learned baseline as an embedder backbone."""

    def __init__(self, mean: np.ndarray, components: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.components = nn.Parameter(torch.as_tensor(components, dtype=torch.float32), requires_grad=False)
        self.embedding_size = int(components.shape[0])

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        x = (x - x.mean(dim=1, keepdim=True)) / (x.std(dim=1, keepdim=True) + 1e-6)
        return (x - self.mean) @ self.components.T


def eigenfaces_embedder(detector: FaceDetector, photos: list[np.ndarray], components: int) -> Embedder:
    """Detect and align the main face of each photo at 32x32 (as the system will), fit whitened PCA on them."""
    crops = []
    for photo in photos:
        found = detector.detect([photo])[0]
        main = int(((found.boxes[:, 2] - found.boxes[:, 0]) * (found.boxes[:, 3] - found.boxes[:, 1])).argmax())
        crops.append(align_faces(photo, found.landmarks[main:main + 1], 32)[0].float().numpy().ravel())
    rows = np.stack(crops)
    rows = (rows - rows.mean(axis=1, keepdims=True)) / (rows.std(axis=1, keepdims=True) + 1e-6)
    mean = rows.mean(axis=0)
    _, singular, vt = np.linalg.svd(rows - mean, full_matrices=False)
    whitened = vt[:components] * (singular[0] / singular[:components, None])
    return Embedder(Eigenfaces(mean, whitened), input_size=32)


@pytest.fixture(scope="module")
def lfw12(shared_data: Path) -> Path:
    """The 12-person LFW crops (100x100)."""
    return shared_data / "lfw_top12_100px" / "images"


@pytest.fixture(scope="module")
def photos(shared_data: Path) -> Path:
    return shared_data / "photos"


@pytest.fixture(scope="module")
def detector(pretrained_mtcnn: Path) -> FaceDetector:
    return FaceDetector.from_pretrained(pretrained_mtcnn)


def lfw_images(root: Path, person: str, count: int, start: int = 0) -> list[Path]:
    """``count`` image paths of ``person`` (in file-name order) from position ``start``."""
    return sorted((root / person).glob("*.jpg"))[start:start + count]


_EMBEDDERS: dict[tuple[int, int], Embedder] = {}


def make_system(detector: FaceDetector, lfw12: Path, components: int = 16, first: int = 10,
                threshold: float = 0.9) -> FaceRecognitionSystem:
    """Eigenfaces fitted on 4 photos of every person from position ``first`` on (photos the tests never use
    otherwise); a cosine matcher at ``threshold``."""
    key = (components, first)
    if key not in _EMBEDDERS:
        photos = [read_image(p) for person in PEOPLE for p in lfw_images(lfw12, person, 4, first)]
        _EMBEDDERS[key] = eigenfaces_embedder(detector, photos, components)
    matcher = ThresholdMatcher(threshold=threshold, metric="cosine", embedding_size=components)
    return FaceRecognitionSystem(detector, _EMBEDDERS[key], f"{components:02d}{first:02d}".ljust(64, "e"),
                                 matcher=matcher)


def test_main_face_is_the_largest_or_the_most_central() -> None:
    boxes = np.array([[0, 0, 50, 50], [40, 40, 60, 60], [55, 55, 75, 75]])  # big corner face, small central one
    assert main_face_order(boxes, 100, 100, "largest") == [0, 1, 2]
    assert main_face_order(boxes, 100, 100, "central") == [1, 2, 0]
    assert main_face_order(np.zeros((0, 4)), 100, 100) == []
    with pytest.raises(ValueError, match="largest, central"):
        main_face_order(boxes, 100, 100, "first")


def test_a_probe_without_a_face_is_reported_not_matched(detector: FaceDetector, lfw12: Path, photos: Path,
                                                         tmp_path: Path) -> None:
    system = make_system(detector, lfw12)
    blank = tmp_path / "wall.png"
    ramp = np.linspace(40, 200, 160, dtype=np.float32)
    write_image(blank, np.repeat(np.add.outer(ramp, ramp / 4)[:, :, None], 3, axis=2).clip(0, 255).astype(np.uint8))
    assert system.enroll("astronaut", [photos / "astronaut.png"]) == (1, [])
    assert system.identify(blank) == []
    result = system.verify(blank, photos / "astronaut.png")
    assert not result.same and result.score is None and result.faces_a == 0 and result.faces_b == 1
    assert result.reason == "first image: no face found"
    added, skipped = system.enroll("nobody", [blank])
    assert added == 0 and skipped == [f"{blank}: no face found"] and "nobody" not in system.gallery
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.warns(UserWarning, match="broken.jpg: not an image file"):  # skipped and counted, not fatal
        result = system.verify(photos / "astronaut.png", broken)
    assert not result.same and result.reason == "second image: not an image file (unrecognised format)"
    assert len(system.log) == 1
    with pytest.raises(DataError, match="broken.jpg"):
        system.identify(broken)


def test_a_probe_with_several_faces_names_each_face(detector: FaceDetector, lfw12: Path, photos: Path) -> None:
    system = make_system(detector, lfw12)
    astronaut = read_image(photos / "astronaut.png")
    crowd = read_image(photos / "multiface.jpg")
    scaled = cv2.resize(astronaut, (crowd.shape[0], crowd.shape[0]), interpolation=cv2.INTER_AREA)
    assert system.enroll("astronaut", [scaled]) == (1, [])
    group = np.ascontiguousarray(np.hstack([scaled, crowd]))  # the astronaut beside six strangers
    found = system.identify(group)
    assert len(found) == 7
    areas = [(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]) for f in found]
    assert areas == sorted(areas, reverse=True)  # main face first
    named = [f for f in found if f.name is not None]
    assert [f.name for f in named] == ["astronaut"] and named[0].box[2] <= scaled.shape[1] + 5
    assert named[0].score >= system.matcher.threshold
    strangers = [f for f in found if f.name is None]
    assert all(f.candidate == "astronaut" and f.score < system.matcher.threshold for f in strangers)
    # verification and enrolment use the main (largest) face of a group photo
    assert system.analyse([group])[0].faces[0].box.tolist() == found[0].box.tolist()


def test_an_unknown_person_is_rejected_and_enrolled_people_are_named(detector: FaceDetector, lfw12: Path) -> None:
    system = make_system(detector, lfw12, threshold=0.9)
    for person in PEOPLE[:4]:
        added, skipped = system.enroll(person, lfw_images(lfw12, person, 2))
        assert added == 2 and not skipped
    assert system.gallery.num_embeddings == 8
    enrolled_photo = lfw_images(lfw12, PEOPLE[1], 1)[0]
    found = system.identify(enrolled_photo)
    assert len(found) == 1 and found[0].name == PEOPLE[1] and found[0].score == pytest.approx(1.0, abs=1e-5)
    for stranger in PEOPLE[4:]:
        for photo in lfw_images(lfw12, stranger, 2):
            result = system.identify(photo)
            assert len(result) >= 1 and result[0].name is None, photo
            assert result[0].candidate in PEOPLE[:4] and result[0].score < result[0].threshold
    # a stricter identification threshold (open set, many identities) is never looser than the matcher's
    assert system.identification_threshold(0.01) >= system.matcher.threshold
    assert system.verify(enrolled_photo, enrolled_photo).same
    assert not system.verify(enrolled_photo, lfw_images(lfw12, PEOPLE[5], 1)[0]).same


def test_a_centring_matcher_is_centred_on_the_gallery_once_it_is_large_enough(detector: FaceDetector,
                                                                               lfw12: Path) -> None:
    system = make_system(detector, lfw12)
    system.matcher.centre = np.zeros(16)  # as tuned: centred on its tuning images' mean (zero here)
    for person in PEOPLE[:3]:
        system.enroll(person, lfw_images(lfw12, person, 6))
    assert system.gallery.num_embeddings == 18 and system.active_matcher() is system.matcher, "under 20 faces"
    system.enroll(PEOPLE[3], lfw_images(lfw12, PEOPLE[3], 6))
    gallery, _ = system.gallery.matrix()
    active = system.active_matcher()
    assert np.allclose(active.centre, gallery.mean(axis=0)) and not system.matcher.centre.any()
    photo, other = lfw_images(lfw12, PEOPLE[0], 1)[0], lfw_images(lfw12, PEOPLE[5], 1)[0]
    emb = system.embed_images([photo, other])[0]
    assert system.verify(photo, other).score == pytest.approx(float(active.score(emb[:1], emb[1:])[0]))
    assert system.identify(photo)[0].score == pytest.approx(1.0, abs=1e-5), "an enrolled photo is itself, centred"


def test_rebuild_after_a_model_change(detector: FaceDetector, lfw12: Path, photos: Path, tmp_path: Path) -> None:
    old = make_system(detector, lfw12, components=16, first=10)
    old.enroll("astronaut", [photos / "astronaut.png"])
    old.enroll(PEOPLE[0], lfw_images(lfw12, PEOPLE[0], 2))
    path = old.gallery.save(tmp_path / "gallery.pt")
    new = make_system(detector, lfw12, components=12, first=14)
    with pytest.raises(GalleryModelMismatch, match="--rebuild"):
        Gallery.load(path, new.embedder_sha256)
    with pytest.raises(ValueError, match="rebuild"):
        FaceRecognitionSystem(detector, new.embedder, new.embedder_sha256, gallery=Gallery.load(path))
    report = new.rebuild_gallery(Gallery.load(path))
    assert report.rebuilt == 3 and not report.failed and not report.dropped_identities
    assert new.gallery.embedder_sha256 == new.embedder_sha256 and new.gallery.embedding_size == 12
    assert new.gallery.names == ["astronaut", PEOPLE[0]]
    sources = new.gallery.identity(PEOPLE[0]).sources
    expected, _ = new.embed_images(sources)
    np.testing.assert_allclose(new.gallery.identity(PEOPLE[0]).embeddings, expected, atol=1e-6)
    assert new.identify(photos / "astronaut.png")[0].name == "astronaut"
    new.gallery.save(path)
    assert Gallery.load(path, new.embedder_sha256).num_embeddings == 3


# --- the command lines ------------------------------------------------------------------------------------


def tiny_lfw_set(lfw12: Path, root: Path) -> Path:
    """8 people x 3 photos in the LFW layout with a 2-fold pairs.txt (2 same + 2 different pairs per fold);
    each fold names 4 people, so the classifier can be judged on identities it was not trained on."""
    for person in PEOPLE:
        for i, source in enumerate(lfw_images(lfw12, person, 3), start=1):
            target = root / "images" / person / f"{person}_{i:04d}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    folds = []
    for group in (PEOPLE[:4], PEOPLE[4:]):
        same = [Pair(group[0], 1, group[0], 2), Pair(group[1], 2, group[1], 3)]
        different = [Pair(group[2], 1, group[3], 2), Pair(group[0], 3, group[2], 3)]
        folds.append(same + different)
    write_pairs(root / "pairs.txt", folds)
    return root / "pairs.txt"


def save_embedder(path: Path, seed: int) -> Path:
    """A small MobileFaceNet embedder checkpoint (random weights: these tests check the flow, not accuracy)."""
    torch.manual_seed(seed)
    model = Embedder.build("mobilefacenet", embedding_size=32, input_size=32, width=0.25)
    save_checkpoint(path, {"kind": "facenet", "model": model.state_dict(), "embedder": {
        "backbone": "mobilefacenet", "embedding_size": 32, "input_size": 32, "width": 0.25}})
    return path


def test_train_matching_then_test_system_command_lines(lfw12: Path, pretrained_mtcnn: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    pairs = tiny_lfw_set(lfw12, tmp_path / "lfw")
    runs = tmp_path / "runs"
    embedder = save_embedder(runs / "facenet" / "best.pt", seed=0)
    common = ["--device", "cpu", "--set", f"paths.runs_dir={runs}", "--set", "align.eval_size=48",
              *[f"--set=paths.{n}={pretrained_mtcnn / (n + '.pt')}" for n in ("pnet", "rnet", "onet")]]
    code = run_script("train_matching.py", ["--pairs", str(pairs), "--set", "matching.pairs_per_identity=4",
                                            "--set", "matching.calibration_folds=2", "--set", "matching.centring=true",
                                            *common])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "threshold (cosine)" in out and "classifier (logistic, sigmoid)" in out and "kept " in out
    matcher_path = runs / "facenet" / "matcher.json"
    matcher = load_matcher(matcher_path, sha256_file(embedder))  # tagged with this embedder
    assert matcher.centre is not None and matcher.centre.shape == (32,)
    report = json.loads((runs / "facenet" / "matching" / "report.json").read_text())
    assert report["chosen"] in report["methods"] and report["pairs_used"] + report["pairs_without_face"] == 8
    for png in ("roc.png", "scores_threshold.png", "scores_classifier.png"):
        assert read_image(runs / "facenet" / "matching" / png).shape[2] == 3

    system_args = ["--pairs", str(pairs), "--set", "system.unknown_fraction=0.25",
                   "--set", "system.gallery_images_per_identity=2", *common]
    zero_floors = ([f"--set=system.{k}=0" for k in ("min_detection_recall", "min_verification_accuracy",
                                                    "min_identification_top1")]
                   + ["--set=system.max_impostor_accept_rate=1"])
    distractors = tmp_path / "distractors"
    for person in ("Serena_Williams", "John_Ashcroft", "Jean_Chretien"):
        for source in lfw_images(lfw12, person, 2):
            (distractors / person).mkdir(parents=True, exist_ok=True)
            (distractors / person / source.name).write_bytes(source.read_bytes())
    code = run_script("test_system.py", system_args + zero_floors + ["--distractors", str(distractors),
                                                                     "--set=system.distractor_identities=2",
                                                                     "--splits", "3"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    for line in ("images read", "faces detected", "alignment failures", "verification accuracy",
                 "identification top-1", "impostor acceptance", "time per image"):
        assert line in captured.out
    assert "images read             24 of 24" in captured.out
    assert "scores centred on the tuning images' mean embedding (too few gallery faces" in captured.out  # 16 < 20
    assert re.search(r"FAR \d\.\d{4} \(promised \d\.\d{4}\)", captured.out)
    gallery = Gallery.load(runs / "system" / "gallery.pt", matcher.embedder_sha256)
    assert len(gallery) == 8 and gallery.num_embeddings <= 16  # 2 of 8 people left out as unknown, 2 distractors
    assert sorted(n for n in gallery.names if n.startswith("distractor/")) == ["distractor/Jean_Chretien",
                                                                                "distractor/John_Ashcroft"]
    assert "2 distractors" in captured.out
    report = json.loads((runs / "system" / "report.json").read_text())
    assert report["identification"]["known_probes"] == 6 and report["identification"]["unknown_probes"] == 6
    # --splits 3: three seeded enrolment splits, each check the mean of its splits, the gallery saved the first's
    splits = report["enrolment_splits"]
    assert [s["seed"] for s in splits] == [0, 1, 2] and len(re.findall("enrolment split seed", captured.out)) == 3
    for check, key in (("identification top-1", "top1"), ("impostor acceptance", "impostor_accept_rate"),
                       ("verification accuracy", "verification_accuracy")):
        assert report["checks"][check]["value"] == pytest.approx(np.mean([s[key] for s in splits]))
    assert report["identification"]["closed_set_rank1"] == pytest.approx(np.mean([s["closed_set_rank1"]
                                                                                 for s in splits]))
    people = {s["strangers"][0] for s in splits} | {s["strangers"][1] for s in splits}
    assert all(len(s["strangers"]) == 2 for s in splits) and len(people) > 2  # the splits enrol different people
    assert not set(splits[0]["strangers"]) & set(gallery.names) and len(gallery.names) == 8  # the first split's
    code = run_script("test_system.py", system_args + ["--splits", "2", "--reuse-gallery"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "--splits" in err

    code = run_script("test_system.py", system_args + ["--set=system.min_verification_accuracy=1",
                                                       "--set=system.max_impostor_accept_rate=0",
                                                       "--gallery", str(tmp_path / "other_gallery.pt")])
    captured = capsys.readouterr()
    assert code == 1
    failed = [line for line in captured.err.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and "verification accuracy" in failed[0]

    # a new embedder: the old matcher is refused in one line, the stored gallery too until it is rebuilt
    save_embedder(embedder, seed=1)
    code = run_script("test_system.py", system_args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "matcher was tuned for embedder" in err
    ThresholdMatcher(threshold=0.5, embedding_size=32).save(matcher_path, sha256_file(embedder))  # re-tuned
    code = run_script("test_system.py", system_args + ["--reuse-gallery"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--rebuild" in err and err.count("\n") == 0
    code = run_script("test_system.py", system_args + zero_floors + ["--rebuild"])
    out = capsys.readouterr().out
    assert code == 0 and "gallery rebuilt" in out
    rebuilt = Gallery.load(runs / "system" / "gallery.pt", sha256_file(embedder))
    assert rebuilt.names == gallery.names  # distractors too: every stored source photo is re-embedded


def test_reliability_test_system_names_who_it_cannot_enrol_and_what_it_left_out(
        lfw12: Path, pretrained_mtcnn: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A person whose gallery photo has no face is named, and their probes are not scored as impostors; an empty
    identity folder and every image without a face are named too."""
    people = tmp_path / "people"
    for person in PEOPLE[:3]:
        for source in lfw_images(lfw12, person, 2):
            (people / person).mkdir(parents=True, exist_ok=True)
            (people / person / source.name).write_bytes(source.read_bytes())
    blank = people / "Nobody" / "0000_blank.png"  # sorted first: the gallery image
    write_image(blank, np.full((100, 100, 3), 128, np.uint8))
    for source in lfw_images(lfw12, "Serena_Williams", 2):  # probes with faces
        (people / "Nobody" / source.name).write_bytes(source.read_bytes())
    (people / "Empty").mkdir()
    runs = tmp_path / "runs"
    embedder = save_embedder(runs / "facenet" / "best.pt", seed=0)
    ThresholdMatcher(threshold=0.5, embedding_size=32).save(runs / "facenet" / "matcher.json", sha256_file(embedder))
    floors = [f"--set=system.{k}=0" for k in ("min_detection_recall", "min_verification_accuracy",
                                              "min_identification_top1")] + ["--set=system.max_impostor_accept_rate=1"]
    code = run_script("test_system.py", ["--identities", str(people), "--device", "cpu",
                                         "--set", f"paths.runs_dir={runs}",
                                         "--set", "align.eval_size=48", "--set=system.unknown_fraction=0",
                                         "--set=system.gallery_images_per_identity=1", *floors,
                                         *[f"--set=paths.{n}={pretrained_mtcnn / (n + '.pt')}"
                                           for n in ("pnet", "rnet", "onet")]])
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads((runs / "system" / "report.json").read_text())
    assert report["not_enrolled"] == {"Nobody": "none of 1 gallery image(s) gave a usable face"}
    assert len(report["probes_left_out"]["Nobody"]) == 2
    assert report["identification"]["known_probes"] == 3 and report["identification"]["unknown_probes"] == 0
    assert report["images_without_face"] == [str(blank)]
    assert report["identities_left_out"] == {str(people / "Empty"): f"no images ({', '.join(IMAGE_EXTENSIONS)})"}
    assert "not enrolled: Nobody (none of 1 gallery image(s) gave a usable face); 2 probe(s) left out" in out
    assert (f"images without a face: {blank}" in out
            and f"left out of the test set: {people / 'Empty'} (no images" in out)


def test_reliability_test_system_never_overwrites_another_tools_report(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    # the gallery put in a training run's folder: its report.json (train_facenet.py's) must survive
    run_dir = tmp_path / "facenet_run"
    run_dir.mkdir()
    training_report = json.dumps({"epochs": 16, "best_validation": {"accuracy": 0.88}})
    (run_dir / "report.json").write_text(training_report)
    code = run_script("test_system.py", ["--device", "cpu", "--set", f"paths.gallery={run_dir / 'gallery.pt'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and str(run_dir / "report.json") in err and "--report" in err
    assert (run_dir / "report.json").read_text() == training_report, "the training report is untouched"
    assert not (run_dir / "gallery.pt").exists(), "it stopped before enrolling anyone"

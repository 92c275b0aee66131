"""ONNX export and the ONNX backend: P-Net, R-Net, O-Net (original weights) and a small random embedder exported,
run in onnxruntime and matched to PyTorch within TOLERANCE; the cascade on ONNX Runtime finds the same faces as
the PyTorch one on real photos; the system runs from the exported files; int8 quantization; bad sidecars; and a
missing onnxruntime is one clear line naming requirements-export.txt."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from config import AlignConfig, load_config
from deploy.export import (
    ExportCheckError,
    cascade_inputs,
    check_within,
    compare_detections,
    embedder_faces,
    export_embedder,
    export_embedder_int8,
    export_mtcnn_net,
    get_args_parser,
    main,
    write_checked,
)
from models.detector import FaceDetector
from models.embedder import Embedder
from models.mtcnn import NET_NAMES
from models.onnx_nets import (
    EXPORT_REQUIREMENTS,
    MissingDependencyError,
    OnnxEmbedder,
    load_onnx_embedder,
    load_onnx_net,
    require as require_export_package,
)
from models.system import FaceRecognitionSystem
from models.weights import load_net
from tests.conftest import import_or_skip
from utils.checkpoint import save_checkpoint
from utils.cli import run
from utils.errors import ConfigError, DataError
from utils.hashing import sha256_file
from utils.images import read_image, write_image

TOLERANCE = 1e-4  # largest |ONNX Runtime - PyTorch| accepted for any output of an fp32 export (seen: ~2e-6)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def photos(shared_data: Path) -> list[np.ndarray]:
    """The three photos and two WIDER FACE train images (real faces, several sizes), at most 640 px wide or high
    (keeps the file fast; the cascade still sees 12-200 px faces)."""
    wider = sorted((shared_data / "wider_face_train_subset" / "WIDER_train" / "images").glob("*/*.jpg"))
    images = [read_image(p) for p in sorted((shared_data / "photos").glob("*")) + wider[::600][:2]]
    scales = [min(1.0, 640 / max(image.shape[:2])) for image in images]
    return [cv2.resize(image, None, fx=s, fy=s, interpolation=cv2.INTER_AREA) if s < 1 else image
            for image, s in zip(images, scales)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, pretrained_mtcnn: Path,
             photos: list[np.ndarray]) -> SimpleNamespace:
    """All four nets exported once (checked by the exporter on the cascade's own inputs from the photos)."""
    for module in ("onnx", "onnxscript", "onnxruntime"):
        import_or_skip(module, f"optional ONNX export packages, {EXPORT_REQUIREMENTS}")
    torch.manual_seed(0)
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("onnx")
    detector = FaceDetector.from_pretrained(pretrained_mtcnn)
    batches, detections = cascade_inputs(detector, photos, limit=6)
    metas = {name: export_mtcnn_net(name, pretrained_mtcnn, out, batches[name], {"note": "test"}, TOLERANCE)
             for name in NET_NAMES}
    arch = {"backbone": "mobilefacenet", "embedding_size": 32, "input_size": 48, "width": 0.25, "dropout": 0.0,
            "align": {"size": 160, "margin": 0.0, "method": "similarity"}}
    model = Embedder.build("mobilefacenet", embedding_size=32, input_size=48, width=0.25)
    faces = embedder_faces(photos, detections, model, arch, AlignConfig())
    for layer in model.modules():  # batch-norm statistics of real faces, so embeddings differ from face to face
        if isinstance(layer, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            layer.reset_running_stats()
            layer.momentum = None  # cumulative average
    with torch.no_grad():
        model.train()(faces.float())
    model.eval()
    checkpoint = out / "embedder.pt"
    save_checkpoint(checkpoint, {"kind": "facenet", "model": model.state_dict(), "embedder": arch})
    metas["embedder"] = export_embedder(model, arch, checkpoint, out, faces, TOLERANCE)
    # PyTorch's embeddings of every face, in one batch shape (each new shape costs PyTorch's CPU kernels a warm-up).
    embeddings = {flip: model.embed(faces, batch_size=len(faces), flip=flip) for flip in (False, True)}
    return SimpleNamespace(out=out, metas=metas, detections=detections, model=model, arch=arch, checkpoint=checkpoint,
                           faces=faces, embeddings=embeddings, weights=pretrained_mtcnn)


def test_mtcnn_nets_match_pytorch_in_onnxruntime(exported: SimpleNamespace) -> None:
    torch.manual_seed(1)
    shapes = {"pnet": [(1, 3, 12, 12), (3, 3, 37, 53)], "rnet": [(1, 3, 24, 24), (7, 3, 24, 24)],
              "onet": [(1, 3, 48, 48), (5, 3, 48, 48)]}
    for name in NET_NAMES:
        meta = exported.metas[name]
        assert meta["source_sha256"] == sha256_file(exported.weights / f"{name}.pt")
        assert meta["check"]["inputs"] > 0 and max(meta["check"]["max_abs_diff"].values()) <= TOLERANCE
        net, onnx_net = load_net(exported.weights, name), load_onnx_net(exported.out, name, threads=1)
        assert onnx_net.has_landmarks == (name == "onet")
        for shape in shapes[name]:  # dynamic batch (and P-Net height and width) beyond the export example
            x = torch.rand(shape) * 2 - 1
            with torch.inference_mode():
                want = net(x)
            got = onnx_net(x)
            for field in ("box", "face", "landmarks"):
                a, b = getattr(want, field), getattr(got, field)
                assert (a is None) == (b is None)
                if a is not None:
                    assert a.shape == b.shape
                    assert float((a - b).abs().max()) <= TOLERANCE, (name, shape, field)


def test_embedder_matches_pytorch_in_onnxruntime(exported: SimpleNamespace) -> None:
    faces = exported.faces
    assert len(faces) >= 10  # real faces aligned from the photos' detections
    onnx_model = load_onnx_embedder(exported.out, threads=1)
    assert onnx_model.source_sha256 == sha256_file(exported.checkpoint)
    assert (onnx_model.input_size, onnx_model.embedding_size) == (48, 32)
    for flip, want in exported.embeddings.items():
        got = onnx_model.embed(faces, batch_size=3, flip=flip)  # batches of 3 and a last of 1: the dynamic batch axis
        assert float((want - got).abs().max()) <= TOLERANCE
    want = exported.embeddings[False]
    assert float((want @ want.T).fill_diagonal_(0).max()) < 0.95  # distinct faces, distinct embeddings: a real test


def test_onnx_cascade_finds_the_same_faces_on_real_photos(exported: SimpleNamespace, photos: list[np.ndarray]) -> None:
    onnx_detector = FaceDetector.from_checkpoints(exported.out, exported.out, exported.out, backend="onnx")
    found = [d.to("cpu") for d in onnx_detector.detect(photos)]
    same = compare_detections(exported.detections, found, iou=0.99)
    assert same["faces_reference"] >= 15
    assert same["faces_candidate"] == same["faces_reference"]
    assert same["unmatched"] == 0
    assert same["landmark_distance"] < 0.01
    for a, b in zip(exported.detections, found, strict=True):
        assert torch.allclose(a.scores, b.scores, atol=1e-4)


def test_system_runs_from_the_exported_files(exported: SimpleNamespace, photos: list[np.ndarray]) -> None:
    config = load_config(None, [f"paths.onnx={exported.out}", "detector.backend=onnx", "system.embedder_backend=onnx",
                                "runtime.device=cpu"])
    system = FaceRecognitionSystem.from_config(config, matcher=None)
    assert isinstance(system.embedder, OnnxEmbedder)
    assert system.embedder_sha256 == sha256_file(exported.checkpoint)  # matchers made for the checkpoint still fit
    results = system.analyse(photos[:3])
    start = 0
    for result, torch_found in zip(results, exported.detections[:3]):
        # The PyTorch path: the PyTorch cascade's faces, cut the same way, through the PyTorch embedder.
        want = exported.embeddings[config.system.flip][start:start + len(torch_found)]
        start += len(torch_found)
        got = torch.from_numpy(np.stack([face.embedding for face in result.faces]))
        assert len(got) == len(want) >= 1
        # Landmarks differ by ~1e-5 px between the backends, which can move a pixel of a uint8 crop by one level,
        # so embeddings are compared by cosine similarity (pairing each face with its best PyTorch match).
        assert float((got @ want.T).amax(dim=1).min()) > 0.999


def test_int8_embedder_is_quantized_calibrated_and_close(exported: SimpleNamespace, tmp_path: Path) -> None:
    import onnx

    from deploy.export import calibration_faces

    root = tmp_path / "aligned"  # a tiny identity tree of aligned crops, read as training reads them
    for i, face in enumerate(exported.faces):
        write_image(root / f"id{i % 4}" / f"{i:03d}.png", face.permute(1, 2, 0).numpy())
    calibration = calibration_faces(load_config(), root, 12, input_size=48)
    assert calibration.shape == (12, 3, 48, 48) and calibration.dtype == torch.float32
    meta = export_embedder_int8(exported.model, exported.checkpoint, exported.out, calibration, exported.faces,
                                method="percentile", min_cosine=0.5)
    assert meta["precision"] == "int8" and meta["source_sha256"] == sha256_file(exported.checkpoint)
    graph = onnx.load(str(exported.out / "embedder_int8.onnx")).graph
    assert any(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer)
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) >= 10
    int8 = load_onnx_embedder(exported.out, int8=True, threads=1)
    similarity = int8.embed(exported.faces) @ exported.embeddings[False].T  # int8 face i vs fp32 face j
    # A random network magnifies quantization noise (the trained embedder keeps cosine 0.997, bench/bench_inference.py);
    # even so each int8 embedding stays closest to its own face's fp32 embedding.
    assert float(similarity.diagonal().mean()) > 0.9 and float(similarity.diagonal().min()) > 0.8
    assert torch.equal(similarity.argmax(dim=1), torch.arange(len(exported.faces)))


def test_failed_checks_write_nothing(tmp_path: Path) -> None:
    with pytest.raises(ExportCheckError, match="box 0.001"):
        check_within({"max_abs_diff": {"box": 1e-3, "face": 1e-7}}, TOLERANCE, "pnet.onnx")

    def failing(_: Path) -> dict:
        raise ExportCheckError("differs")

    target = tmp_path / "pnet.onnx"
    with pytest.raises(ExportCheckError):
        write_checked(target, b"new", failing)
    assert not target.exists()
    target.write_bytes(b"old")
    with pytest.raises(ExportCheckError):
        write_checked(target, b"new", failing)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["pnet.onnx"]


def test_bad_or_mismatched_sidecars_are_clear_errors(exported: SimpleNamespace, tmp_path: Path) -> None:
    shutil.copy(exported.out / "pnet.onnx", tmp_path / "pnet.onnx")
    with pytest.raises(DataError, match=r"pnet\.json: sidecar JSON .* missing"):
        load_onnx_net(tmp_path, "pnet")
    shutil.copy(exported.out / "rnet.json", tmp_path / "pnet.json")
    with pytest.raises(DataError, match="describes a 'rnet' export"):
        load_onnx_net(tmp_path, "pnet")
    shutil.copy(exported.out / "pnet.json", tmp_path / "pnet.json")
    with open(tmp_path / "pnet.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(DataError, match=r"pnet\.onnx: content does not match its sidecar"):
        load_onnx_net(tmp_path, "pnet")
    with pytest.raises(DataError, match="exported embedder not found"):
        OnnxEmbedder(tmp_path / "embedder.onnx")


def test_missing_onnxruntime_is_one_clear_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                               tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(MissingDependencyError, match=f"onnxruntime is not installed.*{EXPORT_REQUIREMENTS}"):
        require_export_package("onnxruntime")
    with pytest.raises(MissingDependencyError, match=EXPORT_REQUIREMENTS):
        FaceDetector.from_checkpoints(tmp_path, tmp_path, tmp_path, backend="onnx")
    assert run(main, get_args_parser(), ["--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: onnxruntime is not installed") and EXPORT_REQUIREMENTS in err[0]


def test_core_toolkit_imports_without_the_onnx_packages() -> None:
    code = ("import sys\n"
            "for name in ('onnx', 'onnxscript', 'onnxruntime'):\n"
            "    sys.modules[name] = None  # any import of them now fails\n"
            "import config, models.system, models.detector, models.onnx_nets, deploy.export\n"
            "print('ok')\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_unknown_backends_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="detector backend must be one of torch, onnx"):
        FaceDetector.from_checkpoints(tmp_path, tmp_path, tmp_path, backend="tensorrt")
    with pytest.raises(ConfigError, match="'detector.backend'"):
        load_config(None, ["detector.backend=tensorrt"])
    with pytest.raises(ConfigError, match="'system.embedder_backend'"):
        load_config(None, ["system.embedder_backend=int4"])

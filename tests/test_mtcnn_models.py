"""P-Net/R-Net/O-Net: shapes, probabilities vs ``logits=True``, the original weights, and weight import/export."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from models.mtcnn import NetOutput, ONet, PNet, RNet, build_net, max_pool_2x2
from models.weights import (
    load_net,
    original_weight_paths,
    read_state_dict,
    resolve_weights,
    save_net,
    wheel_weights_dir,
)
from tests.conftest import FACENET_REFERENCE, import_or_skip
from utils.errors import DataError

INPUTS = {"pnet": (2, 3, 30, 40), "rnet": (5, 3, 24, 24), "onet": (4, 3, 48, 48)}


@pytest.fixture(scope="module")
def original(pretrained_mtcnn: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {name: read_state_dict(path, name) for name, path in original_weight_paths(pretrained_mtcnn).items()}


@pytest.mark.parametrize("name", ["pnet", "rnet", "onet"])
def test_output_shapes_and_modes(name: str) -> None:
    torch.manual_seed(0)
    net = build_net(name, landmarks=True)
    x = torch.randn(*INPUTS[name])
    net.train()
    logits = net(x, logits=True)
    assert isinstance(logits, NetOutput)
    n = x.shape[0]
    if name == "pnet":
        spatial = (10, 15)  # (30 - 10) / 2, (40 - 10) / 2
        assert logits.face.shape == (n, 2, *spatial) and logits.box.shape == (n, 4, *spatial)
        assert logits.landmarks is not None and logits.landmarks.shape == (n, 10, *spatial)
    else:
        assert logits.face.shape == (n, 2) and logits.box.shape == (n, 4)
        assert logits.landmarks is not None and logits.landmarks.shape == (n, 10)
    probs = net(x)
    assert all(torch.equal(a, b) for a, b in zip(probs, net.eval()(x)))  # the mode does not change the output
    torch.testing.assert_close(net(x, logits=True).face, logits.face, rtol=0, atol=0)
    # probabilities come from the fused heads; they equal the softmax of the logits
    torch.testing.assert_close(probs.face, torch.softmax(logits.face, dim=1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(probs.box, logits.box, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(probs.landmarks, logits.landmarks, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(logits.face.sum(dim=1), torch.ones(1))  # logits are not probabilities


def test_training_mode_has_gradients_through_every_head() -> None:
    torch.manual_seed(0)
    net = RNet(landmarks=True).train()
    out = net(torch.randn(3, 3, 24, 24), logits=True)
    (out.face.sum() + out.box.sum() + out.landmarks.sum()).backward()
    for name in ("dense5_1", "dense5_2", "dense5_3", "conv1"):
        assert getattr(net, name).weight.grad is not None and getattr(net, name).weight.grad.abs().sum() > 0


def test_wrong_input_shapes_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="24 x 24"):
        RNet().eval()(torch.zeros(1, 3, 48, 48))
    with pytest.raises(ValueError, match="at least 12x12"):
        PNet().eval()(torch.zeros(1, 3, 11, 30))
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        ONet().eval()(torch.zeros(3, 48, 48))
    with pytest.raises(ValueError, match="landmark head"):
        build_net("onet", landmarks=False)


def test_original_weights_load_with_identical_keys(original: dict) -> None:
    for name, cls in (("pnet", PNet), ("rnet", RNet), ("onet", ONet)):
        result = cls().load_state_dict(original[name], strict=True)
        assert not result.missing_keys and not result.unexpected_keys


@pytest.mark.parametrize("name,head", [("pnet", "conv4_3"), ("rnet", "dense5_3")])
def test_landmark_head_is_exactly_the_missing_keys(original: dict, name: str, head: str) -> None:
    net = build_net(name, landmarks=True)
    result = net.load_state_dict(original[name], strict=False)
    assert sorted(result.missing_keys) == [f"{head}.bias", f"{head}.weight"]
    assert result.unexpected_keys == []


def test_nets_match_facenet_pytorch_outputs(original: dict) -> None:
    reference = import_or_skip("facenet_pytorch.models.mtcnn", FACENET_REFERENCE)
    torch.manual_seed(0)
    for name, ref_cls in (("pnet", reference.PNet), ("rnet", reference.RNet), ("onet", reference.ONet)):
        ours = build_net(name)
        ours.load_state_dict(original[name])
        ref = ref_cls(pretrained=False)
        ref.load_state_dict(original[name])
        shape = (2, 3, 31, 41) if name == "pnet" else INPUTS[name]  # odd sizes: ceil-mode pooling edges
        x = torch.rand(*shape) * 2 - 1
        with torch.no_grad():
            mine = ours.eval()(x)
            theirs = ref.eval()(x)
            # channels_last, the detector's layout, gives the same numbers
            fast = build_net(name)
            fast.load_state_dict(original[name])
            fast = fast.eval().to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(mine.box, theirs[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(mine.face, theirs[-1], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fast.face, theirs[-1], rtol=1e-4, atol=1e-5)
        if name == "onet":
            torch.testing.assert_close(mine.landmarks, theirs[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("height,width", [(6, 8), (7, 9), (1, 1), (2, 5)])
def test_fast_2x2_pool_equals_max_pool(height: int, width: int) -> None:
    torch.manual_seed(0)
    layer = torch.nn.MaxPool2d(2, 2, ceil_mode=True)
    x = torch.randn(2, 16, height, width).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        fast = max_pool_2x2(x, layer)
    assert torch.equal(fast, layer(x))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_wheel_source_holds_the_same_original_files(pretrained_mtcnn: Path) -> None:
    import_or_skip("facenet_pytorch", FACENET_REFERENCE)
    folder = wheel_weights_dir()
    assert (folder / "onet.pt").is_file()
    for name in ("pnet", "rnet", "onet"):
        assert _sha(resolve_weights("facenet-pytorch", name)) == _sha(pretrained_mtcnn / f"{name}.pt")


def test_checkpoint_round_trips(tmp_path: Path, pretrained_mtcnn: Path) -> None:
    torch.manual_seed(0)
    net = PNet(landmarks=True).eval()
    save_net(net, tmp_path / "pnet_ckpt.pt", config={"stage": "pnet", "lr": 0.01})
    payload = torch.load(tmp_path / "pnet_ckpt.pt", weights_only=True)
    assert payload["kind"] == "pnet" and payload["config"]["lr"] == 0.01
    loaded = load_net(tmp_path / "pnet_ckpt.pt", "pnet")
    assert loaded.has_landmarks  # inferred from the file
    x = torch.rand(1, 3, 20, 20)
    torch.testing.assert_close(loaded(x).landmarks, net(x).landmarks)
    # a plain export of a net without the landmark head is byte-for-byte the original layout
    original = load_net(pretrained_mtcnn, "rnet")
    save_net(original, tmp_path / "rnet.pt", plain=True)
    plain = torch.load(tmp_path / "rnet.pt", weights_only=True)
    reference = torch.load(pretrained_mtcnn / "rnet.pt", weights_only=True)
    assert list(plain) == list(reference)
    assert all(torch.equal(plain[k], reference[k]) for k in reference)
    # the original weights under a landmark head: loads, head stays fresh for fine-tuning
    with_head = load_net(pretrained_mtcnn, "pnet", landmarks=True)
    assert with_head.has_landmarks


def test_bad_checkpoints_are_clear_errors(tmp_path: Path, pretrained_mtcnn: Path) -> None:
    with pytest.raises(DataError, match="this state_dict is a rnet, expected pnet"):
        load_net(pretrained_mtcnn / "rnet.pt", "pnet")
    save_net(ONet(), tmp_path / "onet_ckpt.pt")
    with pytest.raises(DataError, match="this is a onet checkpoint, expected rnet"):
        load_net(tmp_path / "onet_ckpt.pt", "rnet")
    state = torch.load(pretrained_mtcnn / "pnet.pt", weights_only=True)
    state["conv2.weight"] = torch.zeros(8, 10, 3, 3)
    torch.save(state, tmp_path / "bad_shape.pt")
    with pytest.raises(DataError,
                       match=r"bad_shape.pt: weights do not fit PNet: shape mismatch in conv2.weight \(8, 10, 3, 3\)"):
        load_net(tmp_path / "bad_shape.pt", "pnet")
    del state["conv3.bias"]
    state["conv2.weight"] = torch.zeros(16, 10, 3, 3)
    torch.save(state, tmp_path / "missing.pt")
    with pytest.raises(DataError, match=r"missing keys \['conv3.bias'\]"):
        load_net(tmp_path / "missing.pt", "pnet")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(DataError, match="garbage.pt: (refused to load|unreadable)"):
        load_net(tmp_path / "garbage.pt", "pnet")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(DataError, match="expected a checkpoint dict, found list"):
        load_net(tmp_path / "list.pt", "pnet")
    torch.save({"model": state, "kind": "rnet"}, tmp_path / "kind.pt")
    with pytest.raises(DataError, match="this is a rnet checkpoint, expected pnet"):
        load_net(tmp_path / "kind.pt", "pnet")
    with pytest.raises(DataError, match="pnet weights not found"):
        load_net(tmp_path / "nowhere", "pnet")
    with pytest.raises(ValueError, match="unknown MTCNN net"):
        resolve_weights(pretrained_mtcnn, "xnet")

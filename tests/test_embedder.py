"""Backbones and the Embedder: facenet-pytorch weight compatibility, shapes, preprocessing, inference, hashing."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.embedder import Embedder, build_backbone, standardize
from models.inception_resnet_v1 import InceptionResnetV1, load_facenet_weights
from models.mobilefacenet import MobileFaceNet, final_grid_size
from tests.conftest import FACENET_REFERENCE, import_or_skip
from utils.errors import ConfigError, DataError
from utils.hashing import file_fingerprint, sha256_file


def _smooth_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Smooth random uint8 images (upsampled 8x8 noise): unlike pixel noise, a random net tells them apart."""
    coarse = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 255
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False).round().to(torch.uint8)


def _calibrate_batch_norms(model: torch.nn.Module, images: torch.Tensor) -> None:
    """Set every BN's running statistics from one batch (as after training), with random affine terms.

    With the freshly initialised statistics (mean 0, var 1) a random Inception net maps every input to
    almost the same embedding, and a parity test on it would prove little.
    """
    generator = torch.Generator().manual_seed(1)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for module in norms:
            module.momentum = None  # cumulative average: one batch sets the statistics exactly
            module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.bias.copy_(torch.rand(module.num_features, generator=generator) * 0.2 - 0.1)
        model.train()(standardize(images))
    for module in norms:
        module.momentum = 0.1
    model.eval()


@pytest.fixture(scope="module")
def reference_inception() -> torch.nn.Module:
    """facenet-pytorch's InceptionResnetV1 with random weights (nothing downloaded)."""
    facenet_pytorch = import_or_skip("facenet_pytorch", FACENET_REFERENCE)
    torch.manual_seed(0)
    model = facenet_pytorch.InceptionResnetV1(pretrained=None, classify=False)
    _calibrate_batch_norms(model, _smooth_images(4, 80, seed=1))
    return model


def test_inception_state_dict_matches_facenet_pytorch_keys_and_shapes(reference_inception: torch.nn.Module) -> None:
    ours = {k: tuple(v.shape) for k, v in InceptionResnetV1().state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in reference_inception.state_dict().items()}
    assert ours == theirs


def test_inception_loads_facenet_pytorch_weights_and_gives_same_embeddings(
        reference_inception: torch.nn.Module) -> None:
    embedder = Embedder.build("inception_resnet_v1", embedding_size=512, dropout=0.6)
    embedder.backbone.load_state_dict(reference_inception.state_dict(), strict=True)
    embedder.eval()
    pixels = _smooth_images(2, 160, seed=2)
    with torch.no_grad():
        expected = reference_inception(standardize(pixels))
        got = embedder(pixels)
    assert got.shape == (2, 512)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert float(got[0] @ got[1]) < 0.99  # different images, clearly different embeddings


def test_inception_rejects_weights_of_another_embedding_size(reference_inception: torch.nn.Module) -> None:
    with pytest.raises(RuntimeError, match="size mismatch"):
        InceptionResnetV1(embedding_size=128).load_state_dict(reference_inception.state_dict(), strict=True)


def test_published_weight_file_loads_without_its_classifier(reference_inception: torch.nn.Module, tmp_path) -> None:
    # The published files also hold a classifier over their training identities (8631 for VGGFace2).
    state = dict(reference_inception.state_dict())
    state["logits.weight"] = torch.zeros(10, 512)
    state["logits.bias"] = torch.zeros(10)
    path = tmp_path / "20180402-114759-vggface2.pt"
    torch.save(state, path)
    model = InceptionResnetV1().eval()
    assert load_facenet_weights(model, path) == ["logits.weight", "logits.bias"]
    pixels = standardize(_smooth_images(1, 80, seed=3))  # any size >= 75 works; 160 is checked above
    with torch.no_grad():
        torch.testing.assert_close(F.normalize(model(pixels)), reference_inception(pixels), atol=1e-5, rtol=0)


def test_foreign_or_broken_weight_files_are_named(reference_inception: torch.nn.Module, tmp_path) -> None:
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="broken.pt: cannot read weights"):
        load_facenet_weights(InceptionResnetV1(), broken)
    with pytest.raises(DataError, match="embedding_size=512"):
        load_facenet_weights(InceptionResnetV1(embedding_size=128), reference_inception.state_dict())
    partial = {k: v for k, v in reference_inception.state_dict().items() if not k.startswith("block8.")}
    with pytest.raises(DataError, match="missing key"):
        load_facenet_weights(InceptionResnetV1(), partial)
    with pytest.raises(DataError, match="weights file not found"):
        load_facenet_weights(InceptionResnetV1(), tmp_path / "absent.pt")


def test_build_backbone_rejects_unknown_names_and_unusable_sizes() -> None:
    with pytest.raises(ConfigError, match="unknown backbone"):
        build_backbone("resnet9000")
    with pytest.raises(ConfigError, match="input_size >= 75"):
        build_backbone("inception_resnet_v1", input_size=64)
    with pytest.raises(ConfigError, match="fixed width"):
        build_backbone("inception_resnet_v1", width=0.5)


@pytest.mark.parametrize("input_size,grid", [(112, 7), (160, 10), (64, 4), (100, 7)])
def test_mobilefacenet_gdconv_covers_the_final_grid(input_size: int, grid: int) -> None:
    assert final_grid_size(input_size) == grid
    model = MobileFaceNet(embedding_size=64, input_size=input_size, width=0.25).eval()
    assert model.gdconv[0].kernel_size == (grid, grid)
    with torch.no_grad():
        assert model(torch.zeros(2, 3, input_size, input_size)).shape == (2, 64)


def test_mobilefacenet_width_and_input_checks() -> None:
    full = sum(p.numel() for p in MobileFaceNet(embedding_size=128).parameters())
    half = sum(p.numel() for p in MobileFaceNet(embedding_size=128, width=0.5).parameters())
    assert 0.8e6 < full < 1.3e6  # the paper's ~1M parameters (its head is a 1x1 conv instead of linear + BN)
    assert half < full / 2.5
    with pytest.raises(ValueError, match="built for 112x112"):
        MobileFaceNet(input_size=112)(torch.zeros(1, 3, 96, 96))


def test_embedder_output_is_unit_length_and_trainable() -> None:
    torch.manual_seed(0)
    embedder = Embedder.build("mobilefacenet", embedding_size=32, input_size=32, width=0.25, dropout=0.2)
    pixels = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    out = embedder(pixels)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4))
    out[:, 0].sum().backward()
    grads = [p.grad for p in embedder.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert embedder.embedding_size == 32


@pytest.fixture(scope="module")
def small_embedder() -> Embedder:
    torch.manual_seed(3)
    embedder = Embedder.build("mobilefacenet", embedding_size=16, input_size=32, width=0.25)
    _calibrate_batch_norms(embedder.backbone, _smooth_images(8, 32, seed=7))
    return embedder.train()


def test_embed_same_result_for_tensor_list_and_any_batch_size(small_embedder: Embedder) -> None:
    tensor = _smooth_images(5, 32, seed=4)
    arrays = [image.permute(1, 2, 0).numpy() for image in tensor]
    by_tensor = small_embedder.embed(tensor, batch_size=5)
    by_list = small_embedder.embed(arrays, batch_size=2)
    one_by_one = small_embedder.embed(tensor, batch_size=1)
    torch.testing.assert_close(by_tensor, by_list)
    torch.testing.assert_close(by_tensor, one_by_one, atol=1e-5, rtol=0)
    torch.testing.assert_close(by_tensor.norm(dim=1), torch.ones(5))
    assert (by_tensor[0] - by_tensor[1]).abs().max() > 0.05  # distinct images stay distinct
    assert small_embedder.training  # embed() restores the caller's mode
    assert small_embedder.embed([]).shape == (0, 16)


def test_embed_flip_tta_is_the_normalised_sum_of_both_views(small_embedder: Embedder) -> None:
    pixels = _smooth_images(3, 32, seed=5)
    plain = small_embedder.embed(pixels)
    mirrored = small_embedder.embed(pixels.flip(-1))
    tta = small_embedder.embed(pixels, flip=True)
    torch.testing.assert_close(tta, F.normalize(plain + mirrored, dim=1), atol=1e-5, rtol=0)
    assert (tta - plain).abs().max() > 0.05
    symmetric = torch.cat([pixels[..., :16], pixels[..., :16].flip(-1)], dim=-1)  # mirror-symmetric faces
    torch.testing.assert_close(small_embedder.embed(symmetric, flip=True), small_embedder.embed(symmetric))


def test_embed_resizes_other_sizes_and_rejects_bad_shapes(small_embedder: Embedder) -> None:
    big = _smooth_images(2, 64, seed=6)
    resized = F.interpolate(big.float(), size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(small_embedder.embed(big), small_embedder.embed(resized))
    with pytest.raises(ValueError, match="HxWx3"):
        small_embedder.embed([np.zeros((32, 32), dtype=np.uint8)])
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        small_embedder.embed(torch.zeros(2, 32, 32, 3))


def test_embedder_takes_the_input_size_of_fixed_size_backbones() -> None:
    assert Embedder(MobileFaceNet(embedding_size=8, input_size=48, width=0.25)).input_size == 48
    assert Embedder(InceptionResnetV1()).input_size == 160
    with pytest.raises(ConfigError, match="built for 48 px input, not 64"):
        Embedder(MobileFaceNet(embedding_size=8, input_size=48, width=0.25), input_size=64)


def test_standardize_maps_pixel_range_like_facenet() -> None:
    out = standardize(torch.tensor([0, 127, 128, 255], dtype=torch.uint8))
    torch.testing.assert_close(out, torch.tensor([-127.5, -0.5, 0.5, 127.5]) / 128.0)


def test_per_image_standardization_ignores_exposure_and_contrast() -> None:
    rng = np.random.default_rng(0)
    face = torch.from_numpy(rng.uniform(60, 200, size=(1, 3, 16, 16)).astype(np.float32))
    dark = face * 0.3 + 5  # an under-exposed, low-contrast copy
    out = standardize(torch.cat([face, dark]), "per_image")
    torch.testing.assert_close(out[0], out[1], rtol=1e-4, atol=1e-4)
    assert abs(float(out[0].mean())) < 1e-5 and abs(float(out[0].std()) - 1.0) < 1e-4
    flat = standardize(torch.full((1, 3, 4, 4), 90.0), "per_image")
    assert torch.isfinite(flat).all() and float(flat.abs().max()) == 0.0  # no division by zero
    model = Embedder(MobileFaceNet(embedding_size=8, input_size=48, width=0.25), standardization="per_image").eval()
    images = torch.from_numpy(rng.uniform(0, 255, size=(2, 3, 48, 48)).astype(np.float32))
    torch.testing.assert_close(model.embed(images), model.embed(images * 0.5 + 20), rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="standardization"):
        Embedder(MobileFaceNet(embedding_size=8, input_size=48, width=0.25), standardization="z")


def test_checkpoint_fingerprint_tracks_content(tmp_path) -> None:
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    first.write_bytes(b"weights-1" * 100_000)
    second.write_bytes(b"weights-2" * 100_000)
    assert sha256_file(first) == hashlib.sha256(first.read_bytes()).hexdigest()
    assert file_fingerprint(first) == sha256_file(first)[:12]
    assert file_fingerprint(first) != file_fingerprint(second)
    with pytest.raises(DataError, match="missing.pt"):
        file_fingerprint(tmp_path / "missing.pt")

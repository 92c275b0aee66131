"""Safe image reading, atomic writes and safe checkpoints."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from utils.atomic import atomic_path, atomic_write_text
from utils.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from utils.errors import BadInputLog, DataError
from utils.images import read_image, write_image


def _save(path, array, mode=None, **kwargs):
    Image.fromarray(array, mode=mode).save(path, **kwargs) if mode else Image.fromarray(array).save(path, **kwargs)
    return path


def test_every_image_kind_becomes_rgb_uint8(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    grey = rgb[:, :, 0]
    rgba = np.dstack([rgb, np.full((20, 30), 128, np.uint8)])
    sixteen = (grey.astype(np.uint16) * 257)
    paths = {
        "rgb": _save(tmp_path / "a.png", rgb),
        "grey": _save(tmp_path / "b.png", grey),
        "rgba": _save(tmp_path / "c.png", rgba),
        "sixteen": _save(tmp_path / "d.png", sixteen),
    }
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "e.jpg")
    paths["cmyk"] = tmp_path / "e.jpg"
    for name, path in paths.items():
        image = read_image(path)
        assert image.shape == (20, 30, 3) and image.dtype == np.uint8, name
    assert np.array_equal(read_image(paths["rgba"]), rgb)
    assert np.array_equal(read_image(paths["sixteen"])[:, :, 1], grey)
    assert np.array_equal(read_image(paths["grey"])[:, :, 2], grey)


def test_bad_images_raise_data_error_naming_the_file(tmp_path):
    good = _save(tmp_path / "good.jpg", np.zeros((64, 64, 3), np.uint8))
    data = good.read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    expected = {"truncated.jpg": "corrupt or truncated", "empty.jpg": "empty", "text.jpg": "not an image",
                "missing.jpg": "not found"}
    for name, reason in expected.items():
        with pytest.raises(DataError) as info:
            read_image(tmp_path / name)
        assert name in str(info.value) and reason in str(info.value)
    with pytest.raises(DataError, match="pixel limit"):
        read_image(good, max_pixels=100)


def test_bad_input_log_skips_or_stops():
    log = BadInputLog()
    with pytest.warns(UserWarning):
        log.report(DataError("x.jpg", "broken"))
    assert len(log) == 1 and "x.jpg: broken" in log.summary()
    with pytest.raises(DataError):
        BadInputLog(strict=True).report(DataError("y.jpg", "broken"))


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]
    write_image(tmp_path / "img.png", np.ones((4, 4, 3), np.uint8))
    assert read_image(tmp_path / "img.png").sum() == 48


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoint_refuses_code_and_wrong_kind(tmp_path):
    model = torch.nn.Linear(3, 2)
    save_checkpoint(tmp_path / "ok.pt", {"kind": "pnet", "model": model.state_dict()})
    assert load_checkpoint(tmp_path / "ok.pt", kind="pnet")["kind"] == "pnet"
    with pytest.raises(DataError, match="holds a 'pnet' model, expected 'onet'"):
        load_checkpoint(tmp_path / "ok.pt", kind="onet")
    evil = tmp_path / "evil.pt"
    buffer = io.BytesIO()
    torch.save({"model": {}, "x": _Payload()}, buffer)
    evil.write_bytes(buffer.getvalue())
    with pytest.raises(DataError, match="refused to load"):
        load_checkpoint(evil)
    (tmp_path / "cut.pt").write_bytes((tmp_path / "ok.pt").read_bytes()[:50])
    with pytest.raises(DataError, match="cut.pt"):
        load_checkpoint(tmp_path / "cut.pt")


def test_the_same_checkpoint_saved_twice_has_the_same_bytes(tmp_path):
    state = {"kind": "facenet", "model": torch.nn.Linear(3, 2).state_dict(), "epoch": 4}
    save_checkpoint(tmp_path / "a.pt", state)
    save_checkpoint(tmp_path / "b" / "a.pt", state)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b" / "a.pt").read_bytes(), \
        "no temp-file name may end up inside the archive (it would change the file's SHA-256)"
    assert load_checkpoint(tmp_path / "a.pt")["epoch"] == 4


def test_model_state_mismatch_is_one_line(tmp_path):
    with pytest.raises(DataError, match="shape mismatch in weight"):
        load_model_state(torch.nn.Linear(3, 2), torch.nn.Linear(4, 2).state_dict(), "w.pt")
    with pytest.raises(DataError, match="unexpected keys"):
        load_model_state(torch.nn.Linear(3, 2), {**torch.nn.Linear(3, 2).state_dict(), "extra": torch.zeros(1)}, "w.pt")


def test_atomic_writes_get_ordinary_file_permissions(tmp_path):
    target = tmp_path / "report.json"
    atomic_write_text(target, "{}")
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600

"""Identity folders: the real layouts (CelebA subset, ORL, LFW), min_images, hidden files, bad roots."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datasets.identity import IdentityFolder
from utils.errors import DataError
from utils.images import read_image, write_image

FIXTURE = Path(__file__).parent / "fixtures" / "orl_faces"


def _check_consistent(folder: IdentityFolder) -> None:
    assert folder.classes == sorted(folder.classes)
    assert sorted(set(folder.targets)) == list(range(len(folder.classes)))
    for path, label in folder.samples:
        assert path.parent.name == folder.classes[label] and path.is_file()


def test_real_celeba_subset(shared_data: Path) -> None:
    folder = IdentityFolder(shared_data / "celeba_identities_subset")
    assert (len(folder.classes), len(folder)) == (299, 6300)
    assert folder.dropped == {}
    _check_consistent(folder)


def test_real_orl_faces(shared_data: Path) -> None:
    folder = IdentityFolder(shared_data / "orl_faces")
    assert len(folder.classes) == 40 and len(folder) == 400
    assert np.bincount(folder.targets).tolist() == [10] * 40
    assert all(path.suffix == ".pgm" for path, _ in folder.samples)
    _check_consistent(folder)
    path, label = folder.samples[0]
    image = read_image(path)
    assert image.shape == (112, 92, 3) and image.dtype == np.uint8 and label == 0
    assert np.array_equal(image[..., 0], image[..., 2])  # grey PGM expanded to RGB


def test_real_lfw_layout_and_min_images(shared_data: Path) -> None:
    root = shared_data / "lfw_top12_100px" / "images"
    folder = IdentityFolder(root)
    assert (len(folder.classes), len(folder)) == (12, 1544)
    big = IdentityFolder(root, min_images=100)
    assert big.classes == ["Colin_Powell", "Donald_Rumsfeld", "George_W_Bush", "Gerhard_Schroeder", "Tony_Blair"]
    assert len(big.dropped) == 7 and big.dropped["Serena_Williams"] == 52
    assert len(big) + sum(big.dropped.values()) == 1544
    _check_consistent(big)


def test_fixture_samples_read_as_rgb() -> None:
    folder = IdentityFolder(FIXTURE)
    assert folder.classes == ["s1", "s2"] and folder.targets == [0, 0, 1]
    images = np.stack([read_image(path) for path, _ in folder.samples])
    assert images.shape == (3, 112, 92, 3) and [label for _, label in folder.samples] == [0, 0, 1]
    assert 0 < images.mean() < 255


def _tree(root: Path, layout: dict[str, int]) -> None:
    pixel = np.full((4, 4, 3), 128, dtype=np.uint8)
    for name, count in layout.items():
        for i in range(count):
            write_image(root / name / f"{i}.jpg", pixel)


def test_min_images_hidden_files_extensions_and_relabelling(tmp_path: Path) -> None:
    _tree(tmp_path, {"zed": 3, "amy": 1, "bob": 2, ".hidden": 5})
    (tmp_path / "bob" / "notes.txt").write_text("not an image")
    (tmp_path / "bob" / "._0.jpg").write_bytes(b"macOS resource fork")
    write_image(tmp_path / "bob" / "UPPER.PNG", np.zeros((4, 4, 3), dtype=np.uint8))
    write_image(tmp_path / "zed" / "nested" / "deep.jpg", np.zeros((4, 4, 3), dtype=np.uint8))
    (tmp_path / "loose.jpg").write_bytes(b"x")
    folder = IdentityFolder(tmp_path, min_images=2)
    assert folder.classes == ["bob", "zed"] and folder.dropped == {"amy": 1}
    assert folder.class_to_idx == {"bob": 0, "zed": 1}
    names = [(path.relative_to(tmp_path).as_posix(), label) for path, label in folder.samples]
    assert names == [("bob/0.jpg", 0), ("bob/1.jpg", 0), ("bob/UPPER.PNG", 0),
                     ("zed/0.jpg", 1), ("zed/1.jpg", 1), ("zed/2.jpg", 1), ("zed/nested/deep.jpg", 1)]
    assert [idx.tolist() for idx in folder.indices_by_label()] == [[0, 1, 2], [3, 4, 5, 6]]
    only_png = IdentityFolder(tmp_path, extensions=(".png",))
    assert only_png.classes == ["bob"] and only_png.dropped == {"amy": 0, "zed": 0}


def test_bad_roots_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="identity folder not found") as caught:
        IdentityFolder(tmp_path / "absent")
    assert caught.value.path == str(tmp_path / "absent")
    with pytest.raises(DataError, match="no identity sub-folders"):
        IdentityFolder(tmp_path)
    (tmp_path / "person").mkdir()
    (tmp_path / "person" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no images with extensions"):
        IdentityFolder(tmp_path)
    _tree(tmp_path, {"person": 2})
    with pytest.raises(DataError, match="no identity has at least 3 images"):
        IdentityFolder(tmp_path, min_images=3)
    file_root = tmp_path / "person" / "0.jpg"
    with pytest.raises(DataError, match="identity folder not found"):
        IdentityFolder(file_root)


def test_unreadable_image_is_named_when_read(tmp_path: Path) -> None:
    _tree(tmp_path, {"a": 1})
    (tmp_path / "a" / "broken.jpg").write_bytes(b"not a jpeg")
    folder = IdentityFolder(tmp_path)
    assert [label for _, label in folder.samples] == [0, 0]
    with pytest.raises(DataError, match="broken.jpg"):
        read_image(folder.samples[1][0])

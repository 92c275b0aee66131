"""The gallery: round trip, refusal to mix embedders, atomic writes that survive a crash, rebuild."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from models.gallery import Gallery, GalleryModelMismatch
from utils.errors import DataError

REPO = Path(__file__).resolve().parents[1]
HASH_A = "a" * 64
HASH_B = "b" * 64


def unit(rng: np.random.Generator, n: int, dim: int = 8) -> np.ndarray:
    """``n`` random unit vectors."""
    v = rng.normal(size=(n, dim))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def small_gallery(seed: int = 0) -> Gallery:
    """Two identities: alice with 2 embeddings, bob with 1."""
    rng = np.random.default_rng(seed)
    gallery = Gallery(HASH_A, 8)
    gallery.add("alice", unit(rng, 2), ["/photos/alice_1.jpg", "/photos/alice_2.jpg"], embedder_sha256=HASH_A)
    gallery.add("bob", unit(rng, 1), ["/photos/bob_1.jpg"])
    return gallery


def test_round_trip_keeps_names_embeddings_sources_and_order(tmp_path) -> None:
    gallery = small_gallery()
    gallery.add("alice", unit(np.random.default_rng(9), 1), ["/photos/alice_3.jpg"])  # extends alice
    path = gallery.save(tmp_path / "gallery.pt")
    loaded = Gallery.load(path, HASH_A)
    assert loaded.names == ["alice", "bob"]
    assert loaded.num_embeddings == 4 and len(loaded) == 2
    assert loaded.identity("alice").sources == ["/photos/alice_1.jpg", "/photos/alice_2.jpg", "/photos/alice_3.jpg"]
    np.testing.assert_array_equal(loaded.identity("alice").embeddings, gallery.identity("alice").embeddings)
    matrix, owners = loaded.matrix()
    assert matrix.shape == (4, 8) and owners.tolist() == [0, 0, 0, 1]
    loaded.remove("bob")
    assert "bob" not in loaded and loaded.names == ["alice"]


def test_refuses_to_mix_embeddings_of_different_models(tmp_path) -> None:
    gallery = small_gallery()
    with pytest.raises(GalleryModelMismatch, match="rebuild"):
        gallery.add("carol", unit(np.random.default_rng(1), 1), embedder_sha256=HASH_B)
    assert "carol" not in gallery
    with pytest.raises(ValueError, match=r"\[K, 8\]"):
        gallery.add("carol", np.ones((1, 16)))
    with pytest.raises(ValueError, match="NaN"):
        gallery.add("carol", np.full((1, 8), np.nan))
    with pytest.raises(ValueError, match="source paths"):
        gallery.add("carol", unit(np.random.default_rng(1), 2), ["/one.jpg"])
    path = gallery.save(tmp_path / "gallery.pt")
    with pytest.raises(GalleryModelMismatch) as info:
        Gallery.load(path, HASH_B)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "--rebuild" in message
    assert HASH_A[:12] in message and HASH_B[:12] in message


def test_a_failed_write_leaves_the_old_gallery_intact(tmp_path, monkeypatch) -> None:
    path = small_gallery().save(tmp_path / "gallery.pt")
    before = path.read_bytes()

    def half_then_fail(state, handle) -> None:
        handle.write(b"PK\x03\x04 half a gallery")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_then_fail)
    bigger = small_gallery(seed=1)
    bigger.add("carol", unit(np.random.default_rng(2), 3))
    with pytest.raises(OSError, match="disk full"):
        bigger.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gallery.pt"]  # the temp file is cleaned up
    monkeypatch.undo()
    assert Gallery.load(path, HASH_A).names == ["alice", "bob"]


def test_a_process_killed_mid_write_leaves_the_old_gallery_intact(tmp_path) -> None:
    path = small_gallery().save(tmp_path / "gallery.pt")
    before = path.read_bytes()
    child = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        import numpy as np, torch
        from models.gallery import Gallery
        gallery = Gallery.load({str(path)!r})
        gallery.add("carol", np.eye(8)[:2])
        real_save = torch.save
        def crash_half_way(state, handle):
            real_save(state, handle)
            handle.truncate(handle.tell() // 2)
            handle.flush()
            os._exit(9)  # killed: no cleanup, no exception handlers
        torch.save = crash_half_way
        gallery.save({str(path)!r})
    """)
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 9, result.stderr
    assert path.read_bytes() == before
    leftovers = [p for p in tmp_path.iterdir() if p.name != "gallery.pt"]
    assert leftovers and all(p.name.startswith(".gallery.pt.") for p in leftovers)  # the half file, beside it
    assert Gallery.load(path, HASH_A).names == ["alice", "bob"]


def test_rebuild_re_embeds_stored_sources_and_reports_what_it_could_not(tmp_path) -> None:
    gallery = small_gallery()
    gallery.add("dave", unit(np.random.default_rng(3), 1))  # no source image: cannot be re-embedded
    new_vectors = {"/photos/alice_1.jpg": np.eye(4)[0], "/photos/alice_2.jpg": np.eye(4)[1],
                   "/photos/bob_1.jpg": None}  # the new models find no face in bob's photo

    def embed(paths):
        return [new_vectors[p] for p in paths]

    rebuilt, report = gallery.rebuild(embed, HASH_B, 4)
    assert rebuilt.embedder_sha256 == HASH_B and rebuilt.embedding_size == 4
    assert rebuilt.names == ["alice"]
    np.testing.assert_array_equal(rebuilt.identity("alice").embeddings, np.eye(4)[:2])
    assert rebuilt.identity("alice").sources == ["/photos/alice_1.jpg", "/photos/alice_2.jpg"]
    assert report.rebuilt == 2 and sorted(report.dropped_identities) == ["bob", "dave"]
    assert any("bob_1.jpg" in f for f in report.failed) and any("dave" in f for f in report.failed)
    rebuilt.save(tmp_path / "gallery.pt")
    assert Gallery.load(tmp_path / "gallery.pt", HASH_B).num_embeddings == 2


@pytest.mark.parametrize(("content", "expected"), [
    (b"", "unreadable or truncated"),
    (b"hello, not a torch file", "unreadable or truncated"),
])
def test_bad_gallery_files_are_one_line_errors(tmp_path, content: bytes, expected: str) -> None:
    path = tmp_path / "gallery.pt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=expected):
        Gallery.load(path)
    torch.save({"model": {}}, path)
    with pytest.raises(DataError, match="not a gallery file"):
        Gallery.load(path)
    with pytest.raises(DataError, match="not found"):
        Gallery.load(tmp_path / "absent.pt")

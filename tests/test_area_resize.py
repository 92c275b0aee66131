"""utils.area_resize: the one resampling path of the detector and the sample generator."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from utils.area_resize import _region_sums, area_resize, crop_resize, integral_image, rounded_pixels


def _images(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((90, 130, 3), (121, 77, 3))]


def test_regions_of_several_images_in_one_flat_buffer_equal_adaptive_pooling_of_each():
    images = _images(0)
    tables = [integral_image(image) for image in images]
    flat = torch.cat([t.reshape(-1, 3) for t in tables])
    starts = [0, tables[0].reshape(-1, 3).shape[0]]
    regions = torch.tensor([[0, 0, 130, 90], [5, 7, 60, 50], [0, 0, 77, 121], [30, 40, 41, 52], [70, 100, 77, 121]])
    owner = [0, 0, 1, 1, 1]
    for size in (12, 24, 48):
        crops = area_resize(flat, torch.tensor([starts[i] for i in owner]),
                            torch.tensor([images[i].shape[:2] for i in owner]), regions, size, rounded_pixels)
        for crop, (x0, y0, x1, y1), i in zip(crops, regions.tolist(), owner):
            patch = torch.from_numpy(images[i][y0:y1, x0:x1]).permute(2, 0, 1)[None].float()
            expected = F.adaptive_avg_pool2d(patch, size)[0].permute(1, 2, 0)
            assert (crop.float() - expected).abs().max() <= 0.5 + 1e-4


def test_many_regions_go_in_chunks_with_the_same_result_as_one_at_a_time():
    image = _images(1)[0]
    table = integral_image(image)
    rng = np.random.default_rng(2)
    side = rng.integers(3, 80, 300)
    x, y = rng.integers(-10, 120, 300), rng.integers(-10, 80, 300)
    regions = np.stack([x, y, x + side, y + side], axis=1)
    together = crop_resize(table, regions, 48)  # 300 regions: more than one chunk
    assert together.shape == (300, 48, 48, 3)
    for k in (0, 17, 150, 299):
        assert np.array_equal(together[k], crop_resize(table, regions[k:k + 1], 48)[0])
    assert crop_resize(table, np.zeros((0, 4), dtype=np.int64), 24).shape == (0, 24, 24, 3)


def test_the_torch_index_path_used_on_gpus_equals_the_numpy_path():
    image = _images(3)[1]
    flat = integral_image(image).reshape(-1, 3)
    regions = np.array([[-4, -4, 30, 30], [10, 20, 76, 120], [40, 5, 52, 17]])
    offsets, sizes = np.zeros(3, dtype=np.int64), np.tile(np.array(image.shape[:2]), (3, 1))
    numpy_sums, numpy_rows, numpy_cols = _region_sums(flat.numpy(), offsets, sizes, regions, 24)
    torch_sums, torch_rows, torch_cols = _region_sums(flat, torch.from_numpy(offsets), torch.from_numpy(sizes),
                                                      torch.from_numpy(regions), 24)
    assert isinstance(torch_sums, torch.Tensor)
    assert np.array_equal(torch_sums.numpy(), numpy_sums)
    assert np.array_equal(torch_rows.numpy(), numpy_rows) and np.array_equal(torch_cols.numpy(), numpy_cols)

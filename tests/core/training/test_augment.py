"""core.training.augment: boxes follow the pixels through every turn and flip."""

from __future__ import annotations

import numpy as np
import torch

from napari_cellquant.core.annotation import Boxes
from napari_cellquant.core.training.augment import AugmentSettings, dihedral_boxes, make_batch
from napari_cellquant.core.training.datasets import TrainingSample


def test_box_transforms_follow_the_pixels():
    """Boxes moved by dihedral_boxes cover the pixels the same turn/flips move."""
    size = 32
    xywh = np.array([[3.0, 5.0, 10.0, 4.0]])
    mask = torch.zeros(size, size)
    mask[5:9, 3:13] = 1
    for turn in (False, True):
        for flip_x in (False, True):
            for flip_y in (False, True):
                moved = mask
                if turn:
                    moved = torch.rot90(moved, 1, dims=(-2, -1))
                if flip_x:
                    moved = moved.flip(-1)
                if flip_y:
                    moved = moved.flip(-2)
                rows, cols = np.nonzero(moved.numpy())
                x, y, w, h = dihedral_boxes(xywh, size, turn, flip_x, flip_y)[0]
                assert (x, y, w, h) == (cols.min(), rows.min(), np.ptp(cols) + 1, np.ptp(rows) + 1)


def _crowd_and_one_rare_object() -> list[TrainingSample]:
    """40 common objects (class 1) along the top of one image, one rare (class 3) far below."""
    common = [[12.0 + 22 * (i % 20), 10.0 + 22 * (i // 20), 16.0, 16.0] for i in range(40)]
    boxes = Boxes(np.array([*common, [400.0, 400.0, 8.0, 8.0]]), np.array([1] * 40 + [3]))
    pixels = np.zeros((480, 480, 3), np.float32)
    return [TrainingSample("crowd", pixels, None, None, None, boxes)]


def _share_of_crops_holding_the_rare_object(balance: bool) -> float:
    settings = AugmentSettings(
        crop=64, scale_range=(1.0, 1.0), object_bias=1.0, balance_classes=balance
    )
    rng = np.random.default_rng(0)
    held = []
    for _ in range(25):
        batch = make_batch(
            _crowd_and_one_rare_object(), 8, settings, rng, detector={"n_classes": 3, "stride": 4}
        )
        held.extend((batch["heatmap"][:, 2].amax(dim=(1, 2)) == 1).tolist())
    return float(np.mean(held))


def test_balanced_crops_centre_rare_classes_as_often_as_common_ones():
    """Class-balanced crops find the one rare object in about half the crops (two classes);
    drawn per object, 1 crop in 41."""
    assert 0.35 < _share_of_crops_holding_the_rare_object(True) < 0.65
    assert _share_of_crops_holding_the_rare_object(False) < 0.1


def _two_stain_batch(stand_in: float) -> torch.Tensor:
    """Crops of an image whose second stain is the first one's negative."""
    first = np.random.default_rng(1).random((96, 96), dtype=np.float32)
    pixels = np.stack([first, 1 - first], axis=-1)
    sample = TrainingSample("field", pixels, None, None, None, Boxes())
    settings = AugmentSettings(crop=32, scale_range=(1.0, 1.0), stand_in_channels=stand_in)
    return make_batch([sample], 200, settings, np.random.default_rng(0))["image"]


def test_a_second_stain_is_replaced_by_the_first_in_a_share_of_crops():
    """stand_in_channels: that share of the crops has its second stain an exact copy of the
    first (after the jitter, as a one-stain image reaches a two-stain network); the rest keep
    both stains; 0 changes nothing."""
    images = _two_stain_batch(0.5)
    copied = (images[:, 1] == images[:, 0]).flatten(1).all(dim=1)
    assert 0.35 < copied.float().mean() < 0.65
    kept = images[~copied]
    assert (torch.corrcoef(torch.stack([kept[:, 0].flatten(), kept[:, 1].flatten()]))[0, 1]) < -0.5
    assert not (_two_stain_batch(0.0)[:, 1] == _two_stain_batch(0.0)[:, 0]).flatten(1).all(1).any()

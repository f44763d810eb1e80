"""core.training.augment: boxes follow the pixels through every turn and flip."""

from __future__ import annotations

import numpy as np
import torch

from napari_cellquant.core.training.augment import dihedral_boxes


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

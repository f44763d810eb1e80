"""Per-object measurements on hand-made objects."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cellquant.core.annotation import Annotation, Boxes
from napari_cellquant.core.classes import BLOOD3
from napari_cellquant.core.measure import object_columns, object_table


def test_squares_and_a_box_measured_by_hand():
    labels = np.zeros((40, 60), dtype=np.int32)
    labels[2:12, 4:14] = 1  # 10 x 10 square
    labels[20:24, 30:50] = 3  # 4 x 20 bar
    image = np.zeros((40, 60), dtype=np.uint8)
    image[labels == 1] = 200
    annotation = Annotation(
        labels,
        BLOOD3,
        {1: 1, 3: 2},
        scores={1: 0.9},
        boxes=Boxes(np.array([[50.0, 30.0, 4.0, 6.0]]), np.array([3])),
        image_name="a.png",
    )
    rows = {r["id"]: r for r in object_table(annotation, image, pixel_size_um=0.5)}
    square, bar, box = rows[1], rows[3], rows[4]
    assert (square["class"], square["score"], square["area_px"]) == ("rbc", 0.9, 100)
    assert square["area_um2"] == pytest.approx(25.0)
    assert (square["centroid_x"], square["centroid_y"]) == (8.5, 6.5)
    assert square["solidity"] == 1.0 and square["eccentricity"] == pytest.approx(0.0)
    assert square["equivalent_diameter_px"] == pytest.approx(2 * np.sqrt(100 / np.pi))
    assert square["mean_intensity_0"] == 200 and bar["mean_intensity_0"] == 0
    assert bar["class"] == "wbc" and bar["score"] is None and bar["eccentricity"] > 0.9
    assert (box["class"], box["origin"], box["area_px"]) == ("platelet", "box", 24.0)
    assert (box["centroid_x"], box["centroid_y"]) == (52.0, 33.0)
    assert object_columns(list(rows.values()))[-1] == "mean_intensity_0"

"""Pixel-border outlines: exact round trip through polygons with holes, valid OGC geometry."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_cellquant.core.io.outlines import instance_polygons, mask_polygons, rings_to_mask
from napari_cellquant.core.synthetic import synthetic_blood_smear


def _random_labels(seed: int, shape: tuple[int, int] = (48, 64)) -> np.ndarray:
    """Blobs with salt holes: corner-touching pixels, holes, islands in holes, all of it."""
    rng = np.random.default_rng(seed)
    labels, _ = ndi.label(ndi.gaussian_filter(rng.random(shape), 2) > 0.5)
    labels[rng.random(shape) < 0.04] = 0
    return labels


def _painted(labels: np.ndarray) -> np.ndarray:
    back = np.zeros_like(labels)
    for i, polygons in instance_polygons(labels):
        back[rings_to_mask([r for rings in polygons for r in rings], labels.shape)] = i
    return back


@pytest.mark.parametrize("seed", range(40))
def test_instances_paint_back_to_the_same_pixels(seed: int) -> None:
    labels = _random_labels(seed)
    np.testing.assert_array_equal(_painted(labels), labels)


def test_synthetic_smear_truth_paints_back_exactly() -> None:
    _, truth = synthetic_blood_smear((256, 256), seed=3)
    np.testing.assert_array_equal(_painted(truth.labels), truth.labels)


def test_a_ring_with_an_island_is_a_polygon_with_a_hole_and_a_second_polygon() -> None:
    mask = np.zeros((9, 9), dtype=bool)
    mask[1:8, 1:8] = True
    mask[3:6, 3:6] = False
    mask[4, 4] = True  # island inside the hole
    polygons = mask_polygons(mask)
    assert sorted(len(p) for p in polygons) == [1, 2]  # island alone; the ring has one hole
    ring = next(p for p in polygons if len(p) == 2)
    exterior, hole = ring
    assert sorted(map(tuple, exterior.tolist())) == [(1, 1), (1, 8), (8, 1), (8, 8)]
    assert sorted(map(tuple, hole.tolist())) == [(3, 3), (3, 6), (6, 3), (6, 6)]

    def area(r: np.ndarray) -> float:
        x, y = r[:, 0], r[:, 1]
        return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))

    assert area(exterior) > 0 > area(hole)  # RFC 7946 winding in (x, y)


def test_every_outline_is_a_valid_geometry_for_shapely() -> None:
    shapely = pytest.importorskip("shapely")
    from shapely.geometry import MultiPolygon, Polygon

    checked = 0
    for seed in range(30):
        for _, polygons in instance_polygons(_random_labels(seed)):
            geometry = MultiPolygon([Polygon(p[0], p[1:]) for p in polygons])
            assert geometry.is_valid, shapely.is_valid_reason(geometry)
            checked += 1
    assert checked > 200

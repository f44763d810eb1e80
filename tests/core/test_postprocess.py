"""Tests of core.postprocess: dense maps -> instances, heat maps -> boxes, cleaning."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.draw import disk

from napari_cellquant.core.annotation import Boxes
from napari_cellquant.core.errors import InputError
from napari_cellquant.core.postprocess import (
    boxes_from_heatmap,
    boxes_from_labels,
    clean_instances,
    fill_instance_holes,
    fill_small_holes,
    heatmap_targets,
    instances_from_maps,
    peak_markers,
    relabel_sequential,
    remove_small_instances,
    split_touching,
)


def _disks(shape, specs):
    """Class map with disks ``(row, col, radius, class)`` painted in order."""
    out = np.zeros(shape, dtype=np.int64)
    for r, c, radius, cls in specs:
        rr, cc = disk((r, c), radius, shape=shape)
        out[rr, cc] = cls
    return out


def _probs(class_map, n_classes, p=0.9):
    """(C+1, H, W) probabilities putting ``p`` on the map's class and the rest spread evenly."""
    rest = (1 - p) / n_classes
    probs = np.full((n_classes + 1, *class_map.shape), rest, dtype=np.float32)
    for c in range(n_classes + 1):
        probs[c][class_map == c] = p
    return probs


# --- instances_from_maps -----------------------------------------------------------------
def test_two_touching_disks_become_two_instances():
    # centres 38 px apart, radius 20: the disks overlap by 2 px and form one blob
    cmap = _disks((80, 120), [(40, 40, 20, 1), (40, 78, 20, 1)])
    from scipy import ndimage as ndi

    assert ndi.label(cmap > 0)[1] == 1
    labels, classes, scores = instances_from_maps(_probs(cmap, 1), min_distance=8, min_size=20)
    assert labels.dtype == np.int32
    assert labels.max() == 2
    # each instance is centred on its own disk
    for r, c in [(40, 40), (40, 78)]:
        assert labels[r, c] > 0
    assert labels[40, 40] != labels[40, 78]
    assert classes == {1: 1, 2: 1}
    assert all(abs(s - 0.9) < 1e-5 for s in scores.values())
    # the split leaves every foreground pixel in one of them
    assert np.array_equal(labels > 0, cmap > 0)


def test_areas_are_not_split_each_connected_region_is_one_instance():
    """split=False (NET regions): the touching pair stays one object, a separate disk
    another, whatever min_distance says."""
    cmap = _disks((80, 160), [(40, 40, 20, 1), (40, 78, 20, 1), (40, 135, 15, 1)])
    labels, classes, _ = instances_from_maps(_probs(cmap, 1), min_distance=3, split=False)
    assert labels.max() == 2 and classes == {1: 1, 2: 1}
    assert labels[40, 40] == labels[40, 78] != labels[40, 135]
    assert np.array_equal(labels > 0, cmap > 0)


def test_class_map_input_gives_the_same_instances():
    cmap = _disks((80, 120), [(40, 40, 20, 2), (40, 78, 20, 1)])
    labels, classes, scores = instances_from_maps(cmap, min_distance=8)
    assert labels.max() == 2
    assert {classes[labels[40, 40]], classes[labels[40, 78]]} == {1, 2}
    assert classes[labels[40, 40]] == 2
    # the watershed cut need not follow the class edge exactly: a few pixels of the other
    # class may fall in each instance and lower its score a little
    assert all(0.9 < s <= 1.0 for s in scores.values())


def test_majority_vote_and_mean_probability():
    cmap = _disks((60, 60), [(30, 30, 20, 2)])
    # paint the left 30% of the disk class 1: the instance must still be class 2
    cols = np.nonzero(cmap.any(axis=0))[0]
    cut = cols.min() + int(0.3 * (cols.max() - cols.min()))
    mixed = cmap.copy()
    mixed[:, : cut + 1][mixed[:, : cut + 1] > 0] = 1
    probs = _probs(mixed, 2, p=0.8)
    labels, classes, scores = instances_from_maps(probs, min_distance=30)
    assert labels.max() == 1
    assert classes == {1: 2}
    inside = labels == 1
    assert scores[1] == pytest.approx(float(probs[2][inside].mean()), rel=1e-5)
    # class-map form: other-class pixels count as probability 0 for the winning class
    conf = np.where(mixed > 0, 0.7, 0.0).astype(np.float32)
    labels2, classes2, scores2 = instances_from_maps(mixed, conf, min_distance=30)
    share = (mixed[labels2 == 1] == 2).mean()
    assert classes2 == {1: 2}
    assert scores2[1] == pytest.approx(0.7 * share, rel=1e-5)


def test_small_holes_are_filled_and_large_ones_kept():
    cmap = _disks((100, 100), [(50, 50, 40, 1)])
    cmap[48:52, 48:52] = 0  # 16-px hole
    rr, cc = disk((50, 20), 6)  # ~113-px hole
    cmap[rr, cc] = 0
    labels, _, _ = instances_from_maps(cmap, max_hole=50, min_distance=60)
    assert labels.max() == 1
    assert labels[50, 50] == 1  # small hole filled
    assert labels[50, 20] == 0  # large hole kept


def test_min_size_drops_small_objects():
    cmap = _disks((60, 100), [(30, 30, 15, 1), (30, 80, 3, 1)])
    labels, classes, _ = instances_from_maps(cmap, min_size=50, min_distance=5)
    assert labels.max() == 1
    assert labels[30, 80] == 0
    assert list(classes) == [1]


def test_distance_head_splits_overlapping_cells():
    # two disks overlapping heavily (neck too wide for the plain distance transform)
    shape = (80, 120)
    cmap = _disks(shape, [(40, 45, 22, 1), (40, 75, 22, 1)])
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    cone1 = np.clip(22 - np.hypot(yy - 40, xx - 45), 0, None)
    cone2 = np.clip(22 - np.hypot(yy - 40, xx - 75), 0, None)
    distance = np.maximum(cone1, cone2).astype(np.float32)
    labels, _, _ = instances_from_maps(_probs(cmap, 1), distance=distance, min_distance=10)
    assert labels.max() == 2
    assert labels[40, 45] != labels[40, 75]


def test_seed_threshold_keeps_one_core_per_object_of_mixed_sizes():
    # a large textured nucleus (two bumps on its distance map) touching two small ones: peaks
    # spaced for the small ones split the large one, cores of the normalised distance (1 at
    # each centre, 0 at the border) give one seed per object
    shape = (80, 140)
    big, small1, small2 = (40, 40, 24), (40, 73, 9), (40, 90, 9)
    cmap = _disks(shape, [(*big, 1), (*small1, 1), (*small2, 1)])
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    cones = [
        np.clip(1 - np.hypot(yy - r, xx - c) / rad, 0, None) for r, c, rad in (big, small1, small2)
    ]
    bumps = 0.1 * (
        np.exp(-(np.hypot(yy - 40, xx - 32) ** 2) / 8)
        + np.exp(-(np.hypot(yy - 40, xx - 48) ** 2) / 8)
    )
    distance = np.maximum.reduce([np.minimum(cones[0], 0.7) + bumps, cones[1], cones[2]]).astype(
        np.float32
    )
    peaks, _, _ = instances_from_maps(cmap, distance=distance, min_distance=4)
    cores, _, _ = instances_from_maps(cmap, distance=distance, seed_threshold=0.5)
    assert peaks.max() == 4
    assert cores.max() == 3
    assert len({cores[40, 40], cores[40, 73], cores[40, 90]}) == 3
    assert np.array_equal(cores > 0, cmap > 0)


def test_foreground_probability_sets_the_threshold_of_a_class_map():
    cmap = _disks((60, 60), [(30, 30, 15, 1)])
    yy, xx = np.mgrid[:60, :60]
    # P(not background) falls from 1 at the centre to 0 at 25 px; argmax cuts it at 15 px
    foreground = np.clip(1 - np.hypot(yy - 30, xx - 30) / 25, 0, 1).astype(np.float32)
    areas = {}
    for threshold in (0.3, 0.5, 0.7):
        labels, classes, _ = instances_from_maps(
            cmap, foreground=foreground, foreground_threshold=threshold, split=False
        )
        assert classes == {1: 1}
        areas[threshold] = int((labels > 0).sum())
    assert areas[0.3] > np.pi * 15**2 > areas[0.5] > areas[0.7]
    assert areas[0.5] == pytest.approx(np.pi * 12.5**2, rel=0.1)
    with pytest.raises(InputError, match="foreground shape"):
        instances_from_maps(cmap, foreground=foreground[:10])


def test_boundary_head_splits_along_predicted_boundary():
    cmap = np.zeros((40, 80), dtype=np.int64)
    cmap[5:35, 5:75] = 1  # one rectangle ...
    boundary = np.zeros(cmap.shape, dtype=np.float32)
    boundary[:, 39:41] = 0.95  # ... that a boundary map cuts in two
    labels, _, _ = instances_from_maps(cmap, boundary=boundary, min_distance=5)
    assert labels.max() == 2
    assert labels[20, 20] != labels[20, 60]
    assert np.array_equal(labels > 0, cmap > 0)


def test_empty_maps_give_no_instances():
    probs = np.zeros((3, 20, 20), dtype=np.float32)
    probs[0] = 1.0
    labels, classes, scores = instances_from_maps(probs)
    assert labels.max() == 0 and classes == {} and scores == {}


@pytest.mark.parametrize(
    ("maps", "kwargs", "message"),
    [
        (np.zeros((4, 4, 4, 4), np.float32), {}, "class map"),
        (np.zeros((1, 8, 8), np.float32), {}, "background"),
        (np.zeros((2, 8, 8), np.int64), {}, "floating point"),
        (np.full((2, 8, 8), np.nan, np.float32), {}, "NaN"),
        (np.zeros((8, 8), np.float32), {}, "integers"),
        (np.full((8, 8), -1, np.int64), {}, "negative"),
        (np.zeros((8, 8), np.int64), {"confidence": np.ones((4, 4))}, "confidence shape"),
        (np.zeros((2, 8, 8), np.float32), {"confidence": np.ones((8, 8))}, "class map"),
        (np.zeros((2, 8, 8), np.float32), {"distance": np.ones((4, 8))}, "distance map shape"),
        (np.zeros((2, 8, 8), np.float32), {"boundary": np.ones((8, 4))}, "boundary map shape"),
    ],
)
def test_bad_maps_raise_input_error(maps, kwargs, message):
    with pytest.raises(InputError, match=message):
        instances_from_maps(maps, **kwargs)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(0, 8),
    n_classes=st.integers(1, 4),
)
def test_instances_are_inside_foreground_with_valid_classes(seed, n, n_classes):
    rng = np.random.default_rng(seed)
    specs = [
        (*rng.integers(0, 64, size=2), rng.integers(3, 12), rng.integers(1, n_classes + 1))
        for _ in range(n)
    ]
    cmap = _disks((64, 64), specs)
    probs = _probs(cmap, n_classes)
    labels, classes, scores = instances_from_maps(probs, min_distance=3, min_size=5)
    assert not (labels[cmap == 0]).any()
    ids = set(np.unique(labels[labels > 0]).tolist())
    assert ids == set(range(1, labels.max() + 1)) == set(classes) == set(scores)
    assert all(1 <= c <= n_classes for c in classes.values())
    assert all(0.0 <= s <= 1.0 for s in scores.values())


# --- helpers ------------------------------------------------------------------------------
def test_peak_markers_merge_a_plateau_into_one_seed():
    surface = np.zeros((30, 60), dtype=np.float32)
    surface[10:20, 10:50] = 1.0  # flat top: every pixel ties for the maximum
    markers = peak_markers(surface, surface > 0, min_distance=5)
    assert len(np.unique(markers[markers > 0])) <= 4  # one per ~min_distance, not 400
    separate = np.zeros((30, 60), dtype=np.float32)
    separate[15, 10] = separate[15, 50] = 1.0
    markers = peak_markers(separate, np.ones_like(separate, bool), min_distance=5)
    assert markers.max() == 2


def test_fill_small_holes_ignores_background_touching_the_border():
    mask = np.ones((20, 20), dtype=bool)
    mask[0:3, 5:8] = False  # notch open to the border
    mask[10:12, 10:12] = False  # true hole
    filled = fill_small_holes(mask, 100)
    assert filled[10:12, 10:12].all()
    assert not filled[0:3, 5:8].any()
    assert np.array_equal(fill_small_holes(mask, 0), mask)


def test_fill_instance_holes_shares_a_gap_between_two_cells():
    labels = np.zeros((20, 30), dtype=np.int32)
    labels[2:18, 2:15] = 1
    labels[2:18, 15:28] = 2
    labels[8:12, 13:17] = 0  # hole on the border between the two
    labels[5, 5] = 0  # hole inside cell 1
    out = fill_instance_holes(labels, 50)
    assert out[5, 5] == 1
    assert (out[8:12, 13:15] == 1).all() and (out[8:12, 15:17] == 2).all()


def test_clean_instances_carries_classes_and_scores():
    labels = np.zeros((30, 30), dtype=np.int32)
    labels[2:12, 2:12] = 5
    labels[20:22, 20:22] = 9  # 4 px: dropped
    labels[15:28, 2:15] = 7
    labels[6, 6] = 0
    out, classes, scores = clean_instances(
        labels, 10, max_hole=4, classes={5: 2, 7: 1, 9: 3}, scores={5: 0.5, 9: 0.1}
    )
    assert out.max() == 2 and out[6, 6] == 1
    assert classes == {1: 2, 2: 1}
    assert scores == {1: 0.5}
    with pytest.raises(InputError, match="integer"):
        clean_instances(labels.astype(float), 1)
    with pytest.raises(InputError, match="negative"):
        clean_instances(labels - 1, 1)


def test_relabel_and_remove_small():
    labels = np.array([[0, 4, 4], [9, 9, 9], [0, 0, 2]], dtype=np.int32)
    out, mapping = relabel_sequential(labels)
    assert mapping == {2: 1, 4: 2, 9: 3} and out.max() == 3
    assert set(np.unique(remove_small_instances(labels, 2))) == {0, 4, 9}


def test_split_touching_and_boxes_from_labels():
    mask = _disks((60, 100), [(30, 30, 18, 1), (30, 64, 18, 1)]) > 0
    labels = split_touching(mask, 8)
    assert labels.max() == 2
    boxes = boxes_from_labels(labels, {1: 2, 2: 1}, {1: 0.4})
    assert len(boxes) == 2
    left = int(np.argmin(boxes.xywh[:, 0]))
    # skimage disk of radius 18 at (30, 30) spans pixels 13..47: box edge 13, width 35
    assert boxes.xywh[left].tolist() == [13.0, 13.0, 35.0, 35.0]
    assert boxes.class_ids[left] == 2 and boxes.scores[left] == pytest.approx(0.4)
    assert sorted(boxes.class_ids.tolist()) == [1, 2]


# --- boxes_from_heatmap -------------------------------------------------------------------
def _gaussian(shape, cy, cx, sigma):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)).astype(np.float32)


def test_gaussian_peaks_decode_to_boxes_at_known_positions():
    grid, stride = (32, 40), 4
    heat = np.zeros((2, *grid), dtype=np.float32)
    heat[0] = 0.9 * _gaussian(grid, 8, 10, 1.5)
    heat[1] = np.maximum(0.7 * _gaussian(grid, 20, 30, 2.0), 0.5 * _gaussian(grid, 25, 5, 1.0))
    size = np.zeros((2, *grid), dtype=np.float32)
    size[:, 8, 10] = (20, 12)
    size[:, 20, 30] = (30, 40)
    size[:, 25, 5] = (10, 10)
    offset = np.zeros((2, *grid), dtype=np.float32)
    offset[:, 8, 10] = (0.25, 0.75)
    boxes = boxes_from_heatmap(heat, size, offset, stride=stride, threshold=0.3)
    assert len(boxes) == 3
    assert boxes.scores.tolist() == pytest.approx([0.9, 0.7, 0.5])  # sorted by score
    assert boxes.class_ids.tolist() == [1, 2, 2]
    cx, cy = (10 + 0.25) * stride, (8 + 0.75) * stride
    assert boxes.xywh[0].tolist() == pytest.approx([cx - 10, cy - 6, 20, 12])
    assert boxes.xywh[1].tolist() == pytest.approx([30 * 4 - 15, 20 * 4 - 20, 30, 40])
    # threshold and max_detections
    assert len(boxes_from_heatmap(heat, size, offset, stride=stride, threshold=0.6)) == 2
    assert len(boxes_from_heatmap(heat, size, offset, stride=stride, max_detections=1)) == 1


def test_without_offset_the_cell_centre_is_used():
    heat = np.zeros((1, 10, 10), dtype=np.float32)
    heat[0, 3, 4] = 0.8
    size = np.full((2, 10, 10), 8, dtype=np.float32)
    boxes = boxes_from_heatmap(heat, size, stride=8)
    assert boxes.xywh[0].tolist() == pytest.approx([4.5 * 8 - 4, 3.5 * 8 - 4, 8, 8])


def test_heatmap_targets_round_trip():
    truth = Boxes(
        np.array([[10.0, 20.0, 30.0, 24.0], [100.0, 40.0, 16.0, 50.0], [60.0, 90.0, 40.0, 40.0]]),
        np.array([1, 3, 3]),
    )
    heat, size, offset, mask = heatmap_targets(truth, (32, 48), 3, stride=4)
    assert heat.shape == (3, 32, 48) and mask.sum() == 3
    assert heat.max() == pytest.approx(1.0)
    decoded = boxes_from_heatmap(heat, size, offset, stride=4, threshold=0.5)
    order = np.lexsort((decoded.xywh[:, 1], decoded.xywh[:, 0]))
    expected = np.lexsort((truth.xywh[:, 1], truth.xywh[:, 0]))
    assert np.allclose(decoded.xywh[order], truth.xywh[expected], atol=1e-4)
    assert decoded.class_ids[order].tolist() == truth.class_ids[expected].tolist()
    with pytest.raises(InputError, match="outside"):
        heatmap_targets(truth, (32, 48), 2, stride=4)


@pytest.mark.parametrize(
    ("heat", "size", "offset", "kwargs", "message"),
    [
        (np.zeros((8, 8)), np.zeros((2, 8, 8)), None, {}, "heatmap must be"),
        (np.zeros((1, 8, 8)), np.zeros((2, 4, 8)), None, {}, "size must be"),
        (np.zeros((1, 8, 8)), np.zeros((2, 8, 8)), np.zeros((1, 8, 8)), {}, "offset must be"),
        (np.zeros((1, 8, 8)), np.zeros((2, 8, 8)), None, {"nms_kernel": 2}, "odd"),
        (np.full((1, 8, 8), np.nan), np.zeros((2, 8, 8)), None, {}, "NaN"),
    ],
)
def test_bad_heatmaps_raise_input_error(heat, size, offset, kwargs, message):
    with pytest.raises(InputError, match=message):
        boxes_from_heatmap(heat, size, offset, stride=kwargs.pop("stride", 4), **kwargs)


def test_instances_from_boxes_are_inscribed_ellipses_split_between_centres() -> None:
    from napari_cellquant.core.annotation import Boxes
    from napari_cellquant.core.postprocess import instances_from_boxes

    boxes = Boxes(
        [[10, 10, 40, 20], [40, 10, 40, 20], [200, 200, 10, 10], [0, 0, 0.2, 0.2]],
        [1, 2, 3, 1],
        [0.5, 0.9, 0.7, 0.3],
    )
    labels, classes, scores = instances_from_boxes(boxes, (64, 100))
    # ids follow the scores; the box outside the image is dropped, the tiny one keeps a pixel
    assert classes == {1: 2, 2: 1, 3: 1} and scores == {1: 0.9, 2: 0.5, 3: 0.3}
    assert labels[0, 0] == 3 and (labels == 3).sum() == 1
    # an ellipse fills pi/4 of its box, less the part of the overlap left of x = 45
    ellipse = np.pi / 4 * 40 * 20
    assert 0.85 * ellipse < (labels == 1).sum() < ellipse
    assert labels[20, 44] == 2 and labels[20, 46] == 1
    assert labels[10, 10] == 0  # box corners lie outside the ellipse
    ys, xs = np.nonzero(labels == 2)
    assert xs.min() == 10 and ys.min() == 10 and ys.max() == 29


def test_suppress_nested_drops_a_duplicate_inside_a_surer_box_of_its_class() -> None:
    from napari_cellquant.core.postprocess import suppress_nested

    boxes = Boxes(
        [
            [100, 100, 80, 80],  # a WBC
            [110, 120, 30, 40],  # a lobe of it, found again: IoU 0.19, but all inside
            [120, 110, 40, 40],  # an RBC over the WBC: another class, kept
            [0, 0, 40, 40],  # two RBCs that overlap by a third: both kept
            [25, 0, 40, 40],
            [105, 125, 20, 20],  # inside the lobe and inside the WBC
        ],
        [2, 2, 1, 1, 1, 2],
        [0.9, 0.6, 0.8, 0.7, 0.5, 0.4],
    )
    kept = suppress_nested(boxes, 0.7)
    # the last box goes with the lobe: the WBC itself holds it
    assert kept.scores.tolist() == [0.9, 0.8, 0.7, 0.5]
    assert kept.class_ids.tolist() == [2, 1, 1, 1]
    # a chain: C lies inside B only; B is inside A and goes, so C stays
    chain = Boxes([[0, 0, 100, 20], [60, 0, 60, 20], [105, 0, 15, 20]], [1, 1, 1], [0.9, 0.8, 0.7])
    assert suppress_nested(chain, 0.6).scores.tolist() == [0.9, 0.7]
    with pytest.raises(InputError, match="nested_overlap"):
        suppress_nested(boxes, 0.0)


def test_two_peaks_in_one_large_cell_decode_to_one_box_with_nested_overlap() -> None:
    truth = Boxes(np.array([[40.0, 40.0, 80.0, 80.0]]), np.array([1]))
    heat, size, offset, _ = heatmap_targets(truth, (48, 48), 1, stride=4)
    # a second, weaker peak on a lobe, 6 cells from the centre, with a lobe-sized box
    heat[0, 14, 14] = 0.6
    size[:, 14, 14] = (30.0, 30.0)
    plain = boxes_from_heatmap(heat, size, offset, stride=4, threshold=0.5)
    assert len(plain) == 2
    merged = boxes_from_heatmap(heat, size, offset, stride=4, threshold=0.5, nested_overlap=0.7)
    assert len(merged) == 1 and np.allclose(merged.xywh[0], truth.xywh[0], atol=1e-4)

"""Turn dense network outputs into objects.

- :func:`instances_from_maps`: class probabilities (or a class map), optionally with a
  distance or boundary head, -> instance labels with a class and a score per instance.
- :func:`boxes_from_heatmap`: CenterNet-style centre heat maps, sizes and offsets -> boxes;
  :func:`heatmap_targets` is its exact inverse, for training targets and tests.
- :func:`clean_instances` and the small helpers below it: size filters, hole filling and
  relabelling that every pipeline (networks and :mod:`.classical`) shares.

Everything is vectorised over pixels; the only Python loops run over objects or classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.measure import label as connected_components
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

from .annotation import Boxes
from .errors import InputError

__all__ = [
    "boxes_from_heatmap",
    "boxes_from_labels",
    "clean_instances",
    "fill_instance_holes",
    "fill_small_holes",
    "heatmap_targets",
    "instances_from_maps",
    "peak_markers",
    "relabel_sequential",
    "remove_small_instances",
    "split_touching",
]


# --------------------------------------------------------------------------------------
# small building blocks
# --------------------------------------------------------------------------------------
def remove_small_instances(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Zero every instance of ``labels`` with fewer than ``min_size`` pixels (a new array)."""
    labels = np.asarray(labels)
    if min_size <= 1 or labels.size == 0:
        return labels.copy()
    areas = np.bincount(labels.ravel())
    keep = areas >= min_size
    keep[0] = False
    return np.where(keep[labels], labels, 0).astype(labels.dtype, copy=False)


def fill_small_holes(mask: np.ndarray, max_hole: int) -> np.ndarray:
    """Fill holes (background regions not connected to the border) of at most ``max_hole`` px."""
    mask = np.asarray(mask, dtype=bool)
    if max_hole <= 0:
        return mask.copy()
    holes, n = ndi.label(~mask)
    if n == 0:
        return mask.copy()
    areas = np.bincount(holes.ravel())
    small = areas <= max_hole
    small[0] = False
    # background regions that touch the image border are not holes
    border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
    small[border] = False
    return mask | small[holes]


def fill_instance_holes(labels: np.ndarray, max_hole: int) -> np.ndarray:
    """Fill holes of at most ``max_hole`` px inside instances with the nearest instance's id.

    A hole enclosed by one instance takes its id; a hole enclosed by several (a gap where
    cells meet) is shared out by nearest pixel, so no instance swallows its neighbour's hole.
    """
    labels = np.asarray(labels)
    foreground = labels > 0
    filled = fill_small_holes(foreground, max_hole)
    holes = filled & ~foreground
    if not holes.any():
        return labels.copy()
    _, (rows, cols) = ndi.distance_transform_edt(~foreground, return_indices=True)
    out = labels.copy()
    out[holes] = labels[rows[holes], cols[holes]]
    return out


def relabel_sequential(labels: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
    """Renumber instances 1..n in order of their old ids; returns (labels, old id -> new id)."""
    labels = np.asarray(labels)
    ids = np.unique(labels)
    ids = ids[ids != 0]
    lookup = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.int32)
    lookup[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lookup[labels], {int(old): int(new) for old, new in zip(ids, lookup[ids])}


def peak_markers(
    surface: np.ndarray, mask: np.ndarray, min_distance: int, *, threshold: float = 0.0
) -> np.ndarray:
    """Watershed markers at the local maxima of ``surface`` inside ``mask``.

    A pixel is a peak when it is the largest value within ``min_distance`` (square window,
    separable, hence fast on 12-megapixel images) and above ``threshold``. Peaks closer than
    ``min_distance`` to each other (plateaus, ties) merge into one marker, so a flat ridge gives
    one seed rather than one per pixel.

    Returns
    -------
    np.ndarray
        int32 image, 0 outside markers, one id per marker.
    """
    mask = np.asarray(mask, dtype=bool)
    values = np.where(mask, np.asarray(surface, dtype=np.float32), -np.inf)
    size = 2 * max(int(min_distance), 0) + 1
    local_max = ndi.maximum_filter(values, size=size, mode="constant", cval=-np.inf)
    peaks = mask & (values >= local_max) & (values > threshold)
    if min_distance <= 0:
        return ndi.label(peaks)[0].astype(np.int32)
    # Grow every peak by a square of side ~min_distance and label the union: peaks within
    # min_distance of each other share a label; only the peak pixels themselves are kept.
    grown = ndi.maximum_filter(peaks, size=max(int(min_distance), 1) + 1)
    groups = ndi.label(grown)[0].astype(np.int32)
    return np.where(peaks, groups, 0)


def split_touching(
    regions: np.ndarray,
    min_distance: int | None = None,
    *,
    smooth: float = 0.0,
    compactness: float = 0.0,
    dominance: float = 0.25,
    min_peak: float = 0.5,
) -> np.ndarray:
    """Split touching round objects by a watershed on the distance transform.

    Each object is a dome of the Euclidean distance to the background; touching objects are
    domes joined by a saddle at the neck between them. Where the seeds go has two rules:

    ``min_distance`` given (the pipelines, which know the object size from the scale)
        ``regions`` is a binary mask; seeds are its distance peaks at least ``min_distance``
        apart (:func:`peak_markers`). ``smooth`` (pixels) blurs the distance first so ragged
        outlines do not seed extra peaks. Components without a peak become one instance
        each.
    ``min_distance=None`` (files, whose scale nobody gave)
        ``regions`` is an ``int`` image of regions ``1..n`` (or a mask, taken as its
        8-connected components), and the spacing is measured from them:

        - Holes are filled before measuring distances, so a ring-shaped object (a red cell
          drawn with its pale centre, or one with a platelet on top) is one dome, not a
          ridge; the image edge counts as background.
        - The typical radius ``r`` is the median over regions of the largest inscribed
          radius, robust to regions that are clusters (a cluster's inscribed radius is still
          about one object's).
        - Candidates are :func:`skimage.feature.peak_local_max` peaks at least ``0.6 r``
          apart (closer ones are bumps of one ragged outline) and ``min_peak * r`` high (thin
          slivers hold no object centre).
        - In a region with several candidates, one is kept only where it rises at least
          ``dominance * r`` (and 1 px) above the saddle to any higher peak (an h-maximum), so
          elongated or irregular single objects stay whole; candidates on one h-maximum
          plateau merge into one centre.

        Every region is covered exactly; one that is not split keeps its place in the
        numbering order.

    Returns
    -------
    np.ndarray
        ``int32`` instances ``1..m``.
    """
    if min_distance is None:
        components = np.asarray(regions)
        if components.dtype == bool:
            components = connected_components(components, connectivity=2)
        return _split_self_scaled(components, dominance, min_peak)
    mask = np.asarray(regions, dtype=bool)
    distance = ndi.distance_transform_edt(mask)
    if smooth > 0:
        distance = ndi.gaussian_filter(distance, smooth)
    markers = peak_markers(distance, mask, min_distance)
    labels = watershed(-distance, markers, mask=mask, compactness=compactness)
    return _label_leftovers(labels, mask)


def _split_self_scaled(components: np.ndarray, dominance: float, min_peak: float) -> np.ndarray:
    """The self-scaling rule of :func:`split_touching` (``min_distance=None``)."""
    mask = components > 0
    n = int(components.max())
    if n == 0:
        return components.astype(np.int32)
    filled, regions = _fill_holes(mask, components)
    # the image edge counts as background: two cells cut by the edge side by side are
    # otherwise one ridge along it, with no saddle between them
    distance = ndi.distance_transform_edt(np.pad(filled, 1))[1:-1, 1:-1]
    radius = float(np.median(_max_per_label(distance, regions, n)[1:]))
    # Without ``labels`` this is one maximum filter over the image. Peaks of different
    # regions cannot suppress each other: both are >= min_peak * r from the background
    # between them, so farther apart than min_distance.
    peaks = peak_local_max(
        distance,
        min_distance=max(1, round(0.6 * radius)),
        threshold_abs=max(min_peak * radius, 1e-9),
        exclude_border=False,
    )
    region_of_peak = regions[tuple(peaks.T)]
    per_region = np.bincount(region_of_peak, minlength=n + 1)
    objects = regions.astype(np.int64)
    crowded = np.flatnonzero(per_region[1:] > 1) + 1
    if len(crowded):
        boxes = ndi.find_objects(regions)
        # the peaks of region i are peaks[order][starts[i]:starts[i + 1]]
        order = np.argsort(region_of_peak, kind="stable")
        starts = np.concatenate([[0], np.cumsum(per_region)])
        h = max(1.0, dominance * radius)
        next_id = n + 1
        # only clusters are worked on, each in its bounding box
        for region_id in crowded.tolist():
            box = boxes[region_id - 1]
            inside = regions[box] == region_id
            own = peaks[order[starts[region_id] : starts[region_id + 1]]]
            local = own - np.array([box[0].start, box[1].start])
            pieces = _split_region(distance[box] * inside, inside, local, h)
            if pieces is None:
                continue
            extra = pieces > 1
            objects[box][extra] = pieces[extra] - 2 + next_id
            next_id += int(pieces.max()) - 1
    objects[~mask] = 0  # the filled holes go back to what they were
    # renumber 1..m in id order (a lookup table: np.unique would sort every pixel)
    present = np.bincount(objects.ravel()) > 0
    present[0] = False
    return (np.cumsum(present) * present)[objects].astype(np.int32)


def _split_region(
    distance: np.ndarray, inside: np.ndarray, peaks: np.ndarray, h: float
) -> np.ndarray | None:
    """Watershed pieces ``1..k`` of one region (in its box), or None when it stays whole.

    ``peaks`` are the region's candidate centres in box coordinates; those on one
    h-maximum plateau of ``distance`` become one marker, those on none are dropped.
    """
    plateaus = connected_components(h_maxima(distance, h) > 0)
    plateau_of_peak = plateaus[tuple(peaks.T)]
    chosen = plateau_of_peak > 0
    kept = np.unique(plateau_of_peak[chosen])
    if len(kept) < 2:
        return None
    markers = np.zeros(inside.shape, dtype=np.int64)
    markers[tuple(peaks[chosen].T)] = np.searchsorted(kept, plateau_of_peak[chosen]) + 1
    return watershed(-distance, markers, mask=inside, connectivity=2)


def _max_per_label(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """``out[i]`` = largest value where ``labels == i`` (for ``i`` in ``0..n``), else -inf.

    ``np.maximum.at`` is one pass; ``ndimage.maximum`` sorts all pixels by label.
    """
    out = np.full(n + 1, -np.inf)
    np.maximum.at(out, labels.ravel(), values.ravel().astype(np.float64))
    return out


def _fill_holes(mask: np.ndarray, components: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``mask`` with its holes filled, and ``components`` extended over the filled holes.

    Holes are found after a small closing, so a ring with a gap of a few pixels in its rim
    (as colour maps draw a red cell's pale centre) counts as closed; of what the closing
    adds, only the pixels near a hole are kept (the gaps), so necks between touching cells
    keep their width. A hole that holds another region of the mask (a cell inside a
    ring-shaped one) is left open, so the two stay apart.
    """
    closed = ndi.binary_closing(np.pad(mask, 2), iterations=2, border_value=0)[2:-2, 2:-2]
    holes = ndi.binary_fill_holes(closed) & ~closed
    filled = mask | holes | (ndi.binary_dilation(holes, iterations=3) & closed)
    if np.count_nonzero(filled) == np.count_nonzero(mask):
        return mask, components
    filled_regions = connected_components(filled, connectivity=2)
    m = int(filled_regions.max())
    big = int(components.max()) + 1  # above every id, so holes do not lower the minimum
    highest = _max_per_label(components, filled_regions, m)
    lowest = -_max_per_label(-np.where(mask, components, big), filled_regions, m)
    # the one region a filled region was made from; 0 where it holds several
    owner = np.where(highest == lowest, highest, 0).astype(np.int64)
    owner[0] = 0
    filled &= mask | (owner[filled_regions] > 0)
    return filled, np.where(mask, components, np.where(filled, owner[filled_regions], 0))


def _label_leftovers(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Give each part of ``mask`` that the watershed left unlabelled (no marker) its own id."""
    leftover = mask & (labels == 0)
    if not leftover.any():
        return labels.astype(np.int32, copy=False)
    extra, _ = ndi.label(leftover)
    offset = int(labels.max(initial=0))
    return np.where(leftover, extra + offset, labels).astype(np.int32)


def boxes_from_labels(
    labels: np.ndarray,
    classes: dict[int, int],
    scores: dict[int, float] | None = None,
) -> Boxes:
    """Bounding boxes (x, y, w, h in pixel edges) of every instance, with its class and score."""
    labels = np.asarray(labels)
    slices = ndi.find_objects(labels)
    rows, class_ids, box_scores = [], [], []
    for index, found in enumerate(slices, start=1):
        if found is None:
            continue
        ys, xs = found
        rows.append((xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start))
        class_ids.append(classes.get(index, 1))
        box_scores.append(np.nan if scores is None else scores.get(index, np.nan))
    return Boxes(
        np.array(rows, dtype=np.float64).reshape(-1, 4),
        np.array(class_ids),
        np.array(box_scores, dtype=np.float64),
    )


def clean_instances(
    labels: np.ndarray,
    min_size: int = 0,
    *,
    max_hole: int = 0,
    classes: dict[int, int] | None = None,
    scores: dict[int, float] | None = None,
) -> tuple[np.ndarray, dict[int, int], dict[int, float]]:
    """Fill small holes, drop small instances and renumber 1..n, carrying classes and scores.

    Parameters
    ----------
    labels
        ``(H, W)`` integer instance image.
    min_size
        Instances with fewer pixels (after hole filling) are removed.
    max_hole
        Holes of at most this many pixels inside instances are filled.
    classes, scores
        Per-instance dicts keyed by the old ids; returned keyed by the new ids.

    Returns
    -------
    labels, classes, scores
        int32 labels numbered 1..n and the re-keyed dicts.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"labels must be a 2-D integer image, got {labels.dtype} {labels.shape}")
    if labels.size and labels.min() < 0:
        raise InputError("labels must not be negative")
    out = fill_instance_holes(labels, max_hole) if max_hole > 0 else labels
    out = remove_small_instances(out, min_size)
    out, mapping = relabel_sequential(out)
    new_classes = {mapping[k]: v for k, v in (classes or {}).items() if k in mapping}
    new_scores = {mapping[k]: v for k, v in (scores or {}).items() if k in mapping}
    return out.astype(np.int32), new_classes, new_scores


# --------------------------------------------------------------------------------------
# dense maps -> instances
# --------------------------------------------------------------------------------------
def instances_from_maps(
    maps: np.ndarray,
    confidence: np.ndarray | None = None,
    *,
    distance: np.ndarray | None = None,
    boundary: np.ndarray | None = None,
    foreground: np.ndarray | None = None,
    foreground_threshold: float = 0.5,
    boundary_threshold: float = 0.5,
    min_size: int = 0,
    max_hole: int = 0,
    min_distance: int = 5,
    seed_threshold: float | None = None,
    split: bool = True,
) -> tuple[np.ndarray, dict[int, int], dict[int, float]]:
    """Instances, a class and a score per instance from a segmentation network's outputs.

    Parameters
    ----------
    maps
        Either ``(C + 1, H, W)`` float class probabilities (channel 0 background, channel
        ``c`` class id ``c``), or an ``(H, W)`` integer class map (0 background).
    confidence
        With a class map only: ``(H, W)`` probability of each pixel's class (1 when omitted).
    distance
        Optional ``(H, W)`` predicted distance-to-border map (any scale, larger inside cells);
        its peaks seed one instance each. Without it (and without ``boundary``) the Euclidean
        distance transform of the foreground is used.
    boundary
        Optional ``(H, W)`` boundary probability. Without ``distance``, the seeds are the
        connected parts of ``foreground & (boundary < boundary_threshold)`` and the watershed
        floods the boundary map; with ``distance``, peaks on boundaries are dropped and the
        watershed still floods the boundary map (cuts follow predicted boundaries).
    foreground
        With a class map only: ``(H, W)`` probability that a pixel is not background (what
        :func:`~.inference.predict_maps` returns as ``classes_foreground``), so that
        ``foreground_threshold`` applies to a compact class map too. Pixels it adds to the
        argmax's foreground carry no class vote.
    foreground_threshold
        A pixel is foreground when ``1 - P(background) > foreground_threshold`` (class map
        without ``foreground``: when its class is not 0).
    min_size
        Instances under this many pixels are dropped.
    max_hole
        Background holes of at most this many pixels inside the foreground are filled first.
    min_distance
        Minimum distance between two seeds (pixels): about half the smallest object diameter.
    seed_threshold
        With a ``distance`` map: seeds are the connected regions where it exceeds this value
        instead of peaks ``min_distance`` apart. The distance head is trained normalised to
        1 at every object's centre and 0 at its border, so each object keeps its own core
        whatever its size, which one fixed peak spacing cannot do for mixed sizes.
    split
        False: every connected region of the foreground is one instance (areas such as NET
        regions, which are not cells to split).

    Returns
    -------
    labels, classes, scores
        ``(H, W)`` int32 labels 1..n; instance id -> class id by majority vote of the per-pixel
        classes; instance id -> mean probability of that class over the instance (with a class
        map: the sum of ``confidence`` over the pixels voting for the class divided by the
        instance area, i.e. other pixels count as probability 0 for it).
    """
    maps = np.asarray(maps)
    if maps.ndim == 3:
        if not np.issubdtype(maps.dtype, np.floating):
            raise InputError(f"class probabilities must be floating point, got {maps.dtype}")
        if maps.shape[0] < 2:
            raise InputError(
                f"class probabilities need a background and >= 1 class, got {maps.shape}"
            )
        if not np.isfinite(maps).all():
            raise InputError("class probabilities contain NaN or infinite values")
        if confidence is not None or foreground is not None:
            raise InputError(
                "confidence and foreground go with a class map, not with class probabilities"
            )
        n_classes = maps.shape[0] - 1
        shape = maps.shape[1:]
        foreground = (1.0 - maps[0]) > foreground_threshold
        pixel_class = (np.argmax(maps[1:], axis=0) + 1).astype(np.int64)
        probs: np.ndarray | None = maps
    elif maps.ndim == 2:
        if not np.issubdtype(maps.dtype, np.integer):
            raise InputError(f"a class map must be integers, got {maps.dtype}")
        if maps.size and maps.min() < 0:
            raise InputError("a class map must not hold negative class ids")
        shape = maps.shape
        n_classes = max(int(maps.max(initial=0)), 1)
        if foreground is None:
            foreground = maps > 0
        elif np.shape(foreground) != tuple(shape):
            raise InputError(f"foreground shape {np.shape(foreground)} differs from {shape}")
        else:
            foreground = np.asarray(foreground, dtype=np.float32) > foreground_threshold
        pixel_class = maps.astype(np.int64)
        probs = None
        if confidence is None:
            confidence = np.ones(shape, dtype=np.float32)
        confidence = np.asarray(confidence, dtype=np.float32)
        if confidence.shape != shape:
            raise InputError(f"confidence shape {confidence.shape} differs from class map {shape}")
    else:
        raise InputError(
            f"expected (C+1, H, W) probabilities or an (H, W) class map, got {maps.shape}"
        )
    for name, extra in (("distance", distance), ("boundary", boundary)):
        if extra is not None and np.shape(extra) != tuple(shape):
            raise InputError(f"{name} map shape {np.shape(extra)} differs from {tuple(shape)}")

    foreground = fill_small_holes(foreground, max_hole)
    if split:
        surface, markers = _watershed_seeds(
            foreground,
            distance,
            boundary,
            boundary_threshold,
            min_size,
            min_distance,
            seed_threshold,
        )
        labels = _label_leftovers(watershed(surface, markers, mask=foreground), foreground)
    else:
        labels = ndi.label(foreground)[0]
    labels = remove_small_instances(labels, min_size)
    labels, _ = relabel_sequential(labels)
    classes, scores = _vote_classes(labels, pixel_class, n_classes, probs, confidence)
    return labels.astype(np.int32), classes, scores


def _watershed_seeds(
    foreground: np.ndarray,
    distance: np.ndarray | None,
    boundary: np.ndarray | None,
    boundary_threshold: float,
    min_size: int,
    min_distance: int,
    seed_threshold: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The surface a watershed floods and its markers (see :func:`instances_from_maps`)."""
    if distance is None and boundary is not None:
        boundary = np.asarray(boundary, dtype=np.float32)
        markers = ndi.label(foreground & (boundary < boundary_threshold))[0]
        # seeds from single stray pixels between boundaries would split cells: drop tiny ones
        return boundary, remove_small_instances(markers, max(min_size // 4, 1))
    if distance is None:
        dist = ndi.distance_transform_edt(foreground).astype(np.float32)
    else:
        dist = np.where(foreground, np.asarray(distance, dtype=np.float32), 0.0)
    seed_mask = foreground
    if boundary is not None:
        boundary = np.asarray(boundary, dtype=np.float32)
        seed_mask = foreground & (boundary < boundary_threshold)
    if distance is not None and seed_threshold is not None:
        markers = ndi.label(seed_mask & (dist > seed_threshold))[0]
    else:
        markers = peak_markers(dist, seed_mask, min_distance)
    return (-dist if boundary is None else boundary), markers


def _vote_classes(
    labels: np.ndarray,
    pixel_class: np.ndarray,
    n_classes: int,
    probs: np.ndarray | None,
    confidence: np.ndarray | None,
) -> tuple[dict[int, int], dict[int, float]]:
    """Majority class and its mean probability per instance, by bincount (no pixel loops)."""
    n = int(labels.max(initial=0))
    if n == 0:
        return {}, {}
    inside = labels > 0
    ids = labels[inside].astype(np.int64)
    cls = np.clip(pixel_class[inside], 0, n_classes)
    width = n_classes + 1
    key = ids * width + cls
    votes = np.bincount(key, minlength=(n + 1) * width).reshape(n + 1, width)
    votes[:, 0] = 0  # filled holes / unclassed pixels carry no vote
    winner = votes[:, 1:].argmax(axis=1) + 1
    area = np.bincount(ids, minlength=n + 1).astype(np.float64)
    area[0] = 1.0
    sums = np.zeros((n + 1, width), dtype=np.float64)
    if probs is not None:
        for c in range(1, width):  # one pass per class, not per pixel
            sums[:, c] = np.bincount(ids, weights=probs[c][inside], minlength=n + 1)
    else:
        assert confidence is not None, "class votes need probabilities or a confidence map"
        sums[:] = np.bincount(key, weights=confidence[inside], minlength=(n + 1) * width).reshape(
            n + 1, width
        )
    rows = np.arange(n + 1)
    score = sums[rows, winner] / area
    classes = {i: int(winner[i]) for i in range(1, n + 1)}
    scores = {i: float(score[i]) for i in range(1, n + 1)}
    return classes, scores


# --------------------------------------------------------------------------------------
# CenterNet-style heat maps <-> boxes
# --------------------------------------------------------------------------------------
def boxes_from_heatmap(
    heatmap: np.ndarray,
    size: np.ndarray,
    offset: np.ndarray | None = None,
    *,
    stride: int,
    threshold: float | Sequence[float] = 0.3,
    max_detections: int = 500,
    nms_kernel: int = 3,
    nested_overlap: float | None = None,
) -> Boxes:
    """Decode CenterNet outputs into boxes.

    Conventions (shared with :func:`heatmap_targets`): coordinates are continuous with pixel
    edges on integers (COCO style), so output cell ``(i, j)`` covers input pixels
    ``[j * stride, (j + 1) * stride)`` along x. A box centre is ``(peak + offset) * stride``
    where ``offset`` in ``[0, 1)`` is the sub-cell position (channel 0 along x, 1 along y);
    without an offset head the cell centre (offset 0.5) is used.
    ``size`` holds the box width (channel 0) and height (channel 1) **in input pixels**, not
    in output cells, so a model's size head does not depend on its stride.

    Parameters
    ----------
    heatmap
        ``(K, h, w)`` per-class centre probabilities; channel ``k`` is class id ``k + 1``.
    size, offset
        ``(2, h, w)`` maps as above.
    stride
        Input pixels per output cell.
    threshold
        Minimum peak probability: one for every class, or one per class (in heatmap order).
    max_detections
        Keep at most this many boxes, highest scores first.
    nms_kernel
        Side of the max-pool window: a peak is the maximum of its ``nms_kernel`` square in its
        own class channel (CenterNet's replacement for box NMS).
    nested_overlap
        If given, :func:`suppress_nested` with this overlap: the peak max-pool cannot see
        that two peaks far apart inside one large cell (a lobed neutrophil) are one object.

    Returns
    -------
    Boxes
        ``xywh`` in input pixels, class ids, and the peak probabilities as scores, sorted by
        decreasing score.
    """
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim != 3:
        raise InputError(f"heatmap must be (K, h, w), got shape {heat.shape}")
    grid = heat.shape[1:]
    size = np.asarray(size, dtype=np.float32)
    if size.shape != (2, *grid):
        raise InputError(f"size must be (2, {grid[0]}, {grid[1]}), got {size.shape}")
    if offset is not None:
        offset = np.asarray(offset, dtype=np.float32)
        if offset.shape != (2, *grid):
            raise InputError(f"offset must be (2, {grid[0]}, {grid[1]}), got {offset.shape}")
    if stride < 1 or nms_kernel < 1 or nms_kernel % 2 == 0:
        raise InputError(f"stride must be >= 1 and nms_kernel odd (got {stride}, {nms_kernel})")
    if not np.isfinite(heat).all():
        raise InputError("heatmap contains NaN or infinite values")
    pooled = ndi.maximum_filter(
        heat, size=(1, nms_kernel, nms_kernel), mode="constant", cval=-np.inf
    )
    thresholds = np.asarray(threshold, dtype=np.float32).reshape(-1)
    if thresholds.size not in (1, heat.shape[0]):
        raise InputError(
            f"threshold: give one value or one per class ({heat.shape[0]}), got {thresholds.size}"
        )
    peaks = (heat >= pooled) & (heat > thresholds.reshape(-1, 1, 1))
    k, ys, xs = np.nonzero(peaks)
    values = heat[k, ys, xs]
    order = np.argsort(-values, kind="stable")[: max(int(max_detections), 0)]
    k, ys, xs, values = k[order], ys[order], xs[order], values[order]
    if offset is None:
        off_x = off_y = np.full(len(xs), 0.5, dtype=np.float32)
    else:
        off_x, off_y = offset[0, ys, xs], offset[1, ys, xs]
    cx = (xs + off_x) * stride
    cy = (ys + off_y) * stride
    bw = np.maximum(size[0, ys, xs], 0.0)
    bh = np.maximum(size[1, ys, xs], 0.0)
    xywh = np.stack([cx - bw / 2, cy - bh / 2, bw, bh], axis=1)
    boxes = Boxes(xywh, k + 1, values)
    return boxes if nested_overlap is None else suppress_nested(boxes, nested_overlap)


def suppress_nested(boxes: Boxes, max_overlap: float) -> Boxes:
    """``boxes`` without those that lie mostly inside a higher-scored box of their class.

    "Mostly inside": their shared area is more than ``max_overlap`` of the smaller box. This
    is greedy NMS with intersection over the smaller box instead of IoU, because a duplicate
    on a part of a cell is small against the whole cell's box, so its IoU stays low.
    Order (decreasing score) is kept.
    """
    from .metrics import overlapping_box_pairs, pair_box_intersection

    if not 0 < max_overlap <= 1:
        raise InputError(f"nested_overlap must lie in (0, 1], got {max_overlap}")
    order = np.argsort(-np.nan_to_num(boxes.scores, nan=0.0), kind="stable")
    ranked = boxes.select(order)
    first, second = overlapping_box_pairs(ranked.xywh, ranked.xywh)
    same = (first < second) & (ranked.class_ids[first] == ranked.class_ids[second])
    first, second = first[same], second[same]
    area = ranked.xywh[:, 2] * ranked.xywh[:, 3]
    shared = pair_box_intersection(ranked.xywh[first], ranked.xywh[second])
    nested = shared > max_overlap * np.minimum(area[first], area[second])
    keep = np.ones(len(ranked), dtype=bool)
    # a loop over the few nested pairs, by rank: a box suppressed earlier suppresses nothing
    for higher, lower in sorted(
        zip(first[nested].tolist(), second[nested].tolist()), key=lambda p: p[1]
    ):
        if keep[higher]:
            keep[lower] = False
    return ranked.select(keep)


def instances_from_boxes(
    boxes: Boxes, shape: tuple[int, int]
) -> tuple[np.ndarray, dict[int, int], dict[int, float]]:
    """Instances drawn from detected boxes: each the ellipse inscribed in its box.

    Where ellipses overlap, a pixel goes to the object in whose ellipse it lies deepest
    (smallest normalised radius), so two overlapping cells are split along the line between
    them rather than by painting order. Ids follow decreasing score (1 = most confident);
    a box too small to cover a pixel centre still gets its centre pixel.

    Returns
    -------
    labels, classes, scores
        ``(H, W)`` int32 instance ids, id -> class id, id -> score.
    """
    rows, cols = int(shape[0]), int(shape[1])
    labels = np.zeros((rows, cols), dtype=np.int32)
    depth = np.full((rows, cols), np.inf, dtype=np.float32)
    order = np.argsort(-np.nan_to_num(boxes.scores, nan=0.0), kind="stable")
    classes: dict[int, int] = {}
    scores: dict[int, float] = {}
    next_id = 1
    for index in order:  # a loop over objects; each one's work is a vectorised window
        x, y, w, h = boxes.xywh[index]
        x0, y0 = max(int(math.floor(x)), 0), max(int(math.floor(y)), 0)
        x1, y1 = min(int(math.ceil(x + w)), cols), min(int(math.ceil(y + h)), rows)
        if x1 <= x0 or y1 <= y0:
            continue
        cy, cx = y + h / 2, x + w / 2
        yy = (np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy) / max(h / 2, 0.5)
        xx = (np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx) / max(w / 2, 0.5)
        radius = yy**2 + xx**2
        inside = radius <= 1.0
        if not inside.any():
            inside = radius == radius.min()
        window = (slice(y0, y1), slice(x0, x1))
        wins = inside & (radius < depth[window])
        if not wins.any():
            continue
        labels[window][wins] = next_id
        depth[window][wins] = radius[wins]
        classes[next_id] = int(boxes.class_ids[index])
        scores[next_id] = float(boxes.scores[index])
        next_id += 1
    present = np.bincount(labels.ravel(), minlength=next_id) > 0
    gone = [i for i in classes if not present[i]]  # covered entirely by deeper neighbours
    for i in gone:
        del classes[i], scores[i]
    if gone:
        labels, mapping = relabel_sequential(labels)
        classes = {mapping[i]: c for i, c in classes.items()}
        scores = {mapping[i]: v for i, v in scores.items()}
    return labels, classes, scores


def _gaussian_radius(height: float, width: float, min_overlap: float = 0.7) -> float:
    """CenterNet's radius: the largest centre shift that keeps IoU >= ``min_overlap``."""
    a1, b1 = 1.0, height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1**2 - 4 * a1 * c1)) / 2
    a2, b2 = 4.0, 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2**2 - 4 * a2 * c2)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def heatmap_targets(
    boxes: Boxes,
    grid_shape: tuple[int, int],
    num_classes: int,
    *,
    stride: int,
    min_overlap: float = 0.7,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Training targets that :func:`boxes_from_heatmap` decodes back into ``boxes``.

    Returns
    -------
    heatmap
        ``(K, h, w)`` float32, a Gaussian of CenterNet's radius around each centre cell
        (value 1 at the cell; overlapping Gaussians keep the maximum).
    size
        ``(2, h, w)`` box width and height in input pixels at centre cells.
    offset
        ``(2, h, w)`` sub-cell centre offset in ``[0, 1)`` at centre cells.
    mask
        ``(h, w)`` bool, True at centre cells (where size and offset losses apply).
    """
    h, w = int(grid_shape[0]), int(grid_shape[1])
    heat = np.zeros((num_classes, h, w), dtype=np.float32)
    size = np.zeros((2, h, w), dtype=np.float32)
    offset = np.zeros((2, h, w), dtype=np.float32)
    mask = np.zeros((h, w), dtype=bool)
    yy, xx = np.mgrid[0:h, 0:w]
    for (x, y, bw, bh), class_id in zip(boxes.xywh, boxes.class_ids):  # loop over objects
        if not 1 <= class_id <= num_classes:
            raise InputError(f"box class {class_id} outside 1..{num_classes}")
        cx, cy = (x + bw / 2) / stride, (y + bh / 2) / stride
        ix, iy = int(math.floor(cx)), int(math.floor(cy))
        if not (0 <= ix < w and 0 <= iy < h):
            continue
        radius = max(0.0, _gaussian_radius(bh / stride, bw / stride, min_overlap))
        sigma = (2 * int(radius) + 1) / 6
        reach = int(math.ceil(3 * sigma)) + 1  # the Gaussian is ~0 beyond 3 sigma
        win = (slice(max(iy - reach, 0), iy + reach + 1), slice(max(ix - reach, 0), ix + reach + 1))
        blob = np.exp(-((xx[win] - ix) ** 2 + (yy[win] - iy) ** 2) / (2 * sigma**2))
        np.maximum(heat[class_id - 1][win], blob, out=heat[class_id - 1][win])
        size[:, iy, ix] = (bw, bh)
        offset[:, iy, ix] = (cx - ix, cy - iy)
        mask[iy, ix] = True
    return heat, size, offset, mask

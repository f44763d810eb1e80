"""Corrections of an instance image: change class, merge, split, delete, clean, relabel.

Every operation is pure: it reads a label image (and the classes of its ids) and returns a
:class:`LabelEdit` that says which pixels change to which id, which ids vanish, and which
classes and origins change. Applying the edit is the caller's business, so napari can route
the pixels through ``Labels.data_setitem`` (its undo history) while scripts call
:meth:`LabelEdit.apply`.

Operations on one object touch only that object's bounding box. An :class:`ObjectIndex`
caches the boxes of all ids (``scipy.ndimage.find_objects``) and grows them as edits land, so
an edit on a 12-megapixel image never rescans the image; without an index the box is found
by one scan.

A :class:`CorrectionLog` records each edit (added, deleted, merged, split, reclassed ...)
with ids, classes, pixel counts and time, as plain JSON-able dicts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from .errors import InputError

Region = tuple[slice, slice]
Indices = tuple[np.ndarray, np.ndarray]


def _pixels_of(mask: np.ndarray) -> Indices:
    """``(rows, columns)`` of a 2-D mask's true pixels (``np.nonzero``, typed as two arrays)."""
    rows, cols = np.nonzero(mask)
    return rows, cols


#: Correction log actions. ``edited``: objects painted over by hand; ``reverted``: pixels
#: changed by undo/redo, ``ids`` the ids that vanished and ``result_ids`` those that came back.
ACTIONS = (
    "added",
    "deleted",
    "merged",
    "split",
    "reclassed",
    "removed_small",
    "filled_holes",
    "relabelled",
    "edited",
    "reverted",
)


# --- correction log ------------------------------------------------------------------------------
@dataclass
class CorrectionEvent:
    """One correction: what was done to which ids.

    Attributes
    ----------
    action
        One of :data:`ACTIONS`.
    ids
        Instance ids the action concerns (for ``merged``, the ids merged; for ``split``,
        the original id).
    result_ids
        Ids that hold the result (the merge target, the split pieces, new ids).
    classes
        Class id of each id in ``result_ids`` after the action (reclassed: the new class).
    previous_classes
        Class id of each id in ``ids`` before the action.
    pixels
        Pixels that changed.
    time
        Seconds since the epoch (UTC).
    """

    action: str
    ids: list[int] = field(default_factory=list)
    result_ids: list[int] = field(default_factory=list)
    classes: list[int] = field(default_factory=list)
    previous_classes: list[int] = field(default_factory=list)
    pixels: int = 0
    time: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise InputError(f"unknown correction action {self.action!r}")
        self.ids = [int(i) for i in self.ids]
        self.result_ids = [int(i) for i in self.result_ids]
        self.classes = [int(c) for c in self.classes]
        self.previous_classes = [int(c) for c in self.previous_classes]
        self.pixels = int(self.pixels)
        self.time = float(self.time)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)


class CorrectionLog(list):
    """A list of :class:`CorrectionEvent`, serialisable to and from JSON."""

    def to_dicts(self) -> list[dict[str, Any]]:
        return [event.to_dict() for event in self]

    def to_json(self) -> str:
        return json.dumps(self.to_dicts(), indent=1)

    @classmethod
    def from_dicts(cls, rows: Iterable[Mapping[str, Any]]) -> CorrectionLog:
        """Events from dicts as :meth:`to_dicts` writes them (unknown keys are an error)."""
        try:
            return cls(CorrectionEvent(**dict(row)) for row in rows)
        except TypeError as exc:
            raise InputError(f"not a correction log entry: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> CorrectionLog:
        return cls.from_dicts(json.loads(text))


# --- the result of an edit -----------------------------------------------------------------------
@dataclass(eq=False)
class LabelEdit:
    """A change to an instance image and its per-id tables.

    Attributes
    ----------
    indices
        ``(rows, columns)`` of the pixels that change.
    values
        New id of each of those pixels.
    classes
        Class id of ids created or reclassed by the edit.
    origins
        Origin (:data:`~napari_cellquant.core.annotation.ORIGINS`) of ids the edit changed.
    removed
        Ids that no longer exist after the edit.
    id_map
        For a relabel: ``id_map[old_id] = new_id`` (0 for absent ids); else ``None``.
    event
        The correction log entry.
    """

    indices: Indices
    values: np.ndarray
    classes: dict[int, int]
    origins: dict[int, str]
    removed: tuple[int, ...]
    event: CorrectionEvent
    id_map: np.ndarray | None = None

    @property
    def n_pixels(self) -> int:
        return int(self.indices[0].size)

    def apply(self, labels: np.ndarray) -> np.ndarray:
        """Write the pixel changes into ``labels`` (in place) and return it."""
        labels[self.indices] = self.values
        return labels

    def apply_classes(self, classes: Mapping[int, int]) -> dict[int, int]:
        """``classes`` after the edit (a new dict)."""
        if self.id_map is not None:
            mapped = {
                int(self.id_map[k]): v
                for k, v in classes.items()
                if k < len(self.id_map) and self.id_map[k]
            }
        else:
            mapped = {k: v for k, v in classes.items() if k not in self.removed}
        mapped.update(self.classes)
        return mapped


def _no_pixels() -> Indices:
    return (np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp))


# --- bounding boxes ------------------------------------------------------------------------------
class ObjectIndex:
    """Bounding boxes of every id of a label image, kept as supersets while edits land.

    A box may be larger than its object (after erasing) but never smaller, so searching an
    object inside its box is always exact.
    """

    def __init__(self, labels: np.ndarray) -> None:
        self.shape = labels.shape
        self._low = np.zeros((0, 2), dtype=np.int64)
        self._high = np.zeros((0, 2), dtype=np.int64)  # exclusive
        self.rebuild(labels)

    def rebuild(self, labels: np.ndarray) -> None:
        """Recompute every box with one ``find_objects`` scan."""
        self.shape = labels.shape
        slices = ndimage.find_objects(np.asarray(labels))
        n = len(slices) + 1
        self._low = np.full((n, 2), np.iinfo(np.int64).max, dtype=np.int64)
        self._high = np.zeros((n, 2), dtype=np.int64)
        for k, sl in enumerate(slices, start=1):  # one entry per id, not per pixel
            if sl is not None:
                self._low[k] = (sl[0].start, sl[1].start)
                self._high[k] = (sl[0].stop, sl[1].stop)

    def ids(self) -> np.ndarray:
        """Ids that have (or had) a box, ascending."""
        return np.flatnonzero(self._high[:, 0] > 0)

    @property
    def max_id(self) -> int:
        """Largest id that has (or had) a box."""
        present = np.flatnonzero(self._high[:, 0] > 0)
        return int(present[-1]) if present.size else 0

    def _grow_to(self, n: int) -> None:
        if n > len(self._low):
            extra = n - len(self._low)
            self._low = np.vstack(
                [self._low, np.full((extra, 2), np.iinfo(np.int64).max, dtype=np.int64)]
            )
            self._high = np.vstack([self._high, np.zeros((extra, 2), dtype=np.int64)])

    def region(self, ids: Iterable[int]) -> Region | None:
        """Union of the boxes of ``ids``; ``None`` when none of them has one."""
        ids = np.asarray([int(i) for i in ids if 0 < int(i) < len(self._low)], dtype=np.int64)
        if not ids.size:
            return None
        low = self._low[ids].min(axis=0)
        high = self._high[ids].max(axis=0)
        if high[0] <= low[0]:
            return None
        return (slice(int(low[0]), int(high[0])), slice(int(low[1]), int(high[1])))

    def update(self, indices: Indices, values: np.ndarray | int) -> None:
        """Grow the boxes of the ids written at ``indices``."""
        rows, cols = (np.asarray(a, dtype=np.int64).ravel() for a in indices)
        if not rows.size:
            return
        values = np.broadcast_to(np.asarray(values, dtype=np.int64), rows.shape)
        ids, inverse = np.unique(values, return_inverse=True)
        keep = ids > 0
        if not keep.any():
            return
        self._grow_to(int(ids.max()) + 1)
        low = np.full((ids.size, 2), np.iinfo(np.int64).max, dtype=np.int64)
        high = np.zeros((ids.size, 2), dtype=np.int64)
        np.minimum.at(low[:, 0], inverse, rows)
        np.minimum.at(low[:, 1], inverse, cols)
        np.maximum.at(high[:, 0], inverse, rows + 1)
        np.maximum.at(high[:, 1], inverse, cols + 1)
        ids, low, high = ids[keep], low[keep], high[keep]
        self._low[ids] = np.minimum(self._low[ids], low)
        self._high[ids] = np.maximum(self._high[ids], high)

    def update_region(self, labels: np.ndarray, region: Region) -> None:
        """Grow boxes for whatever ids now lie in ``region`` of ``labels`` (after a paint)."""
        rows, cols = np.nonzero(labels[region])
        self.update((rows + region[0].start, cols + region[1].start), labels[region][rows, cols])


def _region_of(labels: np.ndarray, ids: Sequence[int], index: ObjectIndex | None) -> Region | None:
    if index is not None:
        return index.region(ids)
    rows, cols = np.nonzero(np.isin(labels, ids))
    if not rows.size:
        return None
    return (
        slice(int(rows.min()), int(rows.max()) + 1),
        slice(int(cols.min()), int(cols.max()) + 1),
    )


def _check_ids(labels: np.ndarray, ids: Sequence[int], region: Region | None) -> None:
    if region is None:
        raise InputError(f"label(s) {', '.join(map(str, ids))} not found in the image")
    present = np.unique(labels[region])
    missing = [i for i in ids if i not in set(present.tolist())]
    if missing:
        raise InputError(f"label(s) {', '.join(map(str, missing))} not found in the image")


def _offset(indices: Indices, region: Region) -> Indices:
    return (indices[0] + region[0].start, indices[1] + region[1].start)


def next_free_id(labels: np.ndarray, index: ObjectIndex | None = None) -> int:
    """The id one above the largest id in use."""
    if index is not None:
        return index.max_id + 1
    return int(np.max(labels, initial=0)) + 1


# --- operations ----------------------------------------------------------------------------------
def set_class(classes: Mapping[int, int], ids: Sequence[int], class_id: int) -> LabelEdit:
    """Give ``ids`` the class ``class_id`` (no pixel changes)."""
    ids = [int(i) for i in ids if int(i) != 0]
    if not ids:
        raise InputError("no object selected to reclass")
    event = CorrectionEvent(
        "reclassed",
        ids=ids,
        result_ids=ids,
        classes=[class_id] * len(ids),
        previous_classes=[int(classes.get(i, 0)) for i in ids],
    )
    return LabelEdit(
        _no_pixels(),
        np.zeros(0, dtype=np.int32),
        {i: int(class_id) for i in ids},
        {},
        (),
        event,
    )


def merge(
    labels: np.ndarray,
    ids: Sequence[int],
    classes: Mapping[int, int],
    *,
    index: ObjectIndex | None = None,
    class_rule: str = "majority",
) -> LabelEdit:
    """Merge two or more objects into the smallest of their ids.

    Parameters
    ----------
    labels
        Instance image.
    ids
        The ids to merge (at least two distinct, non-zero).
    classes
        Class of each id.
    index
        Bounding boxes, so only the objects' box is read.
    class_rule
        ``"majority"``: the class covering most pixels of the merged object;
        ``"first"``: the class of ``ids[0]``.
    """
    ids = list(dict.fromkeys(int(i) for i in ids if int(i) != 0))
    if len(ids) < 2:
        raise InputError("merging needs at least two different labels")
    if class_rule not in ("majority", "first"):
        raise InputError(f"unknown class rule {class_rule!r} (majority or first)")
    region = _region_of(labels, ids, index)
    _check_ids(labels, ids, region)
    assert region is not None
    target = min(ids)
    window = labels[region]
    moved = np.isin(window, [i for i in ids if i != target])
    indices = _offset(_pixels_of(moved), region)
    previous = [int(classes.get(i, 0)) for i in ids]
    if class_rule == "first":
        new_class = previous[0]
    else:
        sizes = np.bincount(
            np.searchsorted(np.sort(ids), window[np.isin(window, ids)]), minlength=len(ids)
        )
        by_class: dict[int, int] = {}
        for object_id, size in zip(sorted(ids), sizes.tolist(), strict=True):
            cls = int(classes.get(object_id, 0))
            by_class[cls] = by_class.get(cls, 0) + size
        new_class = max(by_class, key=lambda c: (by_class[c], -c))
    removed = tuple(i for i in ids if i != target)
    event = CorrectionEvent(
        "merged",
        ids=ids,
        result_ids=[target],
        classes=[new_class],
        previous_classes=previous,
        pixels=indices[0].size,
    )
    return LabelEdit(
        indices,
        np.full(indices[0].size, target, dtype=labels.dtype),
        {target: new_class},
        {target: "edited"},
        removed,
        event,
    )


def split(
    labels: np.ndarray,
    label_id: int,
    classes: Mapping[int, int],
    *,
    seeds: np.ndarray | Sequence[Sequence[float]] | None = None,
    min_distance: int = 5,
    index: ObjectIndex | None = None,
) -> LabelEdit:
    """Split one object by a watershed of its distance transform.

    Parameters
    ----------
    labels
        Instance image.
    label_id
        The object to split.
    classes
        Class of each id; every piece keeps the object's class.
    seeds
        ``(n, 2)`` (row, column) points, one per piece; seeds outside the object are
        ignored. Without seeds, the peaks of the distance transform at least
        ``min_distance`` apart are the seeds.
    min_distance
        Smallest distance between automatic seeds, in pixels.
    index
        Bounding boxes; also gives the next free ids.

    Returns
    -------
    LabelEdit
        The largest piece keeps ``label_id``; the others get new ids above the largest id.

    Raises
    ------
    InputError
        The object is missing, or fewer than two seeds fall inside it.
    """
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    label_id = int(label_id)
    region = _region_of(labels, [label_id], index)
    _check_ids(labels, [label_id], region)
    assert region is not None
    # one pixel of margin so the distance transform sees the border of the object
    r0, c0 = max(region[0].start - 1, 0), max(region[1].start - 1, 0)
    r1 = min(region[0].stop + 1, labels.shape[0])
    c1 = min(region[1].stop + 1, labels.shape[1])
    region = (slice(r0, r1), slice(c0, c1))
    mask = labels[region] == label_id
    distance = ndimage.distance_transform_edt(mask)
    markers = np.zeros(mask.shape, dtype=np.int32)
    if seeds is not None and len(seeds):
        points = np.rint(np.asarray(seeds, dtype=np.float64).reshape(-1, 2)).astype(np.int64)
        points -= (r0, c0)
        inside = (
            (points[:, 0] >= 0)
            & (points[:, 0] < mask.shape[0])
            & (points[:, 1] >= 0)
            & (points[:, 1] < mask.shape[1])
        )
        points = points[inside]
        points = points[mask[points[:, 0], points[:, 1]]]
    else:
        points = peak_local_max(
            distance,
            min_distance=max(int(min_distance), 1),
            labels=mask.astype(np.int32),
            exclude_border=False,
        )
    points = np.unique(points, axis=0) if len(points) else points
    if len(points) < 2:
        raise InputError(
            f"label {label_id}: splitting needs two or more seeds inside the object, "
            f"found {len(points)}"
        )
    markers[points[:, 0], points[:, 1]] = np.arange(1, len(points) + 1)
    pieces = watershed(-distance, markers, mask=mask)
    sizes = np.bincount(pieces.ravel(), minlength=len(points) + 1)
    sizes[0] = 0
    keeper = int(np.argmax(sizes))
    first_new = next_free_id(labels, index)
    new_ids = np.zeros(len(points) + 1, dtype=np.int64)
    others = [p for p in range(1, len(points) + 1) if p != keeper and sizes[p] > 0]
    new_ids[others] = np.arange(first_new, first_new + len(others))
    new_ids[keeper] = label_id
    changed = mask & (new_ids[pieces] != label_id)
    local = _pixels_of(changed)
    values = new_ids[pieces[local]]  # wider than labels when new ids outgrow their type
    cls = int(classes.get(label_id, 0))
    result = [label_id, *new_ids[others].tolist()]
    event = CorrectionEvent(
        "split",
        ids=[label_id],
        result_ids=result,
        classes=[cls] * len(result),
        previous_classes=[cls],
        pixels=local[0].size,
    )
    return LabelEdit(
        _offset(local, region),
        values,
        {i: cls for i in result},
        {i: "edited" for i in result},
        (),
        event,
    )


def delete(
    labels: np.ndarray,
    ids: Sequence[int],
    classes: Mapping[int, int],
    *,
    index: ObjectIndex | None = None,
) -> LabelEdit:
    """Erase objects (their pixels become background)."""
    ids = list(dict.fromkeys(int(i) for i in ids if int(i) != 0))
    if not ids:
        raise InputError("no object selected to delete")
    region = _region_of(labels, ids, index)
    _check_ids(labels, ids, region)
    assert region is not None
    indices = _offset(_pixels_of(np.isin(labels[region], ids)), region)
    event = CorrectionEvent(
        "deleted",
        ids=ids,
        previous_classes=[int(classes.get(i, 0)) for i in ids],
        pixels=indices[0].size,
    )
    return LabelEdit(
        indices, np.zeros(indices[0].size, dtype=labels.dtype), {}, {}, tuple(ids), event
    )


def remove_small(
    labels: np.ndarray, min_size: int, classes: Mapping[int, int] | None = None
) -> LabelEdit:
    """Erase every object of fewer than ``min_size`` pixels (one scan of the image)."""
    classes = classes or {}
    sizes = np.bincount(np.asarray(labels).ravel())
    small = (sizes > 0) & (sizes < int(min_size))
    small[0] = False
    ids = np.flatnonzero(small)
    if ids.size:
        indices = _pixels_of(small[labels])
    else:
        indices = _no_pixels()
    event = CorrectionEvent(
        "removed_small",
        ids=ids.tolist(),
        previous_classes=[int(classes.get(int(i), 0)) for i in ids],
        pixels=indices[0].size,
    )
    return LabelEdit(
        indices,
        np.zeros(indices[0].size, dtype=labels.dtype),
        {},
        {},
        tuple(int(i) for i in ids),
        event,
    )


def fill_holes(
    labels: np.ndarray,
    ids: Sequence[int] | None = None,
    *,
    index: ObjectIndex | None = None,
) -> LabelEdit:
    """Fill the background holes inside objects (each object on its own box).

    A hole is background enclosed by one object; pixels of other objects inside it are kept.
    """
    if index is None:
        index = ObjectIndex(labels)
    if ids is None:
        ids = index.ids().tolist()
    rows_all: list[np.ndarray] = []
    cols_all: list[np.ndarray] = []
    vals_all: list[np.ndarray] = []
    filled_ids: list[int] = []
    for object_id in ids:  # one small box per object, never the whole image
        region = index.region([object_id])
        if region is None:
            continue
        window = labels[region]
        mask = window == object_id
        if not mask.any():
            continue
        holes = ndimage.binary_fill_holes(mask) & (window == 0)
        if holes.any():
            r, c = np.nonzero(holes)
            rows_all.append(r + region[0].start)
            cols_all.append(c + region[1].start)
            vals_all.append(np.full(r.size, object_id, dtype=labels.dtype))
            filled_ids.append(int(object_id))
    if rows_all:
        indices: Indices = (np.concatenate(rows_all), np.concatenate(cols_all))
        values = np.concatenate(vals_all)
    else:
        indices, values = _no_pixels(), np.zeros(0, dtype=labels.dtype)
    event = CorrectionEvent(
        "filled_holes", ids=filled_ids, result_ids=filled_ids, pixels=indices[0].size
    )
    return LabelEdit(indices, values, {}, {i: "edited" for i in filled_ids}, (), event)


def relabel(labels: np.ndarray, classes: Mapping[int, int] | None = None) -> LabelEdit:
    """The edit that renumbers ids to 1..n in their order
    (:func:`~napari_cellquant.core.postprocess.relabel_sequential`, undoable);
    ``LabelEdit.id_map`` maps old to new ids."""
    from .postprocess import relabel_sequential

    relabelled, mapping = relabel_sequential(labels)
    present = np.array(sorted(mapping), dtype=np.int64)
    id_map = np.zeros(int(present.max(initial=0)) + 1, dtype=np.int64)
    id_map[present] = [mapping[int(i)] for i in present]
    changed = _pixels_of(relabelled != labels)
    moved = present[id_map[present] != present]
    event = CorrectionEvent(
        "relabelled",
        ids=moved.tolist(),
        result_ids=id_map[moved].tolist(),
        pixels=changed[0].size,
    )
    return LabelEdit(
        changed, relabelled[changed].astype(labels.dtype), {}, {}, (), event, id_map=id_map
    )


__all__ = [
    "ACTIONS",
    "CorrectionEvent",
    "CorrectionLog",
    "LabelEdit",
    "ObjectIndex",
    "delete",
    "fill_holes",
    "merge",
    "next_free_id",
    "relabel",
    "remove_small",
    "set_class",
    "split",
]

"""Objects as outlines: exact pixel-border polygons out of label images, and back.

The shape formats (COCO polygons, QuPath GeoJSON, ImageJ ROI sets) all describe an object by
its outline in the frame QuPath, ImageJ and COCO share: x is the column, y the row, and pixel
``(row, col)`` covers ``[col, col + 1) x [row, row + 1)``. Tracing along the pixel *borders*
(vertices on pixel corners) gives outlines that rasterise back to exactly the same pixels under
the rule every one of those tools uses: a pixel belongs to a shape when its centre lies inside.

- :func:`trace_pixel_borders`: the rings of a binary mask (outer ones and holes alike);
- :func:`mask_polygons`: the same as polygons with holes, one per 8-connected part;
- :func:`rings_to_mask`: rings back to pixels (even-odd, so holes punch through);
- :func:`annotation_from_outlines`: one image's outlines and boxes, as a shape file holds
  them, into an :class:`~napari_cellquant.core.annotation.Annotation`, with the image size
  and class names resolved as every reader here resolves them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.draw import polygon as fill_polygon
from skimage.measure import find_contours

from ..annotation import ORIGINS, Annotation, Boxes
from ..classes import ClassSet, get_class_set, infer_class_set
from ..errors import InputError

__all__ = [
    "Outline",
    "annotation_from_outlines",
    "instance_polygons",
    "mask_polygons",
    "paint_objects",
    "per_image_paths",
    "rings_to_mask",
    "trace_pixel_borders",
]

#: the name given to objects a file leaves unclassified, when other objects have a class
UNCLASSIFIED = "unclassified"


# --- tracing ---------------------------------------------------------------------------------
def trace_pixel_borders(mask: np.ndarray, *, connectivity: int = 8) -> list[list[int]]:
    """Polygons along the pixel borders of a binary mask, vertices on pixel corners.

    Marching squares (``find_contours`` at level 0.5, foreground 8-connected) visits the
    midpoints of the border edges in order but cuts each corner (``connectivity`` 8 or 4 says
    how foreground pixels that touch only at a corner are joined); we put the corner back
    between consecutive midpoints that lie on perpendicular edges and keep only the turning
    corners. The result is the exact outline (outer rings and holes), so a centre-inside
    rasteriser (pycocotools, QuPath, ImageJ) gives back the same pixels.

    Returns a list of flat ``[x0, y0, x1, y1, ...]`` integer polygons in the mask's frame.
    """
    padded = np.pad(np.asarray(mask, dtype=np.float32), 1)
    polygons = []
    joined = "high" if connectivity == 8 else "low"
    for contour in find_contours(padded, 0.5, fully_connected=joined):
        p = contour[:-1]  # closed contours repeat their first point
        if len(p) < 2:
            continue
        q = np.roll(p, -1, axis=0)
        # in marching squares output exactly one coordinate of each point is half-integer
        p_half = (p % 1) != 0
        corner = np.where(p_half, p, q)
        perpendicular = (p[:, 0] != q[:, 0]) & (p[:, 1] != q[:, 1])
        points = np.concatenate([p[:, None, :], corner[:, None, :]], axis=1).reshape(-1, 2)
        keep = np.ones(len(points), dtype=bool)
        keep[1::2] = perpendicular
        points = points[keep]
        corners = points[np.all((points % 1) != 0, axis=1)]
        before = np.roll(corners, 1, axis=0)
        after = np.roll(corners, -1, axis=0)
        turn = (corners[:, 0] - before[:, 0]) * (after[:, 1] - corners[:, 1]) - (
            corners[:, 1] - before[:, 1]
        ) * (after[:, 0] - corners[:, 0])
        corners = corners[turn != 0]
        if len(corners) < 3:
            continue
        # padded pixel-centre frame -> mask pixel-corner frame: -1 (pad) + 0.5 (centre->corner)
        xy = np.rint(corners[:, ::-1] - 0.5).astype(np.int64)
        polygons.append(xy.ravel().tolist())
    return polygons


def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _outer_ring(mask: np.ndarray) -> np.ndarray:
    """The outer border of a solid (hole-free) mask as ``(N, 2)`` xy, counter-clockwise."""
    rings = [
        np.asarray(p, dtype=np.int64).reshape(-1, 2)
        for p in trace_pixel_borders(mask, connectivity=4)
    ]
    ring = max(rings, key=lambda r: abs(_signed_area(r)))
    return ring if _signed_area(ring) > 0 else ring[::-1]


def mask_polygons(mask: np.ndarray) -> list[list[np.ndarray]]:
    """A binary mask as polygons with holes: ``[[exterior, hole, ...], ...]``, one polygon per
    4-connected part, each ring ``(N, 2)`` integer xy on pixel corners (not closed).

    Exteriors turn counter-clockwise and holes clockwise in (x, y), as RFC 7946 asks. Parts
    and holes are both 4-connected pieces, so no ring touches itself and every polygon is
    valid in the OGC sense (shapely, JTS in QuPath): pixels meeting only at a corner become
    polygons (or holes) that touch at that point, which the standard allows. A part lying
    inside another's hole is a polygon of its own.
    """
    parts, _ = ndi.label(mask)
    polygons: list[list[np.ndarray]] = []
    for k, where in enumerate(ndi.find_objects(parts), start=1):
        if where is None:
            continue
        part = parts[where] == k
        solid = ndi.binary_fill_holes(part)
        offset = np.array([where[1].start, where[0].start])
        rings = [_outer_ring(solid) + offset]
        holes, _ = ndi.label(solid & ~part)
        for h, hole_where in enumerate(ndi.find_objects(holes), start=1):
            hole = ndi.binary_fill_holes(holes[hole_where] == h)  # islands inside stay inside
            hole_offset = offset + np.array([hole_where[1].start, hole_where[0].start])
            rings.append((_outer_ring(hole) + hole_offset)[::-1])
        polygons.append(rings)
    return polygons


def instance_polygons(labels: np.ndarray) -> Iterator[tuple[int, list[list[np.ndarray]]]]:
    """``(id, polygons)`` of every instance of a label image, in id order, traced on its crop."""
    for i, where in enumerate(ndi.find_objects(labels), start=1):
        if where is None:
            continue
        # one pixel of margin keeps the crop's own edge from cutting outlines
        rows = slice(max(where[0].start - 1, 0), where[0].stop + 1)
        cols = slice(max(where[1].start - 1, 0), where[1].stop + 1)
        offset = np.array([cols.start, rows.start])
        polygons = mask_polygons(labels[rows, cols] == i)
        yield i, [[ring + offset for ring in rings] for rings in polygons]


# --- painting --------------------------------------------------------------------------------
def paint_objects(
    pixels: Sequence[np.ndarray],
    given_ids: Sequence[object],
    scores: Sequence[float],
    shape: tuple[int, int],
) -> tuple[np.ndarray, list[int], np.ndarray]:
    """Label image, the id of each object, and the pixels each id kept.

    ``pixels`` holds each object's row-major flat pixel indices. Ids are ``given_ids`` when
    they are distinct positive integers (our own files: lossless), else 1..N in file order.
    Higher scores are painted last so they win overlaps; without scores later objects win
    (the sort is stable).
    """
    ids = [
        int(i)
        for i in given_ids
        if isinstance(i, int) and not isinstance(i, bool) and 0 < i < 2**31
    ]
    if len(ids) != len(pixels) or len(set(ids)) != len(ids):
        ids = list(range(1, len(pixels) + 1))
    order = sorted(
        range(len(pixels)), key=lambda k: -math.inf if math.isnan(scores[k]) else scores[k]
    )
    labels = np.zeros(shape, dtype=np.int32)
    flat_labels = labels.reshape(-1)
    for k in order:  # one vectorised assignment per object
        flat_labels[pixels[k]] = ids[k]
    kept = np.bincount(flat_labels, minlength=max(ids, default=0) + 1)
    return labels, ids, kept


def rings_to_mask(rings: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre lies inside the rings (``(N, 2)`` xy each), by the even-odd rule."""
    mask = np.zeros(shape, dtype=bool)
    for ring in rings:
        xy = np.asarray(ring, dtype=np.float64).reshape(-1, 2)
        if len(xy) < 3:
            continue
        # pixel (r, c) has its centre at (c + 0.5, r + 0.5): shift the ring onto the grid
        rr, cc = fill_polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape)
        mask[rr, cc] ^= True
    return mask


# --- shape files -> Annotation ---------------------------------------------------------------
@dataclass
class Outline:
    """One object as a shape file holds it: rings (even-odd) or a box, and what it says."""

    rings: list[np.ndarray] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None  # x, y, w, h
    class_name: str | None = None
    score: float = math.nan
    origin: str | None = None
    object_id: int | None = None

    def reach(self) -> tuple[float, float]:
        """(max y, max x) the object reaches."""
        if self.box is not None:
            x, y, w, h = self.box
            return y + h, x + w
        points = np.concatenate(
            [np.asarray(r, dtype=np.float64).reshape(-1, 2) for r in self.rings]
        )
        return float(points[:, 1].max()), float(points[:, 0].max())


def per_image_paths(
    annotations: Sequence[Annotation], dst: Path, *, file_suffix: str, ending: str, what: str
) -> list[Path]:
    """Where a one-image-per-file format writes: ``dst`` itself for one image when it ends in
    ``file_suffix``, else ``dst / <image stem><ending>`` per image (names must not repeat)."""
    if not annotations:
        raise InputError("nothing to write: no annotations were read")
    if dst.suffix.lower() == file_suffix:
        if len(annotations) != 1:
            raise InputError(
                f"{len(annotations)} images need a folder, one {what} each", source=dst
            )
        return [dst]
    stems = [Path(a.image_name or "image").stem for a in annotations]
    repeated = sorted({s for s in stems if stems.count(s) > 1})
    if repeated:
        raise InputError(f"two images named {repeated[0]!r}: {what}s are named after their images")
    return [dst / f"{stem}{ending}" for stem in stems]


def _check_coordinates(source: Path, k: int, outline: Outline) -> None:
    """Finite coordinates inside the image's top-left corner (within a pixel of rounding)."""
    values = np.concatenate(
        [np.asarray(r, dtype=np.float64).ravel() for r in outline.rings]
        + [np.asarray(outline.box or (), dtype=np.float64)]
    )
    if not values.size or not np.isfinite(values).all():
        raise InputError(f"object {k + 1} has no finite coordinates", source=source)
    if values.min() < -1 or (outline.box is not None and min(outline.box[2:]) < 0):
        raise InputError(
            f"object {k + 1} reaches {values.min():g}, outside the image "
            "(the origin is its top-left corner) or has a negative size",
            source=source,
        )


def _class_set_for(
    source: Path, names: Sequence[str | None], class_set: ClassSet | str | None
) -> tuple[ClassSet, list[int]]:
    """The class set and each object's class id; unclassified objects are named
    :data:`UNCLASSIFIED` unless every object is, when they are ``cell``."""
    from .coco import map_names_to_class_set

    if all(n is None for n in names) and class_set is None:
        cs = get_class_set("cell")
        return cs, [1] * len(names)
    named = [UNCLASSIFIED if n is None else n for n in names]
    cs = get_class_set(class_set) if class_set is not None else infer_class_set(named)
    if all(n is None for n in names) and len(cs) == 1:
        return cs, [1] * len(names)
    return cs, map_names_to_class_set(source, named, cs, what="class")


def _image_shape(
    source: Path, image_path: Path | None, outlines: Sequence[Outline]
) -> tuple[int, int]:
    from .images import image_shape

    if image_path is not None:
        return image_shape(image_path)
    reach = np.array([o.reach() for o in outlines]) if outlines else np.ones((1, 2))
    shape = (int(math.ceil(reach[:, 0].max())), int(math.ceil(reach[:, 1].max())))
    warnings.warn(
        f"{source}: no image found beside it, so the image is taken to be "
        f"{shape[1]}x{shape[0]} (width x height), just large enough for its "
        "objects; pass the images folder to use the real size",
        UserWarning,
        stacklevel=3,
    )
    return shape


def annotation_from_outlines(
    source: Path,
    outlines: Sequence[Outline],
    *,
    image_name: str,
    image_path: Path | None,
    class_set: ClassSet | str | None = None,
) -> Annotation:
    """One image's objects from a shape file.

    The image's size comes from the image found beside the file (shape files do not record
    it), else from the objects' extent with a warning. Objects keep the ids the file gives when
    they are distinct positive integers, else are numbered 1..N in file order; where objects
    overlap the one with the higher score (else the later one) keeps the pixels. An object
    reaching beyond the image is an error naming it; one hidden completely is counted in
    ``meta["hidden_objects"]`` with a warning.
    """
    for k, outline in enumerate(outlines):
        _check_coordinates(source, k, outline)
    cs, class_ids = _class_set_for(source, [o.class_name for o in outlines], class_set)
    shape = _image_shape(source, image_path, outlines)
    for k, outline in enumerate(outlines):
        reach = outline.reach()
        if reach[0] > shape[0] + 1 or reach[1] > shape[1] + 1:
            raise InputError(
                f"object {k + 1} reaches x {reach[1]:g}, y {reach[0]:g}, "
                f"beyond the {shape[1]}x{shape[0]} image {image_name}",
                source=source,
            )
    regions = [k for k, o in enumerate(outlines) if o.box is None]
    boxes = [k for k, o in enumerate(outlines) if o.box is not None]
    labels, ids, kept_pixels = paint_objects(
        [np.flatnonzero(rings_to_mask(outlines[k].rings, shape)) for k in regions],
        [outlines[k].object_id for k in regions],
        [outlines[k].score for k in regions],
        shape,
    )
    hidden = [i for i in ids if kept_pixels[i] == 0]
    meta: dict[str, object] = {"source": str(source)}
    if hidden:
        warnings.warn(
            f"{source}: {len(hidden)} object(s) lie completely under others or cover "
            f"no pixel centre (ids {hidden[:10]}) and are lost",
            UserWarning,
            stacklevel=2,
        )
        meta["hidden_objects"] = len(hidden)
    kept = [j for j in range(len(regions)) if kept_pixels[ids[j]]]
    return Annotation(
        labels=labels,
        class_set=cs,
        classes={ids[j]: class_ids[regions[j]] for j in kept},
        scores={
            ids[j]: outlines[regions[j]].score
            for j in kept
            if not math.isnan(outlines[regions[j]].score)
        },
        origins={
            ids[j]: str(outlines[regions[j]].origin)
            for j in kept
            if outlines[regions[j]].origin in ORIGINS
        },
        boxes=Boxes(
            np.array([outlines[k].box for k in boxes], dtype=np.float64).reshape(-1, 4),
            np.array([class_ids[k] for k in boxes], dtype=np.int32),
            np.array([outlines[k].score for k in boxes], dtype=np.float64),
        ),
        image_name=image_name,
        image_path=image_path,
        meta=meta,
    )

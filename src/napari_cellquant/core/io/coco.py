"""COCO JSON instances: read into :class:`Annotation` objects and write them back losslessly.

Reading
    Polygons, RLE (compressed string or uncompressed list counts) and box-only annotations.
    An annotation without a segmentation, or whose segmentation is just its bbox rectangle (as in
    the NET data, where every segmentation is the box polygon), becomes a box
    (:attr:`Annotation.boxes`); everything else is painted into :attr:`Annotation.labels`.
    Overlaps are painted so that the higher score wins (later annotation on top when there are
    no scores); an object hidden completely is reported with :func:`warnings.warn` and counted
    in ``meta["hidden_objects"]``.

Writing
    ``encoding="polygon"`` traces each instance's pixel *borders* (vertices on pixel corners), so
    pycocotools rasterises the polygon back to exactly the same pixels. An instance whose polygon
    would not rasterise back exactly (in practice: objects with holes, which COCO polygons cannot
    express) is written as RLE instead, for that annotation only: every instance comes back.
    ``encoding="rle"`` writes compressed RLE for every instance (pixel-exact).
    Each instance carries ``attributes: {"instance_id": id, "origin": ...}`` so label ids survive
    the round trip; boxes carry ``attributes: {"box_only": true}`` so they read back as boxes.

Image size
    When the image found beside the file differs in size from the size the file declares,
    the annotations decide (:func:`resolve_image_size`): when every object lies inside the real
    image their coordinates are taken as its pixels (the declared size is stale, as in the NET
    data); when some reach beyond it they were drawn on a larger original and are rescaled.
    Both are reported with a warning and recorded in ``meta["size_mismatch"]``.

Coordinates follow COCO: x is the column, y the row, and pixel ``(row, col)`` covers
``[col, col + 1) x [row, row + 1)``; a bbox ``[x, y, w, h]`` covers ``w * h`` pixels.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage as ndi

from ..annotation import ORIGINS, Annotation, Boxes
from ..classes import ClassSet, class_set_from_names
from ..errors import CellquantError, InputError
from .atomic import atomic_path
from .image_files import (
    BOUNDS_TOLERANCE,
    SizeDecision,
    SizeMismatch,
    check_size_mismatch,
    resolve_image_size,
    search_dirs,
)
from .images import find_image, image_shape
from .outlines import paint_objects, trace_pixel_borders

__all__ = ["coco_dict", "json_number", "looks_like_coco", "merge_coco", "read_coco", "write_coco"]

log = logging.getLogger(__name__)

Encoding = Literal["polygon", "rle"]
PathLike = str | os.PathLike[str]

#: Files up to this size are parsed fully by :func:`looks_like_coco`; larger ones are scanned.
_SNIFF_PARSE_BYTES = 2_000_000


def check_encoding(value: str) -> Encoding:
    """``value`` if it is a COCO segmentation encoding we write, else InputError."""
    if value not in ("polygon", "rle"):
        raise InputError(f"unknown COCO encoding {value!r}; use 'polygon' or 'rle'")
    return value  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------
# class sets
# ------------------------------------------------------------------------------------------
def map_names_to_class_set(
    source: Path, names: Sequence[str], class_set: ClassSet, what: str = "category"
) -> list[int]:
    """Class ids in ``class_set`` of ``names`` (case-insensitive); unknown -> InputError."""
    ids = []
    for name in names:
        try:
            ids.append(class_set.id_of(str(name)))
        except CellquantError:
            raise InputError(
                f"{what} {name!r} is not in class set {class_set.name!r} "
                f"({', '.join(class_set.names)})",
                source=source,
            ) from None
    return ids


# ------------------------------------------------------------------------------------------
# RLE helpers (column-major runs, as pycocotools stores them)
# ------------------------------------------------------------------------------------------
def _decode_rle_string(counts: str | bytes) -> np.ndarray:
    """Run lengths of a pycocotools compressed RLE string, vectorised.

    pycocotools writes each count in 5-bit groups (char = group + 48, bit 0x20 = more follows,
    bit 0x10 of the last group = negative) and stores counts from the fourth on as differences
    to the count two places before. Raises ValueError on malformed strings.
    """
    raw = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    c = np.frombuffer(raw, dtype=np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, dtype=np.int64)
    if c.min() < 0 or c.max() > 63:
        raise ValueError("characters outside the RLE alphabet")
    more = (c & 0x20) != 0
    if more[-1]:
        raise ValueError("string ends inside a count")
    ends = np.flatnonzero(~more)
    starts = np.r_[0, ends[:-1] + 1]
    n_chars = ends - starts + 1
    if n_chars.max() > 12:  # 60 bits: far beyond any image, and int64 would overflow
        raise ValueError("count too large")
    group = np.repeat(np.arange(len(ends)), n_chars)
    shift = 5 * (np.arange(len(c)) - starts[group])
    values = np.add.reduceat((c & 0x1F) << shift, starts)
    negative = (c[ends] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * n_chars[negative])
    out = values.copy()
    out[1::2] = np.cumsum(values[1::2])
    out[2::2] = np.cumsum(values[2::2])
    return out


def _runs_to_flat(counts: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Row-major flat pixel indices of the foreground runs of column-major RLE ``counts``."""
    rows, cols = shape
    counts = np.asarray(counts, dtype=np.int64)
    if counts.size and counts.min() < 0:
        raise ValueError("negative run length")
    total = int(counts.sum())
    if total != rows * cols:
        raise ValueError(f"run lengths add up to {total}, not {rows}x{cols} = {rows * cols}")
    ends = np.cumsum(counts)
    fg_len = counts[1::2]
    fg_start = ends[0::2][: len(fg_len)]
    keep = fg_len > 0
    fg_len, fg_start = fg_len[keep], fg_start[keep]
    n = int(fg_len.sum())
    offsets = np.repeat(fg_start - (np.cumsum(fg_len) - fg_len), fg_len)
    fortran = offsets + np.arange(n, dtype=np.int64)
    return (fortran % rows) * cols + fortran // rows


def _mask_counts(crop: np.ndarray, r0: int, c0: int, shape: tuple[int, int]) -> list[int]:
    """Column-major RLE counts, for the whole image, of a mask given as a crop at (r0, c0)."""
    rows, _ = shape
    cc, rr = np.nonzero(crop.T)  # column-major order: sorted by column, then row
    fortran = (cc.astype(np.int64) + c0) * rows + rr + r0
    breaks = np.flatnonzero(np.diff(fortran) != 1) + 1
    run_start = fortran[np.r_[0, breaks]]
    run_end = fortran[np.r_[breaks - 1, len(fortran) - 1]] + 1
    gaps = run_start - np.r_[0, run_end[:-1]]
    counts = np.empty(2 * len(run_start) + 1, dtype=np.int64)
    counts[0:-1:2] = gaps
    counts[1::2] = run_end - run_start
    counts[-1] = shape[0] * shape[1] - run_end[-1]
    return counts.tolist()


def _compress(counts: list[int], shape: tuple[int, int]) -> dict[str, Any]:
    rle = mask_utils.frPyObjects({"size": list(shape), "counts": counts}, *shape)
    return {"size": [int(shape[0]), int(shape[1])], "counts": rle["counts"].decode("ascii")}


# ------------------------------------------------------------------------------------------
# polygons: exact pixel-border tracing (core.io.outlines), checked against pycocotools
# ------------------------------------------------------------------------------------------
def _polygon_counts(polygons: Sequence[Sequence[float]], shape: tuple[int, int]) -> bytes:
    rles = mask_utils.frPyObjects(polygons, *shape)
    merged = rles[0] if len(rles) == 1 else mask_utils.merge(rles)
    return merged["counts"]


def _exact_polygons(crop: np.ndarray) -> list[list[int]] | None:
    """Border polygons of ``crop`` if pycocotools rasterises them to exactly ``crop``."""
    polygons = trace_pixel_borders(crop)
    if not polygons:
        return None
    expected = mask_utils.encode(np.asfortranarray(crop.astype(np.uint8)))["counts"]
    if _polygon_counts(polygons, crop.shape) != expected:
        return None
    return polygons


# ------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------
def _box_polygon(x: float, y: float, w: float, h: float) -> list[float]:
    return [x, y, x, y + h, x + w, y + h, x + w, y]


def json_number(value: float) -> int | float:
    """Plain JSON number: an int when integral, so files stay small and readable."""
    value = float(value)
    return int(value) if value.is_integer() else value


def _check_same_class_set(annotations: Sequence[Annotation]) -> ClassSet | None:
    if not annotations:
        return None
    first = annotations[0].class_set
    for ann in annotations[1:]:
        if ann.class_set != first:
            raise InputError(
                f"class set {ann.class_set.name!r} differs from {first.name!r}; one COCO file "
                "holds one set of categories",
                source=ann.image_name or None,
            )
    return first


def _sorted_by_name(annotations: Sequence[Annotation]) -> list[Annotation]:
    names = [a.image_name for a in annotations]
    for i, name in enumerate(names):
        if not name:
            raise InputError(f"annotation {i} has no image_name; COCO needs a file_name")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"image names must be unique; repeated: {', '.join(duplicates)}")
    return sorted(annotations, key=lambda a: a.image_name)


def _compact_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ids present (``ids[0] == 0``, background) and labels renumbered 0..n in id order.

    Renumbering keeps ``find_objects`` cheap when ids are sparse or huge.
    """
    top = int(labels.max(initial=0))
    if top <= 4 * labels.size:  # a lookup table beats sorting every pixel
        ids = np.flatnonzero(np.bincount(labels.ravel(), minlength=1))
        ids = np.r_[0, ids[ids != 0]]
        lookup = np.zeros(top + 1, dtype=np.int64)
        lookup[ids] = np.arange(len(ids))
        return ids, lookup[labels]
    ids, compact = np.unique(labels, return_inverse=True)
    compact = compact.reshape(labels.shape)
    if ids[0] != 0:
        ids, compact = np.r_[0, ids], compact + 1
    return ids, compact


def _instance_entries(ann: Annotation, encoding: Encoding) -> list[dict[str, Any]]:
    """COCO annotation dicts (without ids) for the instances of one image."""
    ids, compact = _compact_labels(ann.labels)
    areas = np.bincount(compact.ravel(), minlength=len(ids))
    slices = ndi.find_objects(compact)
    missing = [int(i) for i in ids[1:] if ann.classes.get(int(i), 0) == 0]
    if missing:
        raise InputError(
            f"{len(missing)} instance(s) have no class (ids {missing[:10]}); "
            "COCO needs a category for each",
            source=ann.image_name or None,
        )
    entries = []
    for k in range(1, len(ids)):
        sl = slices[k - 1]
        if sl is None:
            continue
        instance_id = int(ids[k])
        r0, c0 = sl[0].start, sl[1].start
        crop = compact[sl] == k
        segmentation: Any = None
        if encoding == "polygon":
            polygons = _exact_polygons(crop)
            if polygons is not None:
                segmentation = [
                    (np.asarray(p).reshape(-1, 2) + np.array([c0, r0])).ravel().tolist()
                    for p in polygons
                ]
        if segmentation is None:  # RLE requested, or a polygon cannot hold this object
            segmentation = _compress(_mask_counts(crop, r0, c0, ann.shape), ann.shape)
        entry: dict[str, Any] = {
            "category_id": ann.classes[instance_id],
            "segmentation": segmentation,
            "area": int(areas[k]),
            "bbox": [c0, r0, sl[1].stop - c0, sl[0].stop - r0],
            "iscrowd": 0,
            "attributes": {
                "instance_id": instance_id,
                "origin": ann.origins.get(instance_id, "file"),
            },
        }
        if instance_id in ann.scores and math.isfinite(ann.scores[instance_id]):
            entry["score"] = float(ann.scores[instance_id])
        entries.append(entry)
    return entries


def _box_entries(boxes: Boxes) -> list[dict[str, Any]]:
    entries = []
    for (x, y, w, h), class_id, score in zip(boxes.xywh, boxes.class_ids, boxes.scores):
        x, y, w, h = (json_number(v) for v in (x, y, w, h))
        entry: dict[str, Any] = {
            "category_id": int(class_id),
            "segmentation": [_box_polygon(x, y, w, h)],
            "area": json_number(float(w) * float(h)),
            "bbox": [x, y, w, h],
            "iscrowd": 0,
            "attributes": {"box_only": True},
        }
        if math.isfinite(score):
            entry["score"] = float(score)
        entries.append(entry)
    return entries


def coco_dict(annotations: Iterable[Annotation], *, encoding: Encoding = "polygon") -> dict:
    """The COCO instances dictionary for ``annotations``.

    Parameters
    ----------
    annotations
        One :class:`Annotation` per image, all with the same class set and distinct
        ``image_name``.
    encoding
        ``"polygon"`` (exact pixel-border polygons; RLE for an object a polygon cannot hold,
        such as one with a hole) or ``"rle"`` (compressed RLE for every instance).

    Returns
    -------
    dict
        ``info``, ``licenses``, ``images`` (ids from 1 in order of image name),
        ``annotations`` (ids from 1), ``categories`` (id = class id).
    """
    encoding = check_encoding(encoding)
    anns = [annotations] if isinstance(annotations, Annotation) else list(annotations)
    class_set = _check_same_class_set(anns)
    images: list[dict[str, Any]] = []
    entries: list[dict[str, Any]] = []
    for image_id, ann in enumerate(_sorted_by_name(anns), start=1):
        images.append(
            {
                "id": image_id,
                "file_name": ann.image_name,
                "width": ann.shape[1],
                "height": ann.shape[0],
            }
        )
        for entry in _instance_entries(ann, encoding) + _box_entries(ann.boxes):
            entries.append({"id": len(entries) + 1, "image_id": image_id, **entry})
    categories = []
    if class_set is not None:
        categories = [
            {"id": cid, "name": name, "supercategory": class_set.name}
            for cid, name in zip(class_set.ids, class_set.names)
        ]
    try:
        from importlib.metadata import version

        package_version = version("napari-cellquant")
    except Exception:  # not installed (source checkout): the version is only informative
        package_version = "unknown"
    return {
        "info": {
            "description": "napari-cellquant export",
            "version": package_version,
            "date_created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        },
        "licenses": [],
        "images": images,
        "annotations": entries,
        "categories": categories,
    }


def merge_coco(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One COCO dictionary from several (e.g. one :func:`coco_dict` per image, written as they
    finished): images renumbered 1.. in the given order, annotations 1.. after them, one
    ``info``; every part must have the same categories."""
    merged = coco_dict([], encoding="rle")  # info and licenses, as write_coco has them
    if not parts:
        return merged
    merged["categories"] = parts[0]["categories"]
    for part in parts:
        if part["categories"] != merged["categories"]:
            raise InputError("COCO parts with different categories cannot be merged")
        renumber = {}
        for image in part["images"]:
            renumber[image["id"]] = len(merged["images"]) + 1
            merged["images"].append({**image, "id": renumber[image["id"]]})
        for entry in part["annotations"]:
            merged["annotations"].append(
                {
                    **entry,
                    "id": len(merged["annotations"]) + 1,
                    "image_id": renumber[entry["image_id"]],
                }
            )
    return merged


def write_coco(
    annotations: Iterable[Annotation],
    path: PathLike,
    *,
    encoding: Encoding = "polygon",
    overwrite: bool = False,
) -> Path:
    """Write ``annotations`` as one COCO JSON file (see :func:`coco_dict`), atomically.

    Parameters
    ----------
    annotations
        One :class:`Annotation` per image.
    path
        The ``.json`` file to write.
    encoding
        ``"polygon"`` or ``"rle"``; see :func:`coco_dict`.
    overwrite
        Replace an existing file; otherwise :class:`~..errors.OutputExistsError`.

    Returns
    -------
    Path
        ``path``.
    """
    data = coco_dict(annotations, encoding=encoding)
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")
    return Path(path)


# ------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------
def looks_like_coco(path: PathLike) -> bool:
    """Whether ``path`` is a JSON file holding a dict with ``images`` and ``annotations``.

    Small files are parsed; large ones are only scanned for the two keys, so this stays cheap.
    Never raises.
    """
    p = Path(path)
    try:
        if p.suffix.lower() != ".json" or not p.is_file():
            return False
        if p.stat().st_size <= _SNIFF_PARSE_BYTES:
            data = json.loads(p.read_text(encoding="utf-8-sig"))
            return isinstance(data, dict) and "images" in data and "annotations" in data
        import re

        keys = {key: re.compile(rb'"%s"\s*:' % key.encode()) for key in ("images", "annotations")}
        found: set[str] = set()
        with p.open("rb") as fh:
            head = fh.read(1 << 20)
            if not head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
                return False
            chunk, tail = head, b""
            while chunk:
                window = tail + chunk
                found |= {k for k, rx in keys.items() if rx.search(window)}
                if len(found) == 2:
                    return True
                tail = window[-32:]
                chunk = fh.read(1 << 20)
        return False
    except (OSError, ValueError):
        return False


def _load_json(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError("file not found", source=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read as UTF-8 text ({exc})", source=path) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", source=path
        ) from None
    if not isinstance(data, dict):
        raise InputError(
            f"not a COCO file: the top level is a {type(data).__name__}, not an object", source=path
        )
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise InputError(f"not a COCO file: missing key(s) {', '.join(missing)}", source=path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list) or not all(isinstance(e, dict) for e in data[key]):
            raise InputError(f"not a COCO file: {key!r} must be a list of objects", source=path)
    return data


def _as_int(source: Path, value: Any, what: str) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not float(value).is_integer()
    ):
        raise InputError(f"{what} must be an integer, got {value!r}", source=source)
    return int(value)


def _as_floats(source: Path, values: Any, what: str) -> np.ndarray:
    if not isinstance(values, (list, tuple)) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
    ):
        raise InputError(f"{what} must be a list of numbers, got {str(values)[:80]}", source=source)
    out = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(out)):
        raise InputError(f"{what} holds non-finite numbers", source=source)
    return out


def check_box_inside(
    source: Path, xywh: Sequence[float] | np.ndarray, size: tuple[int, int], what: str
) -> None:
    """InputError unless the box lies in the image (``size`` = rows, cols) within 1 pixel."""
    x, y, w, h = xywh
    rows, cols = size
    tol = BOUNDS_TOLERANCE
    if w < 0 or h < 0:
        raise InputError(f"{what}: negative box size {w} x {h}", source=source)
    if x < -tol or y < -tol or x + w > cols + tol or y + h > rows + tol:
        raise InputError(
            f"{what}: box x={x:g} y={y:g} w={w:g} h={h:g} lies outside the "
            f"{cols}x{rows} image (not clipped: the annotation or its image size is wrong)",
            source=source,
        )


def _category_map(
    source: Path, categories: list[dict], class_set: ClassSet | None
) -> tuple[ClassSet, dict[int, int]]:
    entries = []
    for cat in categories:
        if "id" not in cat or "name" not in cat:
            raise InputError(f"category without id or name: {str(cat)[:80]}", source=source)
        entries.append((_as_int(source, cat["id"], "category id"), str(cat["name"])))
    entries.sort()
    cat_ids = [cid for cid, _ in entries]
    if len(set(cat_ids)) != len(cat_ids):
        raise InputError("category ids must be unique", source=source)
    names = [name for _, name in entries]
    if class_set is None:
        try:
            class_set = class_set_from_names(names)
        except CellquantError as exc:
            raise InputError(f"categories: {exc}", source=source) from None
        class_ids = list(class_set.ids)
    else:
        class_ids = map_names_to_class_set(source, names, class_set)
    return class_set, dict(zip(cat_ids, class_ids))


def _is_box_polygon(segmentation: list, bbox: np.ndarray | None) -> bool:
    """Whether the segmentation is just the annotation's ``bbox`` as a 4-corner polygon.

    Without a bbox a rectangle is an ordinary (rectangular) instance.
    """
    if bbox is None or len(segmentation) != 1 or not isinstance(segmentation[0], list):
        return False
    if len(segmentation[0]) != 8:
        return False
    try:
        pts = np.asarray(segmentation[0], dtype=np.float64).reshape(4, 2)
    except (TypeError, ValueError):
        return False
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    on_x = np.isclose(pts[:, 0], x0) | np.isclose(pts[:, 0], x1)
    on_y = np.isclose(pts[:, 1], y0) | np.isclose(pts[:, 1], y1)
    corners = {(bool(np.isclose(px, x0)), bool(np.isclose(py, y0))) for px, py in pts}
    if not (on_x.all() and on_y.all() and len(corners) == 4):
        return False
    return bool(np.allclose(bbox, [x0, y0, x1 - x0, y1 - y0], atol=0.5))


class _Instance:
    """One instance annotation waiting to be painted.

    Its geometry is parsed in the declared grid (``polygons``, or ``declared_flat`` for RLE),
    so the whole image's ``extent`` is known before deciding how to map it onto the real image.
    """

    __slots__ = (
        "class_id",
        "declared_flat",
        "extent",
        "flat",
        "given_id",
        "origin",
        "polygons",
        "score",
        "what",
    )

    def __init__(
        self,
        what: str,
        geometry: tuple[list[np.ndarray] | None, np.ndarray | None, tuple[float, float]],
        class_id: int,
        score: float,
        attributes: dict,
    ) -> None:
        self.what = what
        self.polygons, self.declared_flat, self.extent = geometry
        self.class_id = class_id
        self.score = score
        self.given_id = attributes.get("instance_id")
        origin = attributes.get("origin")
        self.origin = origin if origin in ORIGINS else None
        self.flat = np.zeros(0, dtype=np.int64)


def _resample_flat(
    flat: np.ndarray, declared: tuple[int, int], real: tuple[int, int]
) -> np.ndarray:
    """Nearest-neighbour resampling of a pixel set from the declared grid to the real one."""
    if flat.size == 0:
        return flat
    rows, cols = np.divmod(flat, declared[1])
    sy, sx = real[0] / declared[0], real[1] / declared[1]
    r0, r1 = int(rows.min()), int(rows.max()) + 1
    c0, c1 = int(cols.min()), int(cols.max()) + 1
    crop = np.zeros((r1 - r0, c1 - c0), dtype=bool)
    crop[rows - r0, cols - c0] = True
    # target pixels whose centre maps back into the source crop
    tr = np.arange(max(int(np.floor(r0 * sy)), 0), min(int(np.ceil(r1 * sy)), real[0]))
    tc = np.arange(max(int(np.floor(c0 * sx)), 0), min(int(np.ceil(c1 * sx)), real[1]))
    src_r = np.clip(np.floor((tr + 0.5) / sy).astype(np.int64), r0, r1 - 1) - r0
    src_c = np.clip(np.floor((tc + 0.5) / sx).astype(np.int64), c0, c1 - 1) - c0
    hit = crop[np.ix_(src_r, src_c)]
    rr, cc = np.nonzero(hit)
    return tr[rr] * real[1] + tc[cc]


def _crop_flat(flat: np.ndarray, declared: tuple[int, int], real: tuple[int, int]) -> np.ndarray:
    """A pixel set of the declared grid re-indexed in the real grid, unscaled.

    Only called when every object lies inside the real image, so nothing is actually cut;
    the mask is a guard, not a clip.
    """
    rows, cols = np.divmod(flat, declared[1])
    inside = (rows < real[0]) & (cols < real[1])
    return rows[inside] * real[1] + cols[inside]


def _instance_geometry(
    source: Path, what: str, segmentation: Any, declared: tuple[int, int]
) -> tuple[list[np.ndarray] | None, np.ndarray | None, tuple[float, float]]:
    """Validated polygons or RLE pixels (declared grid) and their (max y, max x) extent.

    Returns ``(polygons, None, extent)`` or ``(None, flat, extent)`` where ``flat`` holds the
    row-major indices of the RLE's pixels in the declared grid.
    """
    rows, cols = declared
    if isinstance(segmentation, list):
        polygons = []
        for poly in segmentation:
            xy = _as_floats(source, poly, f"{what}: polygon")
            if len(xy) < 6 or len(xy) % 2:
                raise InputError(
                    f"{what}: a polygon needs at least 3 x,y points, got {len(xy)} numbers",
                    source=source,
                )
            x, y = xy[0::2], xy[1::2]
            tol = BOUNDS_TOLERANCE
            if x.min() < -tol or y.min() < -tol or x.max() > cols + tol or y.max() > rows + tol:
                raise InputError(
                    f"{what}: polygon reaches x {x.min():g}..{x.max():g}, "
                    f"y {y.min():g}..{y.max():g}"
                    f" outside the {cols}x{rows} image (not clipped: the annotation or its image"
                    " size is wrong)",
                    source=source,
                )
            polygons.append(xy)
        extent = (
            max(float(p[1::2].max()) for p in polygons),
            max(float(p[0::2].max()) for p in polygons),
        )
        return polygons, None, extent  # not empty: an empty list is read as a box
    if isinstance(segmentation, dict):
        size = segmentation.get("size")
        raw = segmentation.get("counts")
        if not isinstance(size, list) or len(size) != 2 or raw is None:
            raise InputError(
                f"{what}: RLE needs 'size' [height, width] and 'counts'", source=source
            )
        if [_as_int(source, s, f"{what}: RLE size") for s in size] != [rows, cols]:
            raise InputError(
                f"{what}: RLE size {size} differs from the image's [{rows}, {cols}]", source=source
            )
        try:
            if isinstance(raw, str):
                counts = _decode_rle_string(raw)
            else:
                counts = _as_floats(source, raw, f"{what}: RLE counts").astype(np.int64)
            flat = _runs_to_flat(counts, declared)
        except ValueError as exc:
            raise InputError(f"{what}: invalid RLE ({exc})", source=source) from None
        if flat.size == 0:
            return None, flat, (0.0, 0.0)
        # the pixel (r, c) covers [c, c + 1) x [r, r + 1): its far edge is r + 1, c + 1
        extent = (float(flat.max() // cols + 1), float(np.max(flat % cols) + 1))
        return None, flat, extent
    raise InputError(
        f"{what}: segmentation must be polygons or RLE, got {str(segmentation)[:60]}", source=source
    )


def _instance_pixels(
    inst: _Instance, declared: tuple[int, int], decision: SizeDecision
) -> np.ndarray:
    """Row-major flat indices, in the decided grid, of one parsed instance.

    Polygons are scaled (or not) and rasterised in the decided grid; RLE, defined over the
    declared grid, is resampled when rescaling and re-indexed (cropped) when keeping.
    """
    real = decision.shape
    if inst.polygons is not None:
        sy, sx = decision.scale or (1.0, 1.0)
        polygons = []
        for xy in inst.polygons:
            scaled = np.empty_like(xy)
            scaled[0::2], scaled[1::2] = xy[0::2] * sx, xy[1::2] * sy
            polygons.append(scaled.tolist())
        counts = _decode_rle_string(_polygon_counts(polygons, real))
        return _runs_to_flat(counts, real)
    flat = inst.declared_flat
    assert flat is not None, "an instance has polygons or RLE pixels"
    if real == declared:
        return flat
    if decision.scale is not None:
        return _resample_flat(flat, declared, real)
    return _crop_flat(flat, declared, real)


def _declared_size(
    source: Path, image: dict, name: str, image_path: Path | None
) -> tuple[int, int]:
    """(rows, cols) the file declares for an image; the image's own size if it declares none."""
    if "width" in image and "height" in image:
        declared = (
            _as_int(source, image["height"], f"image {name} height"),
            _as_int(source, image["width"], f"image {name} width"),
        )
        if min(declared) <= 0:
            raise InputError(
                f"image {name}: size {declared[1]}x{declared[0]} is empty", source=source
            )
        return declared
    if image_path is not None:
        return image_shape(image_path)
    raise InputError(f"image {name} has no width/height and the image was not found", source=source)


def _parse_entry(
    source: Path, what: str, ann: dict, class_id: int, declared: tuple[int, int]
) -> tuple[np.ndarray, int, float] | _Instance:
    """Validate one annotation (declared grid): a box row (xywh, class, score) or an instance."""
    score = ann.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
        raise InputError(f"{what}: score must be a number, got {score!r}", source=source)
    score = math.nan if score is None else float(score)
    bbox = None
    if ann.get("bbox") is not None:
        bbox = _as_floats(source, ann["bbox"], f"{what}: bbox")
        if len(bbox) != 4:
            raise InputError(f"{what}: bbox needs 4 numbers, got {len(bbox)}", source=source)
        check_box_inside(source, bbox, declared, what)
    attributes: dict[str, Any] = (
        ann["attributes"] if isinstance(ann.get("attributes"), dict) else {}
    )
    segmentation = ann.get("segmentation")
    has_segmentation = segmentation not in (None, [], {})
    # our own files say what each entry is; others: no segmentation, or the bbox as polygon
    is_box = bool(attributes.get("box_only")) or (
        "instance_id" not in attributes
        and (
            not has_segmentation
            or (isinstance(segmentation, list) and _is_box_polygon(segmentation, bbox))
        )
    )
    if not is_box:
        inst = _Instance(
            what,
            _instance_geometry(source, what, segmentation, declared),
            class_id,
            score,
            attributes,
        )
        if bbox is not None:  # where the file says the object is counts too
            inst.extent = (
                max(inst.extent[0], bbox[1] + bbox[3]),
                max(inst.extent[1], bbox[0] + bbox[2]),
            )
        return inst
    if bbox is None:
        if not has_segmentation:
            raise InputError(f"{what}: neither segmentation nor bbox", source=source)
        if not isinstance(segmentation, list):
            raise InputError(f"{what}: a box needs a bbox or a polygon", source=source)
        xy = _as_floats(source, segmentation[0], f"{what}: polygon").reshape(-1, 2)
        x0, y0 = xy.min(axis=0)
        x1, y1 = xy.max(axis=0)
        bbox = np.array([x0, y0, x1 - x0, y1 - y0])
        check_box_inside(source, bbox, declared, what)
    return bbox, class_id, score


def _extent(reaches: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """(max y, max x) over the objects' (y, x) reaches; (0, 0) when there are none."""
    if not reaches:
        return 0.0, 0.0
    far = np.asarray(reaches, dtype=np.float64).max(axis=0)
    return float(far[0]), float(far[1])


def _read_image_annotations(
    source: Path,
    image: dict,
    entries: list[tuple[int, dict]],
    class_set: ClassSet,
    category_to_class: dict[int, int],
    folders: list[Path],
    size_mismatch: SizeMismatch,
) -> Annotation:
    image_id = image["id"]
    name = str(image.get("file_name", ""))
    if not name:
        raise InputError(f"image id {image_id} has no file_name", source=source)
    image_path = find_image(name, folders)
    if image_path is None:
        log.debug("%s: image %s not found in %s", source, name, folders)
    declared = _declared_size(source, image, name, image_path)

    # validate everything in the declared grid before touching pixels
    box_rows: list[tuple[np.ndarray, int, float]] = []
    instances: list[_Instance] = []
    for index, ann in entries:
        what = f"annotation {ann.get('id', index)} (image {name})"
        parsed = _parse_entry(source, what, ann, category_to_class[ann["category_id"]], declared)
        if isinstance(parsed, _Instance):
            instances.append(parsed)
        else:
            box_rows.append(parsed)

    extent = _extent(
        [(b[1] + b[3], b[0] + b[2]) for b, _, _ in box_rows] + [i.extent for i in instances]
    )
    decision = resolve_image_size(
        source, name, image_path, declared, extent, size_mismatch=size_mismatch
    )
    for inst in instances:
        inst.flat = _instance_pixels(inst, declared, decision)
    labels, ids, kept = paint_objects(
        [inst.flat for inst in instances],
        [inst.given_id for inst in instances],
        [inst.score for inst in instances],
        decision.shape,
    )

    classes, scores, origins = {}, {}, {}
    hidden, empty = [], []
    for iid, inst in zip(ids, instances):
        if inst.flat.size == 0:
            empty.append(iid)
        elif kept[iid] == 0:
            hidden.append(iid)
        else:
            classes[iid] = inst.class_id
            if not math.isnan(inst.score):
                scores[iid] = inst.score
            if inst.origin is not None:
                origins[iid] = inst.origin
    if hidden:
        warnings.warn(
            f"{source}: image {name}: {len(hidden)} object(s) completely hidden by overlapping "
            f"objects (ids {hidden[:10]})",
            UserWarning,
            stacklevel=3,
        )
    if empty:
        warnings.warn(
            f"{source}: image {name}: {len(empty)} object(s) cover no pixel (ids {empty[:10]})",
            UserWarning,
            stacklevel=3,
        )

    boxes = Boxes(
        np.array([b for b, _, _ in box_rows], dtype=np.float64).reshape(-1, 4),
        np.array([c for _, c, _ in box_rows], dtype=np.int32),
        np.array([s for _, _, s in box_rows], dtype=np.float64),
    )
    meta: dict[str, Any] = {
        "source": str(source),
        "coco_image_id": image_id,
        "declared_size": declared,
        "hidden_objects": len(hidden),
    }
    if empty:
        meta["empty_objects"] = len(empty)
    if decision.scale is not None:
        boxes = boxes.scaled(decision.scale[1], decision.scale[0])
    meta.update(decision.meta(declared))
    return Annotation(
        labels=labels,
        class_set=class_set,
        classes=classes,
        scores=scores,
        origins=origins,
        boxes=boxes,
        image_name=name,
        image_path=image_path,
        meta=meta,
    )


def read_coco(
    path: PathLike,
    *,
    images_dir: PathLike | None = None,
    class_set: ClassSet | None = None,
    size_mismatch: SizeMismatch = "auto",
) -> list[Annotation]:
    """Read a COCO instances file into one :class:`Annotation` per image.

    Parameters
    ----------
    path
        The COCO ``.json`` file.
    images_dir
        Where the images are, when not beside the file or in an ``images/`` folder next to it.
        Found images set ``image_path``, and their real size wins over the declared size.
    class_set
        Map category names onto this set (case-insensitive). By default the categories, sorted
        by id, make the class set (a built-in set such as ``net4`` when the names match).
    size_mismatch
        When a found image's size differs from the declared one: ``"auto"`` keeps the
        coordinates as image pixels when every object lies inside the image, and rescales them
        by real / declared otherwise; ``"keep"`` or ``"rescale"`` force the choice. Always
        with a warning (see :func:`resolve_image_size`).

    Returns
    -------
    list of Annotation
        In the order of the file's ``images``. ``meta`` holds ``source``, ``coco_image_id``,
        ``declared_size`` (rows, cols), ``hidden_objects``; when the image's real size differed,
        ``size_mismatch`` (``"kept"`` or ``"rescaled"``) and, when rescaled, ``rescaled_from``
        (rows, cols) and ``scale`` (sy, sx).

    Raises
    ------
    InputError
        Unreadable or non-COCO JSON, references to missing images or categories, unknown
        category names, boxes or polygons outside the image, malformed segmentations.
    """
    size_mismatch = check_size_mismatch(size_mismatch)
    source = Path(path)
    data = _load_json(source)
    class_set, category_to_class = _category_map(source, data["categories"], class_set)

    images: dict[int, dict] = {}
    for image in data["images"]:
        if "id" not in image:
            raise InputError(f"image without id: {str(image)[:80]}", source=source)
        image_id = _as_int(source, image["id"], "image id")
        if image_id in images:
            raise InputError(f"image id {image_id} appears twice", source=source)
        images[image_id] = image

    per_image: dict[int, list[tuple[int, dict]]] = {i: [] for i in images}
    for index, ann in enumerate(data["annotations"]):
        what = f"annotation {ann.get('id', index)}"
        image_id = ann.get("image_id")
        if image_id not in per_image:
            raise InputError(
                f"{what} refers to image id {image_id!r}, which is not in images", source=source
            )
        if ann.get("category_id") not in category_to_class:
            raise InputError(
                f"{what} refers to category id {ann.get('category_id')!r}, "
                "which is not in categories",
                source=source,
            )
        per_image[image_id].append((index, ann))

    folders = search_dirs(source, images_dir)
    return [
        _read_image_annotations(
            source,
            images[i],
            per_image[i],
            class_set,
            category_to_class,
            folders,
            size_mismatch,
        )
        for i in images
    ]

"""Counts per class and the figures derived from them, as one tidy table.

The table has one row per (image, group, name) with the figure before and after correction:

``count``
    Objects per class (instances plus boxes), ``total`` and, when some objects have no
    class, ``unclassified``.
``percent``
    Each class as a share of all objects (for ``blood3``: the RBC / WBC / platelet shares).
``wbc_differential`` (``blood10``)
    The 5-part differential: each WBC class as a share of all WBCs.
``parasitaemia`` (``blood10``)
    Infected RBCs as a share of all RBCs (infected + healthy).
``net_percent`` (``net4``)
    NETs as a share of all cells (NET, dead, unstimulated, decondensed).
``net_area`` (``net-area``)
    The pixels NET regions cover, their share of the field and, with a pixel size, um^2.
``density``
    Objects per mm^2 of image, per class and in total, when the pixel size is known.

Shares whose denominator is zero are NaN (an empty cell in the CSV), never 0.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .annotation import Annotation
from .classes import ClassSet

#: Columns of the count table, in order.
COLUMNS: tuple[str, ...] = ("image", "group", "name", "before", "after", "unit")

#: Classes that are areas rather than cells, and the group of their area figures.
AREA_CLASSES: dict[str, str] = {"net_region": "net_area"}
#: The white blood cell classes of ``blood10``, in the order of a 5-part differential.
WBC_CLASSES: tuple[str, ...] = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")
RBC_CLASSES: tuple[str, ...] = ("infected_rbc", "healthy_rbc")
NET_CELL_CLASSES: tuple[str, ...] = ("NET", "dead", "unstimulated", "decondensed")

Row = dict[str, object]


def instance_class_totals(
    labels: np.ndarray,
    label_ids: np.ndarray | Sequence[int],
    class_ids: np.ndarray | Sequence[int],
    n_classes: int,
    *,
    default_class: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Objects and pixels per class id in an instance image, from one count of each id's
    pixels.

    Parameters
    ----------
    labels
        Instance image (0 background).
    label_ids, class_ids
        The class of each listed id (e.g. a layer's features ``index`` and ``class``); ids
        present but not listed count as ``default_class``; a class outside ``1..n_classes``
        counts as 0.
    n_classes
        Number of classes.
    default_class
        Class of ids present but not listed (e.g. painted without a features row).

    Returns
    -------
    objects, pixels
        ``(n_classes + 1,)`` int64 each: entry 0 is unclassified objects (their pixels).
    """
    flat = np.asarray(labels).ravel()
    if flat.size == 0:
        return np.zeros(n_classes + 1, dtype=np.int64), np.zeros(n_classes + 1, dtype=np.int64)
    if flat.dtype.itemsize > 4 or (flat.dtype.kind == "u" and flat.dtype.itemsize == 4):
        flat = flat.astype(np.int64, copy=False)
    pixels = id_pixels(flat)
    pixels[0] = 0  # background
    lookup = np.full(pixels.size, int(default_class), dtype=np.int64)
    label_ids = np.asarray(label_ids, dtype=np.int64).ravel()
    class_ids = np.asarray(class_ids, dtype=np.int64).ravel()
    inside = (label_ids > 0) & (label_ids < pixels.size)
    lookup[label_ids[inside]] = class_ids[inside]
    lookup[(lookup < 0) | (lookup > n_classes)] = 0
    present = pixels > 0
    objects = np.bincount(lookup[present], minlength=n_classes + 1)[: n_classes + 1]
    area = np.bincount(lookup[present], weights=pixels[present], minlength=n_classes + 1)[
        : n_classes + 1
    ]
    return objects, np.rint(area).astype(np.int64)


def instance_class_counts(
    labels: np.ndarray,
    label_ids: np.ndarray | Sequence[int],
    class_ids: np.ndarray | Sequence[int],
    n_classes: int,
    *,
    default_class: int = 0,
) -> np.ndarray:
    """Objects per class id (see :func:`instance_class_totals`); entry 0: unclassified."""
    return instance_class_totals(
        labels, label_ids, class_ids, n_classes, default_class=default_class
    )[0]


#: pixels per ``np.bincount`` call in :func:`id_pixels`
_CHUNK = 1 << 20


def id_pixels(flat: np.ndarray) -> np.ndarray:
    """``(max id + 1,)`` int64: pixels of each id in ``flat`` (non-negative ints).

    Counted a megapixel at a time: ``np.bincount`` holds the interpreter lock, and over a
    12-megapixel result in one call it stalled napari's GUI thread for 0.3 s while a
    worker thread post-processed.
    """
    top = int(flat.max(initial=0))
    pixels = np.zeros(top + 1, dtype=np.int64)
    for start in range(0, flat.size, _CHUNK):
        pixels += np.bincount(flat[start : start + _CHUNK], minlength=top + 1)
    return pixels


def box_class_counts(class_ids: np.ndarray | Sequence[int], n_classes: int) -> np.ndarray:
    """Boxes per class id, ``(n_classes + 1,)`` with entry 0 for boxes of no known class."""
    ids = np.asarray(class_ids, dtype=np.int64).ravel()
    ids = np.where((ids < 1) | (ids > n_classes), 0, ids)
    return np.bincount(ids, minlength=n_classes + 1)


def annotation_class_counts(annotation: Annotation) -> np.ndarray:
    """Objects (instances plus boxes) per class id of an annotation, entry 0 unclassified."""
    n = len(annotation.class_set)
    ids = np.fromiter(annotation.classes.keys(), dtype=np.int64, count=len(annotation.classes))
    cls = np.fromiter(annotation.classes.values(), dtype=np.int64, count=len(annotation.classes))
    return instance_class_counts(annotation.labels, ids, cls, n) + box_class_counts(
        annotation.boxes.class_ids, n
    )


def counts_by_name(class_set: ClassSet, counts: np.ndarray) -> dict[str, int]:
    """``{class name: count}`` for every class (and ``unclassified`` when non-zero)."""
    named = {name: int(counts[i + 1]) for i, name in enumerate(class_set.names)}
    if counts[0]:
        named["unclassified"] = int(counts[0])
    return named


def image_area_mm2(shape: Sequence[int], pixel_size_um: Sequence[float] | float) -> float:
    """Area in mm^2 of an image of ``shape`` (rows, columns) with pixels of ``pixel_size_um``."""
    size = np.broadcast_to(np.asarray(pixel_size_um, dtype=np.float64), (2,))
    return float(shape[0] * size[0] * shape[1] * size[1]) / 1e6


def _share(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole else math.nan


def _area_figures(
    class_set: ClassSet,
    areas_px: Mapping[str, int] | None,
    field_px: int | None,
    area_mm2: float | None,
) -> list[tuple[str, str, float, str]]:
    """Pixels, share of the field and um^2 of each area class (NaN when not measured)."""
    out: list[tuple[str, str, float, str]] = []
    for name, group in AREA_CLASSES.items():
        if name not in class_set.names:
            continue
        px = float(areas_px.get(name, 0)) if areas_px is not None else math.nan
        out.append((group, "pixels", px, "px"))
        out.append((group, "field_share", _share(px, field_px or 0), "% of field"))
        if area_mm2 and field_px:
            out.append((group, "area", px * area_mm2 * 1e6 / field_px, "um^2"))
    return out


def _figures(
    class_set: ClassSet, counts: Mapping[str, int], area_mm2: float | None
) -> list[tuple[str, str, float, str]]:
    """``(group, name, value, unit)`` for one set of counts."""
    names = list(class_set.names) + (["unclassified"] if "unclassified" in counts else [])
    total = sum(counts.get(n, 0) for n in names)
    out: list[tuple[str, str, float, str]] = []
    out += [("count", n, float(counts.get(n, 0)), "objects") for n in names]
    out.append(("count", "total", float(total), "objects"))
    out += [("percent", n, _share(counts.get(n, 0), total), "%") for n in names]
    lowered = {n.lower() for n in class_set.names}
    if {c.lower() for c in WBC_CLASSES} <= lowered:
        wbc = sum(counts.get(n, 0) for n in WBC_CLASSES)
        out += [
            ("wbc_differential", n, _share(counts.get(n, 0), wbc), "% of WBC") for n in WBC_CLASSES
        ]
    if {c.lower() for c in RBC_CLASSES} <= lowered:
        rbc = sum(counts.get(n, 0) for n in RBC_CLASSES)
        out.append(
            ("parasitaemia", "infected_rbc", _share(counts.get("infected_rbc", 0), rbc), "% of RBC")
        )
    if {c.lower() for c in NET_CELL_CLASSES} <= lowered:
        cells = sum(counts.get(n, 0) for n in NET_CELL_CLASSES)
        out.append(("net_percent", "NET", _share(counts.get("NET", 0), cells), "% of cells"))
    if area_mm2:
        out += [("density", n, counts.get(n, 0) / area_mm2, "per mm^2") for n in names]
        out.append(("density", "total", total / area_mm2, "per mm^2"))
    return out


def count_table(
    image: str,
    class_set: ClassSet,
    after: Mapping[str, int],
    before: Mapping[str, int] | None = None,
    *,
    area_mm2: float | None = None,
    areas_px: Mapping[str, int] | None = None,
    field_px: int | None = None,
) -> list[Row]:
    """The tidy count table of one image (see the module docstring for the groups).

    Parameters
    ----------
    image
        Image name for the ``image`` column.
    class_set
        The classes counted.
    after
        ``{class name: count}`` now (after correction); ``unclassified`` may appear.
    before
        The same before correction (as the model or file gave them); ``None``: unknown, the
        ``before`` column is NaN.
    area_mm2
        Image area, for densities.
    areas_px, field_px
        Pixels covered per area class (:data:`AREA_CLASSES`, now) and the image's pixels,
        for the area figures; the ``before`` column of those is NaN.

    Returns
    -------
    list of dict
        Rows with the keys of :data:`COLUMNS`.
    """
    before_map = dict(before) if before is not None else None
    if before_map is not None and "unclassified" in before_map and "unclassified" not in after:
        after = {**after, "unclassified": 0}
    if before_map is not None and "unclassified" in after and "unclassified" not in before_map:
        before_map["unclassified"] = 0
    now = _figures(class_set, after, area_mm2) + _area_figures(
        class_set, areas_px, field_px, area_mm2
    )
    then = None
    if before_map is not None:
        then = _figures(class_set, before_map, area_mm2) + _area_figures(
            class_set, None, field_px, area_mm2
        )
    rows: list[Row] = []
    for k, (group, name, value, unit) in enumerate(now):
        rows.append(
            {
                "image": image,
                "group": group,
                "name": name,
                "before": then[k][2] if then is not None else math.nan,
                "after": value,
                "unit": unit,
            }
        )
    return rows


def quantify_annotation(
    annotation: Annotation,
    *,
    before: Mapping[str, int] | None = None,
    pixel_size_um: Sequence[float] | float | None = None,
) -> list[Row]:
    """:func:`count_table` of an annotation's instances and boxes (and the pixels of its
    area classes); the pixel size defaults to the one the image recorded
    (``meta["pixel_size_um"]``)."""
    class_set = annotation.class_set
    if pixel_size_um is None:
        pixel_size_um = annotation.meta.get("pixel_size_um")
    ids = np.fromiter(annotation.classes.keys(), dtype=np.int64, count=len(annotation.classes))
    cls = np.fromiter(annotation.classes.values(), dtype=np.int64, count=len(annotation.classes))
    objects, pixels = instance_class_totals(annotation.labels, ids, cls, len(class_set))
    counts = counts_by_name(
        class_set, objects + box_class_counts(annotation.boxes.class_ids, len(class_set))
    )
    area = image_area_mm2(annotation.shape, pixel_size_um) if pixel_size_um else None
    areas = (
        counts_by_name(class_set, pixels)
        if any(name in class_set.names for name in AREA_CLASSES)
        else None
    )
    return count_table(
        annotation.image_name,
        class_set,
        counts,
        before,
        area_mm2=area,
        areas_px=areas,
        field_px=int(np.prod(annotation.shape)),
    )


def figure_rows(
    annotation: Annotation, *, pixel_size_um: Sequence[float] | float | None = None
) -> list[dict[str, object]]:
    """The figures derived from an annotation's objects, without the plain counts:
    ``{image, group, name, value, unit}`` rows (``core.io.counts.write_figures_csv``)."""
    return [
        {
            "image": row["image"],
            "group": row["group"],
            "name": row["name"],
            "value": row["after"],
            "unit": row["unit"],
        }
        for row in quantify_annotation(annotation, pixel_size_um=pixel_size_um)
        if row["group"] != "count"
    ]


def table_to_csv(rows: Sequence[Row]) -> str:
    """The rows as CSV text (columns :data:`COLUMNS`; NaN as an empty cell)."""
    from .io.counts import csv_text

    return csv_text(COLUMNS, rows)


def table_to_tsv(rows: Sequence[Row]) -> str:
    """The rows tab-separated, as spreadsheets paste them from the clipboard."""
    lines = ["\t".join(COLUMNS)]
    from .io.counts import csv_cell

    lines += ["\t".join(str(csv_cell(row.get(c, ""))) for c in COLUMNS) for row in rows]
    return "\n".join(lines) + "\n"


def write_count_table(
    rows: Sequence[Row], path: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write the table as CSV, atomically; an existing file is refused unless ``overwrite``.

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is false.
    OutputError
        The file could not be written.
    """
    from .io.counts import write_rows_csv

    return write_rows_csv(COLUMNS, rows, path, overwrite=overwrite)


__all__ = [
    "AREA_CLASSES",
    "COLUMNS",
    "NET_CELL_CLASSES",
    "RBC_CLASSES",
    "WBC_CLASSES",
    "annotation_class_counts",
    "box_class_counts",
    "count_table",
    "counts_by_name",
    "figure_rows",
    "image_area_mm2",
    "instance_class_counts",
    "instance_class_totals",
    "quantify_annotation",
    "table_to_csv",
    "table_to_tsv",
    "write_count_table",
]

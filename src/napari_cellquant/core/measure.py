"""Per-object measurements: the table QuPath users export first, from scikit-image.

One row per object of an annotation (instances; box-only objects get their box's centre and
area and no shape figures): ``id``, ``class``, ``score``, ``origin``, centroid, area in px
(and µm² with a pixel size), perimeter, eccentricity, solidity, equivalent diameter and the
mean intensity of each image channel. Shapes come from ``skimage.measure.regionprops_table``
in one pass over the label image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .annotation import Annotation

#: the columns of :func:`object_table`, in order (``mean_intensity_<c>`` per channel follow)
OBJECT_COLUMNS: tuple[str, ...] = (
    "image",
    "id",
    "class",
    "score",
    "origin",
    "centroid_x",
    "centroid_y",
    "area_px",
    "area_um2",
    "perimeter_px",
    "eccentricity",
    "solidity",
    "equivalent_diameter_px",
)
#: the columns of :func:`object_table` that say which object a row is
IDENTITY_COLUMNS: tuple[str, ...] = OBJECT_COLUMNS[:5]
_SHAPES = (
    "label",
    "centroid",
    "area",
    "perimeter",
    "eccentricity",
    "solidity",
    "equivalent_diameter_area",
)


def measure_objects(
    annotation: Annotation,
    image: np.ndarray | None = None,
    *,
    pixel_size_um: float | Sequence[float] | None = None,
) -> dict[str, np.ndarray]:
    """The table of the module docstring as columns (:data:`OBJECT_COLUMNS`, then
    ``mean_intensity_<c>`` per channel of ``image``): instances in id order, then boxes.

    The pixel size defaults to the one the image recorded (``meta["pixel_size_um"]``);
    ``area_um2`` and ``score`` are NaN where undefined, as in napari's features tables.
    """
    from skimage.measure import regionprops_table

    if pixel_size_um is None:
        pixel_size_um = annotation.meta.get("pixel_size_um")
    um2_per_px = math.nan
    if pixel_size_um is not None:
        size = np.broadcast_to(np.asarray(pixel_size_um, dtype=np.float64), (2,))
        um2_per_px = float(size[0] * size[1])
    channels = _channels(image, annotation.shape)
    n_channels = 0 if channels is None else channels.shape[-1]
    props: dict[str, np.ndarray] = {"label": np.zeros(0, dtype=np.int64)}
    if annotation.labels.any():
        props = regionprops_table(
            annotation.labels,
            intensity_image=channels,
            properties=(*_SHAPES, *(("intensity_mean",) if channels is not None else ())),
        )
    ids = np.asarray(props["label"], dtype=np.int64)
    boxes = annotation.boxes
    n_boxes = len(boxes)
    x, y, w, h = boxes.xywh.T
    names = np.array(["", *annotation.class_set.names], dtype=object)
    class_ids = np.array([annotation.classes.get(int(i), 0) for i in ids], dtype=np.int64)
    nan_boxes = np.full(n_boxes, np.nan)

    def column(key: str) -> np.ndarray:
        return np.concatenate(
            [np.asarray(props.get(key, np.zeros(0)), dtype=np.float64), nan_boxes]
        )

    area = np.concatenate([np.asarray(props.get("area", np.zeros(0)), dtype=np.float64), w * h])
    columns: dict[str, np.ndarray] = {
        "image": np.full(len(ids) + n_boxes, annotation.image_name, dtype=object),
        "id": np.concatenate([ids, int(annotation.labels.max(initial=0)) + 1 + np.arange(n_boxes)]),
        "class": names[np.concatenate([class_ids, boxes.class_ids])],
        "score": np.concatenate(
            [[annotation.scores.get(int(i), np.nan) for i in ids], boxes.scores]
        ).astype(np.float64),
        "origin": np.array(
            [annotation.origins.get(int(i), "file") for i in ids] + ["box"] * n_boxes, dtype=object
        ),
        "centroid_x": np.concatenate([column("centroid-1")[: len(ids)], x + w / 2]),
        "centroid_y": np.concatenate([column("centroid-0")[: len(ids)], y + h / 2]),
        "area_px": area,
        "area_um2": area * um2_per_px,
        "perimeter_px": column("perimeter"),
        "eccentricity": column("eccentricity"),
        "solidity": column("solidity"),
        "equivalent_diameter_px": column("equivalent_diameter_area"),
    }
    for c in range(n_channels):  # the intensity image always has a channel axis
        columns[f"mean_intensity_{c}"] = column(f"intensity_mean-{c}")
    return columns


def measurements(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The columns of :func:`measure_objects` that measure an object (centroid, area, shape,
    intensities), without those saying which object it is (:data:`IDENTITY_COLUMNS`)."""
    return {k: v for k, v in columns.items() if k not in IDENTITY_COLUMNS}


def object_table(
    annotation: Annotation,
    image: np.ndarray | None = None,
    *,
    pixel_size_um: float | Sequence[float] | None = None,
) -> list[dict[str, object]]:
    """:func:`measure_objects` as one dict per object, undefined values as None (CSV)."""
    return object_rows(measure_objects(annotation, image, pixel_size_um=pixel_size_um))


def object_rows(columns: dict[str, np.ndarray]) -> list[dict[str, object]]:
    """Columns of :func:`measure_objects` as one dict per object, NaN as None."""
    values = [
        [None if isinstance(v, float) and math.isnan(v) else v for v in col.tolist()]
        for col in columns.values()
    ]
    return [dict(zip(columns, row, strict=True)) for row in zip(*values, strict=True)]


def object_columns(rows: Sequence[dict[str, object]]) -> list[str]:
    """:data:`OBJECT_COLUMNS` and the intensity columns the rows have."""
    extra = sorted(
        {k for row in rows for k in row if k.startswith("mean_intensity_")},
        key=lambda k: int(k.rsplit("_", 1)[1]),
    )
    return [*OBJECT_COLUMNS, *extra]


def _channels(image: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray | None:
    """``image`` as ``(H, W, C)`` float32 when it fits ``shape``, else None."""
    if image is None:
        return None
    pixels = np.asarray(image)
    if pixels.shape[:2] != tuple(shape):
        return None
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    return pixels.astype(np.float32, copy=False)


__all__ = [
    "IDENTITY_COLUMNS",
    "OBJECT_COLUMNS",
    "measure_objects",
    "measurements",
    "object_columns",
    "object_rows",
    "object_table",
]

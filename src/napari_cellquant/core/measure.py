"""Per-object measurements: the table QuPath users export first, from scikit-image.

One row per object of an annotation (instances; box-only objects get their box's centre and
area and no shape figures): ``id``, ``class``, ``score``, ``origin``, centroid, area in px
(and µm² with a pixel size), perimeter, eccentricity, solidity, equivalent diameter and the
mean intensity of each image channel. Shapes come from ``skimage.measure.regionprops_table``
in one pass over the label image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .annotation import Annotation

#: the columns of :func:`object_table`, in order (``mean_intensity_<c>`` per channel follow)
OBJECT_COLUMNS: tuple[str, ...] = (
    "image", "id", "class", "score", "origin", "centroid_x", "centroid_y", "area_px",
    "area_um2", "perimeter_px", "eccentricity", "solidity", "equivalent_diameter_px",
)
_SHAPES = ("label", "centroid", "area", "perimeter", "eccentricity", "solidity",
           "equivalent_diameter_area")


def object_table(annotation: Annotation, image: np.ndarray | None = None, *,
                 pixel_size_um: float | Sequence[float] | None = None) -> list[dict[str, object]]:
    """One row per object (see the module docstring); ``image`` adds mean intensities."""
    from skimage.measure import regionprops_table

    names = annotation.class_set.names
    area_um2 = None
    if pixel_size_um is not None:
        size = np.broadcast_to(np.asarray(pixel_size_um, dtype=np.float64), (2,))
        area_um2 = float(size[0] * size[1])
    channels = _channels(image, annotation.shape)
    rows: list[dict[str, object]] = []
    labels = annotation.labels
    if labels.any():
        props = regionprops_table(labels, intensity_image=channels, properties=(
            *_SHAPES, *(("intensity_mean",) if channels is not None else ())))
        n_channels = 0 if channels is None else channels.shape[-1]
        for k, label in enumerate(props["label"].tolist()):
            class_id = annotation.classes.get(label, 0)
            row: dict[str, object] = {
                "image": annotation.image_name, "id": label,
                "class": names[class_id - 1] if class_id else "",
                "score": annotation.scores.get(label), "origin": annotation.origins.get(
                    label, "file"),
                "centroid_x": float(props["centroid-1"][k]),
                "centroid_y": float(props["centroid-0"][k]),
                "area_px": int(props["area"][k]),
                "area_um2": props["area"][k] * area_um2 if area_um2 else None,
                "perimeter_px": float(props["perimeter"][k]),
                "eccentricity": float(props["eccentricity"][k]),
                "solidity": float(props["solidity"][k]),
                "equivalent_diameter_px": float(props["equivalent_diameter_area"][k]),
            }
            for c in range(n_channels):  # the intensity image always has a channel axis
                row[f"mean_intensity_{c}"] = float(props[f"intensity_mean-{c}"][k])
            rows.append(row)
    first_box_id = int(labels.max(initial=0)) + 1
    for j, ((x, y, w, h), class_id, score) in enumerate(zip(
            annotation.boxes.xywh.tolist(), annotation.boxes.class_ids.tolist(),
            annotation.boxes.scores.tolist())):
        rows.append({"image": annotation.image_name, "id": first_box_id + j,
                     "class": names[class_id - 1] if class_id else "", "score": score,
                     "origin": "box", "centroid_x": x + w / 2, "centroid_y": y + h / 2,
                     "area_px": w * h, "area_um2": w * h * area_um2 if area_um2 else None})
    return rows


def object_columns(rows: Sequence[dict[str, object]]) -> list[str]:
    """:data:`OBJECT_COLUMNS` and the intensity columns the rows have."""
    extra = sorted({k for row in rows for k in row if k.startswith("mean_intensity_")},
                   key=lambda k: int(k.rsplit("_", 1)[1]))
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


__all__ = ["OBJECT_COLUMNS", "object_columns", "object_table"]

"""Annotations <-> napari layer data, as pure functions (no napari import).

The reader, the sample data, the widgets and the writers all turn Annotations into layers and
back through this module, so a file, a sample and a model result look the same in napari and
write back the same way.

Layers made here:

``<name> instances``
    A Labels layer. Its ``features`` table has one row per instance with an ``index`` column
    holding the label value: napari (0.9) maps a label to its feature row through ``index``
    when that column exists (otherwise row ``i`` would describe label ``i``, which breaks for
    sparse ids), so hovering a cell shows its ``class_name``, ``score`` and ``origin``, and
    napari's features table widget shows its measurements (the columns of
    :func:`~napari_cellquant.core.measure.measure_objects`: centroid, area in px and µm²,
    perimeter, eccentricity, solidity, equivalent diameter, mean intensity per channel). Its
    ``colormap`` is a ``{label: RGBA}`` dict coloured by class (napari turns a mapping into a
    ``DirectLabelColormap``): background transparent, labels without a class (painted later)
    in the default class colour.
``<name> boxes``
    A Shapes layer of rectangles (vertices in (row, column) order), edges in the class colour,
    faces transparent, ``class_name`` shown as text, features ``class``, ``class_name`` and
    ``score``.

Both carry, in ``metadata``, the class set (:data:`META_CLASS_SET`), the image file name
(:data:`META_IMAGE_NAME`) and the image shape, so writing them back is lossless.

Coordinates: an Annotation's boxes are COCO-style ``x, y, w, h`` where pixel ``i`` spans
``[i, i + 1)``; napari puts pixel centres on integers (pixel ``i`` spans
``[i - 0.5, i + 0.5)``), so rectangles are shifted by half a pixel both ways.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .core.annotation import ORIGINS, Annotation, Boxes
from .core.classes import CELL, CLASS_SETS, ClassSet
from .core.errors import InputError

#: ``(data, kwargs, layer_type)`` as napari readers and sample functions return them.
LayerDataTuple = tuple[Any, dict[str, Any], str]

#: Layer metadata key of the class set: ``{"name": str, "names": [...], "colors": [[r,g,b]...]}``.
META_CLASS_SET = "cellquant_class_set"
#: Layer metadata key of the image file name the layer annotates (COCO ``file_name``).
META_IMAGE_NAME = "cellquant_image_name"
#: Layer metadata key of the annotated image's (rows, columns).
META_IMAGE_SHAPE = "cellquant_image_shape"
#: Layer metadata key of the class id given to labels that have no feature row.
META_DEFAULT_CLASS = "cellquant_default_class"
#: Layer metadata key of the correction log: a list of plain dicts, one per edit.
META_CORRECTIONS = "cellquant_corrections"
#: Layer metadata key of ``{class name: count}`` of the layer's objects when it was made.
META_INITIAL_COUNTS = "cellquant_initial_counts"

INSTANCES_SUFFIX = " instances"
BOXES_SUFFIX = " boxes"

_TRANSPARENT = (0.0, 0.0, 0.0, 0.0)


# --- class sets in layer metadata ------------------------------------------------------------
def class_set_to_metadata(class_set: ClassSet) -> dict[str, Any]:
    """The class set as plain JSON-able data for layer ``metadata``."""
    return {
        "name": class_set.name,
        "names": list(class_set.names),
        "colors": [list(c) for c in class_set.colors],
    }


def class_set_from_metadata(value: Any) -> ClassSet | None:
    """The class set stored by :func:`class_set_to_metadata` (or a ClassSet / built-in name).

    Returns ``None`` when ``value`` is missing; a built-in set is returned as itself when its
    names match, so identity comparisons elsewhere keep working.
    """
    if value is None:
        return None
    if isinstance(value, ClassSet):
        return value
    if isinstance(value, str):
        return CLASS_SETS.get(value.lower())
    if isinstance(value, Mapping) and "names" in value:
        names = tuple(str(n) for n in value["names"])
        builtin = CLASS_SETS.get(str(value.get("name", "")).lower())
        if builtin is not None and builtin.names == names:
            return builtin
        colors = tuple(tuple(int(v) for v in c[:3]) for c in value.get("colors", ()))
        if len(colors) != len(names):
            colors = tuple((255, 200, 0) for _ in names)
        return ClassSet(name=str(value.get("name", "custom")), names=names, colors=colors)
    return None


def class_rgba(class_set: ClassSet, class_id: int, alpha: float = 1.0) -> tuple[float, ...]:
    """RGBA (0-1 floats) of a class; a neutral grey for class 0 (no class)."""
    if class_id == 0:
        return (0.7, 0.7, 0.7, alpha)
    r, g, b = class_set.color_of(class_id)
    return (r / 255.0, g / 255.0, b / 255.0, alpha)


def labels_colormap(
    annotation: Annotation, *, default_class: int = 1
) -> dict[int | None, tuple[float, ...]]:
    """``{label: RGBA}`` colouring every instance by its class, for a Labels ``colormap``.

    Key ``0`` (background) is transparent; key ``None`` (any label not listed, e.g. one just
    painted) gets the colour of ``default_class``.
    """
    cs = annotation.class_set
    colormap: dict[int | None, tuple[float, ...]] = {
        None: class_rgba(cs, default_class),
        0: _TRANSPARENT,
    }
    for label in annotation.instance_ids():
        colormap[int(label)] = class_rgba(cs, annotation.class_of(int(label)))
    return colormap


# --- boxes <-> rectangles --------------------------------------------------------------------
def boxes_to_rectangles(boxes: Boxes) -> list[np.ndarray]:
    """One ``(4, 2)`` array of (row, column) corners per box, in napari pixel coordinates."""
    if not len(boxes):
        return []
    x, y, w, h = (boxes.xywh[:, k] for k in range(4))
    top, left = y - 0.5, x - 0.5
    bottom, right = top + h, left + w
    corners = np.stack(
        [
            np.stack([top, left], axis=1),
            np.stack([top, right], axis=1),
            np.stack([bottom, right], axis=1),
            np.stack([bottom, left], axis=1),
        ],
        axis=1,
    )
    return list(corners)


def rectangles_to_xywh(vertices: Sequence[np.ndarray]) -> np.ndarray:
    """``(n, 4)`` COCO ``x, y, w, h`` of the bounding box of each shape's (row, col) vertices."""
    if not len(vertices):
        return np.zeros((0, 4))
    lows = np.array([np.min(np.asarray(v)[:, -2:], axis=0) for v in vertices])
    highs = np.array([np.max(np.asarray(v)[:, -2:], axis=0) for v in vertices])
    size = highs - lows
    return np.stack([lows[:, 1] + 0.5, lows[:, 0] + 0.5, size[:, 1], size[:, 0]], axis=1)


def layer_pixels(data: Any, multiscale: bool, rgb: bool, name: str = "") -> np.ndarray:
    """The full-resolution pixels of an Image layer's data as (H, W) or (H, W, C) (read in a
    worker: a dask or zarr level is computed here), leading singleton axes dropped."""
    pixels = np.asarray(data[0] if multiscale else data)
    while pixels.ndim > (3 if rgb else 2) and pixels.shape[0] == 1:
        pixels = pixels[0]
    if pixels.ndim != (3 if rgb else 2):
        raise InputError(
            f"layer {name!r} has shape {pixels.shape}: choose a 2-D grey or RGB image (split "
            "stacks into 2-D layers first)"
        )
    return pixels


def layer_pixel_size_um(layer: Any) -> tuple[float, float] | None:
    """(rows, columns) micrometres per pixel of a layer: its scale where its units are
    lengths, else what the TIFF it was opened from records (napari's own reader opens an
    ImageJ TIFF without its pixel size), else None."""
    try:
        sizes = [
            (float(s) * u).to("micrometer").magnitude
            for s, u in zip(layer.scale[-2:], layer.units[-2:], strict=True)
        ]
        return (float(sizes[0]), float(sizes[1]))
    except Exception:  # pixel (or no) units: no physical size in the layer itself
        pass
    path = getattr(getattr(layer, "source", None), "path", None)
    if not path or Path(path).suffix.lower() not in (".tif", ".tiff") or not Path(path).is_file():
        return None
    stat = Path(path).stat()
    return _recorded_pixel_size(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _recorded_pixel_size(path: str, mtime_ns: int, size: int) -> tuple[float, float] | None:
    """The pixel size a TIFF records, read once per version of the file: Count asks on every
    live recount, on the GUI thread."""
    from .core.errors import CellquantError
    from .core.io.image_metadata import read_image_metadata

    try:
        return read_image_metadata(path).pixel_size_um
    except CellquantError:
        return None


# --- Annotation -> layers ----------------------------------------------------------------------
def layer_base_name(annotation: Annotation) -> str:
    """Name stem of an annotation's layers: the image file stem, or ``cellquant``."""
    return Path(annotation.image_name).stem if annotation.image_name else "cellquant"


def annotation_to_layer_data(
    ann: Annotation,
    *,
    name: str | None = None,
    scale: Sequence[float] | None = None,
    translate: Sequence[float] | None = None,
    units: Sequence[str] | None = None,
    image: np.ndarray | None = None,
    intensity_image: np.ndarray | None = None,
) -> list[LayerDataTuple]:
    """Layer data tuples showing one annotation in napari.

    Parameters
    ----------
    ann
        The annotation.
    name
        Base layer name (default: the image file stem); layers are ``<name>``,
        ``<name> instances`` and ``<name> boxes``.
    scale, translate, units
        The image layer's scale, translate and units, carried to every layer so they overlay
        (and so the labels know their pixel size).
    image
        The image itself; when given an Image layer ``<name>`` comes first.
    intensity_image
        The pixels the measurements' mean intensities come from (default: ``image``).

    Returns
    -------
    list of (data, kwargs, layer_type)
        Image (if given), then Labels (when there are instances, or nothing at all, so
        there is a layer to paint into), then Shapes (when there are boxes). The Labels data
        is ``ann.labels`` itself, not a copy: napari paints into it, so pass ``ann.copy()``
        when the annotation must stay as it is.
    """
    base = name or layer_base_name(ann)
    placement: dict[str, Any] = {}
    if scale is not None:
        placement["scale"] = tuple(float(s) for s in scale)
    if translate is not None:
        placement["translate"] = tuple(float(t) for t in translate)
    if units is not None:
        placement["units"] = tuple(str(u) for u in units)
    shared_meta = {
        META_IMAGE_NAME: ann.image_name,
        META_IMAGE_SHAPE: list(ann.shape),
        META_CLASS_SET: class_set_to_metadata(ann.class_set),
    }
    layers: list[LayerDataTuple] = []
    if image is not None:
        layers.append(
            (
                image,
                {"name": base, "metadata": {META_IMAGE_NAME: ann.image_name}, **placement},
                "image",
            )
        )
    has_instances = bool(ann.labels.any())
    if has_instances or not len(ann.boxes):
        pixels = image if intensity_image is None else intensity_image
        layers.append(
            _labels_tuple(ann, f"{base}{INSTANCES_SUFFIX}", placement, shared_meta, pixels)
        )
    if len(ann.boxes):
        layers.append(_shapes_tuple(ann, f"{base}{BOXES_SUFFIX}", placement, shared_meta))
    return layers


def labels_features(ann: Annotation, image: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """A Labels layer's ``features``: ``index`` (napari maps a label value to its row through
    it), label, class, class_name, score, origin, then the measurements."""
    from .core.measure import measure_objects, measurements

    table = ann.features()
    measured = measure_objects(replace(ann, boxes=Boxes()), image)  # no copy of the pixels
    return {"index": table["label"].astype(np.int64), **table, **measurements(measured)}


def _labels_tuple(
    ann: Annotation,
    name: str,
    placement: dict[str, Any],
    shared_meta: dict[str, Any],
    image: np.ndarray | None,
) -> LayerDataTuple:
    features = labels_features(ann, image)
    kwargs = {
        "name": name,
        "features": features,
        "colormap": labels_colormap(ann),
        "metadata": {
            **shared_meta,
            META_DEFAULT_CLASS: 1,
            # the counts before any correction, so Count can show before and after
            META_INITIAL_COUNTS: initial_counts(ann, instances=True),
        },
        **placement,
    }
    return (ann.labels, kwargs, "labels")


def _shapes_tuple(
    ann: Annotation, name: str, placement: dict[str, Any], shared_meta: dict[str, Any]
) -> LayerDataTuple:
    boxes = ann.boxes
    cs = ann.class_set
    class_names = np.array([cs.name_of(int(c)) for c in boxes.class_ids], dtype=object)
    edge = np.array([class_rgba(cs, int(c)) for c in boxes.class_ids], dtype=np.float64)
    kwargs = {
        "name": name,
        "shape_type": "rectangle",
        "features": {
            "class": boxes.class_ids.astype(np.int32),
            "class_name": class_names,
            "score": boxes.scores.astype(np.float64),
        },
        "edge_color": edge,
        "face_color": "transparent",
        "edge_width": 2,
        "text": {
            "string": "{class_name}",
            "size": 9,
            # one colour per box, as the edges (a per-shape array is a ManualColorEncoding)
            "color": edge,
            "anchor": "upper_left",
            "translation": [-2, 0],
        },
        "metadata": {**shared_meta, META_INITIAL_COUNTS: initial_counts(ann, instances=False)},
        **placement,
    }
    return (boxes_to_rectangles(boxes), kwargs, "shapes")


def initial_counts(ann: Annotation, *, instances: bool) -> dict[str, int]:
    """``{class name: count}`` of an annotation's instances (or of its boxes), every class."""
    from .core.quantify import box_class_counts, counts_by_name, instance_class_counts

    n = len(ann.class_set)
    if instances:
        ids = np.fromiter(ann.classes.keys(), dtype=np.int64, count=len(ann.classes))
        cls = np.fromiter(ann.classes.values(), dtype=np.int64, count=len(ann.classes))
        counts = instance_class_counts(ann.labels, ids, cls, n)
    else:
        counts = box_class_counts(ann.boxes.class_ids, n)
    return counts_by_name(ann.class_set, counts)


# --- layers -> Annotation ----------------------------------------------------------------------
def strip_suffix(name: str, suffix: str) -> str:
    return name[: -len(suffix)] if suffix and name.endswith(suffix) else name


def _group_key(meta: Mapping[str, Any], layer_type: str) -> str:
    metadata = meta.get("metadata") or {}
    if metadata.get(META_IMAGE_NAME):
        return Path(str(metadata[META_IMAGE_NAME])).stem
    name = str(meta.get("name") or layer_type)
    suffix = {"labels": INSTANCES_SUFFIX, "shapes": BOXES_SUFFIX}.get(layer_type, "")
    return strip_suffix(name, suffix)


def as_table(features: Any) -> dict[str, np.ndarray]:
    """Features (DataFrame or dict of columns) as a dict of numpy columns."""
    if features is None:
        return {}
    if hasattr(features, "to_dict") and hasattr(features, "columns"):
        return {str(c): np.asarray(features[c]) for c in features.columns}
    return {str(k): np.asarray(v) for k, v in dict(features).items()}


def classes_from_table(
    table: Mapping[str, np.ndarray], n: int, class_set: ClassSet, default: int, layer: str
) -> np.ndarray:
    """Class id per feature row: ``class_name`` when it names a class, else ``class``.

    Names win because they are what users see and edit in the features table; an empty name
    with class 0 means "no class" and stays 0.
    """
    ids = np.full(n, default, dtype=np.int64)
    if "class" in table and len(table["class"]) == n:
        raw = np.asarray(table["class"], dtype=np.float64)
        valid = np.isfinite(raw)
        ids[valid] = raw[valid].astype(np.int64)
    if "class_name" in table and len(table["class_name"]) == n:
        lowered = {nm.lower(): i + 1 for i, nm in enumerate(class_set.names)}
        for row, value in enumerate(table["class_name"]):
            if isinstance(value, str) and value:
                value = str(value)  # np.str_ -> str, for a readable message
                if value.lower() not in lowered:
                    raise InputError(
                        f"layer {layer!r}: class {value!r} is not in class set "
                        f"{class_set.name!r} ({', '.join(class_set.names)})"
                    )
                ids[row] = lowered[value.lower()]
    bad = ids[(ids < 0) | (ids > len(class_set))]
    if len(bad):
        raise InputError(
            f"layer {layer!r}: class id {int(bad[0])} is not in class set {class_set.name!r} "
            f"(ids 1..{len(class_set)})"
        )
    return ids


def _labels_array(data: Any, meta: Mapping[str, Any], name: str) -> np.ndarray:
    if meta.get("multiscale") or isinstance(data, list | tuple):
        data = data[0]  # the full-resolution level
    labels = np.asarray(data)
    while labels.ndim > 2 and labels.shape[0] == 1:
        labels = labels[0]
    if labels.ndim != 2:
        raise InputError(
            f"layer {name!r} has shape {labels.shape}; only 2-D labels can be exported"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"layer {name!r} holds {labels.dtype} values, not integer labels")
    if labels.size and labels.min() < 0:
        raise InputError(f"layer {name!r} holds negative labels")
    return labels


def _placement(meta: Mapping[str, Any], ndim: int) -> tuple[np.ndarray, np.ndarray]:
    scale = np.asarray(
        meta.get("scale") if meta.get("scale") is not None else [1.0] * ndim, dtype=np.float64
    )
    translate = np.asarray(
        meta.get("translate") if meta.get("translate") is not None else [0.0] * ndim,
        dtype=np.float64,
    )
    return scale[-2:], translate[-2:]


class _Group:
    """The layers of one image while they are being gathered."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.labels: tuple[Any, Mapping[str, Any]] | None = None
        self.shapes: list[tuple[Any, Mapping[str, Any]]] = []
        self.image_shape: tuple[int, int] | None = None
        self.image_name: str | None = None
        self.class_set: ClassSet | None = None
        self.default_class: int | None = None

    def note_metadata(self, metadata: Mapping[str, Any]) -> None:
        if metadata.get(META_IMAGE_NAME) and not self.image_name:
            self.image_name = str(metadata[META_IMAGE_NAME])
        if metadata.get(META_IMAGE_SHAPE) is not None and self.image_shape is None:
            shape = tuple(int(v) for v in metadata[META_IMAGE_SHAPE])
            if len(shape) == 2:
                self.image_shape = (shape[0], shape[1])
        cs = class_set_from_metadata(metadata.get(META_CLASS_SET))
        if cs is not None:
            if self.class_set is not None and self.class_set.names != cs.names:
                raise InputError(
                    f"layers of image {self.key!r} use different class sets "
                    f"({self.class_set.name!r} and {cs.name!r})"
                )
            self.class_set = cs
        if metadata.get(META_DEFAULT_CLASS) is not None and self.default_class is None:
            self.default_class = int(metadata[META_DEFAULT_CLASS])


def layers_to_annotations(layers: Sequence[Any]) -> list[Annotation]:
    """Annotations of napari layers (a Labels and a Shapes layer of one image join), the
    Labels pixels copied at full resolution: the user may paint on while a worker reads them."""
    tuples = []
    for layer in layers:
        data, meta, layer_type = layer.as_layer_data_tuple()
        if layer_type == "labels":
            data = np.array(data[0] if meta.get("multiscale") else data)
        tuples.append((data, meta, layer_type))
    # each annotation's image_name is the layers' image name, or their name without suffix
    return layer_data_to_annotation(tuples)


def layer_data_to_annotation(
    layer_data: Sequence[tuple[Any, Mapping[str, Any], str]],
    *,
    class_set: ClassSet | None = None,
) -> list[Annotation]:
    """Annotations from napari layer data (the inverse of :func:`annotation_to_layer_data`).

    Layers are grouped by image: by the image name in their metadata, else by layer name
    without the `` instances`` / `` boxes`` suffix. Per group, one Labels layer gives the
    instances and any Shapes layers give boxes (non-rectangles by their bounding box, with a
    warning); Image layers only supply the image size for box-only groups.

    Parameters
    ----------
    layer_data
        ``(data, meta, layer_type)`` tuples, as napari hands them to writers.
    class_set
        Class set for layers whose metadata names none; default: names in the layers'
        ``class_name`` features if a built-in set has them, else the one-class ``cell`` set.

    Returns
    -------
    list of Annotation
        One per group that holds a Labels or Shapes layer, in the order first seen.

    Raises
    ------
    InputError
        No Labels/Shapes layer, two Labels layers for one image, layers that are not 2-D,
        class names or ids outside the class set.
    """
    groups: dict[str, _Group] = {}
    for data, meta, layer_type in layer_data:
        key = _group_key(meta, layer_type)
        group = groups.setdefault(key, _Group(key))
        metadata = meta.get("metadata") or {}
        name = str(meta.get("name") or key)
        if layer_type == "labels":
            if group.labels is not None:
                raise InputError(
                    f"two Labels layers for image {key!r} ({group.labels[1].get('name')!r} and "
                    f"{name!r}); select one of them to save"
                )
            group.labels = (data, meta)
            group.note_metadata(metadata)
        elif layer_type == "shapes":
            group.shapes.append((data, meta))
            group.note_metadata(metadata)
        elif layer_type == "image":
            array = data[0] if meta.get("multiscale") else data
            shape = tuple(np.shape(array))
            rgb = bool(meta.get("rgb")) and len(shape) >= 3
            rows_cols = shape[-3:-1] if rgb else shape[-2:]
            if group.image_shape is None and len(rows_cols) == 2:
                group.image_shape = (int(rows_cols[0]), int(rows_cols[1]))
            if metadata.get(META_IMAGE_NAME) and not group.image_name:
                group.image_name = str(metadata[META_IMAGE_NAME])
        # other layer types carry nothing we export
    annotations = [
        _group_to_annotation(g, class_set)
        for g in groups.values()
        if g.labels is not None or g.shapes
    ]
    if not annotations:
        raise InputError("nothing to save: select a Labels or Shapes layer")
    return annotations


def _fallback_class_set(group: _Group, class_set: ClassSet | None) -> ClassSet:
    if group.class_set is not None:
        return group.class_set
    if class_set is not None:
        return class_set
    names: set[str] = set()
    sources = ([group.labels] if group.labels else []) + group.shapes
    for _, meta in sources:
        column = as_table(meta.get("features")).get("class_name")
        if column is not None:
            names.update(str(v).lower() for v in column if isinstance(v, str) and v)
    if names:
        for builtin in CLASS_SETS.values():
            if names <= {n.lower() for n in builtin.names}:
                return builtin
    return CELL


def _group_to_annotation(group: _Group, class_set: ClassSet | None) -> Annotation:
    cs = _fallback_class_set(group, class_set)
    default = group.default_class if group.default_class is not None else 1
    if not 1 <= default <= len(cs):
        default = 1
    classes: dict[int, int] = {}
    scores: dict[int, float] = {}
    origins: dict[int, str] = {}
    lab_scale = lab_translate = None
    if group.labels is not None:
        data, meta = group.labels
        name = str(meta.get("name"))
        labels = _labels_array(data, meta, name)
        lab_scale, lab_translate = _placement(meta, labels.ndim)
        present = np.unique(labels)
        present = present[present != 0]
        table = as_table(meta.get("features"))
        n_rows = max((len(v) for v in table.values()), default=0)
        if "index" in table:
            row_labels = np.asarray(table["index"], dtype=np.int64)
        elif "label" in table:
            row_labels = np.asarray(table["label"], dtype=np.int64)
        else:
            row_labels = np.arange(n_rows, dtype=np.int64)  # napari: row i describes label i
        row_classes = classes_from_table(table, n_rows, cs, default, name)
        row_scores = np.asarray(table.get("score", np.full(n_rows, np.nan)), dtype=np.float64)
        row_origins = table.get("origin", np.full(n_rows, "file", dtype=object))
        by_label = {int(lab): k for k, lab in enumerate(row_labels)}
        for label in present.tolist():
            row = by_label.get(label)
            if row is None:
                classes[label] = default
                origins[label] = "drawn"
                continue
            if row_classes[row]:
                classes[label] = int(row_classes[row])
            if np.isfinite(row_scores[row]):
                scores[label] = float(row_scores[row])
            origin = row_origins[row]
            if isinstance(origin, str) and origin in ORIGINS and origin != "file":
                origins[label] = origin
        shape = labels.shape
    else:
        labels = None
        shape = group.image_shape

    all_xywh: list[np.ndarray] = []
    all_classes: list[np.ndarray] = []
    all_scores: list[np.ndarray] = []
    for data, meta in group.shapes:
        name = str(meta.get("name"))
        vertices = [np.asarray(v, dtype=np.float64) for v in data]
        if any(v.ndim != 2 or v.shape[1] < 2 for v in vertices):
            raise InputError(f"layer {name!r}: shapes must be 2-D")
        types = meta.get("shape_type") or ["rectangle"] * len(vertices)
        if isinstance(types, str):
            types = [types] * len(vertices)
        if any(t != "rectangle" for t in types):
            warnings.warn(
                f"layer {name!r}: non-rectangle shapes are saved as their bounding boxes",
                stacklevel=2,
            )
        if vertices and lab_scale is not None:
            scale, translate = _placement(meta, vertices[0].shape[1])
            # into the labels layer's pixel grid: data -> world -> labels data
            vertices = [
                ((v[:, -2:] * scale + translate) - lab_translate) / lab_scale for v in vertices
            ]
        table = as_table(meta.get("features"))
        n = len(vertices)
        all_xywh.append(rectangles_to_xywh(vertices))
        all_classes.append(classes_from_table(table, n, cs, default, name))
        score = table.get("score")
        all_scores.append(
            np.asarray(score, dtype=np.float64)
            if score is not None and len(score) == n
            else np.full(n, np.nan)
        )
    boxes = Boxes(
        np.concatenate(all_xywh) if all_xywh else np.zeros((0, 4)),
        np.concatenate(all_classes) if all_classes else np.zeros(0, dtype=np.int32),
        np.concatenate(all_scores) if all_scores else np.zeros(0),
    )
    if len(boxes) and np.any(boxes.class_ids == 0):
        boxes.class_ids[boxes.class_ids == 0] = default
    if shape is None:
        # Box-only layers with no image to size them: just big enough for every box.
        extent = boxes.xywh[:, :2] + boxes.xywh[:, 2:]
        shape = (
            max(int(np.ceil(extent[:, 1].max(initial=1))), 1),
            max(int(np.ceil(extent[:, 0].max(initial=1))), 1),
        )
    image_name = group.image_name or group.key
    ann = Annotation(
        labels=labels if labels is not None else np.zeros(shape, dtype=np.int32),
        class_set=cs,
        classes=classes,
        scores=scores,
        origins=origins,
        boxes=boxes,
        image_name=image_name,
    )
    return ann


__all__ = [
    "BOXES_SUFFIX",
    "INSTANCES_SUFFIX",
    "META_CLASS_SET",
    "META_CORRECTIONS",
    "META_DEFAULT_CLASS",
    "META_IMAGE_NAME",
    "META_IMAGE_SHAPE",
    "META_INITIAL_COUNTS",
    "LayerDataTuple",
    "annotation_to_layer_data",
    "as_table",
    "boxes_to_rectangles",
    "class_set_from_metadata",
    "class_set_to_metadata",
    "classes_from_table",
    "labels_colormap",
    "labels_features",
    "layer_data_to_annotation",
    "layer_pixel_size_um",
    "layer_pixels",
    "layers_to_annotations",
    "rectangles_to_xywh",
    "strip_suffix",
]

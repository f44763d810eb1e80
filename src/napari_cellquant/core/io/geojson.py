"""QuPath GeoJSON: objects as QuPath 0.4-0.6 exports and imports them.

Layout (one file per image, ``File > Export objects as GeoJSON`` with "FeatureCollection"; a
bare array of features, QuPath's other export, reads too)::

    {"type": "FeatureCollection", "features": [
      {"type": "Feature", "id": "<uuid>",
       "geometry": {"type": "Polygon", "coordinates": [[[x, y], ...], [hole], ...]},
       "properties": {"objectType": "detection",            # or "annotation", "cell"
                      "classification": {"name": "rbc", "color": [220, 30, 30]},
                      "measurements": {"area_px": 312, ...}}}]}

Coordinates are pixels with the origin at the top-left corner of the image, as QuPath's ROIs.
Instances are written as ``Polygon`` / ``MultiPolygon`` along their pixel borders (holes as
inner rings), so they rasterise back to the same pixels; predictions (origin ``model``) are
``detection`` objects, objects a person made or corrected are ``annotation`` objects, as
QuPath users keep them. ``measurements`` carry the :mod:`~napari_cellquant.core.measure`
figures (and ``score``); a ``cellquant`` property keeps the label id, the origin and which
rectangles are boxes, so our own files read back exactly. QuPath 0.2/0.3 files
(``measurements`` as a list of ``{name, value}``, ``colorRGB``) read as well; ``Point`` and
line geometries are skipped with a warning (they have no area to count).
"""

from __future__ import annotations

import json
import math
import os
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..annotation import Annotation
from ..classes import ClassSet
from ..errors import InputError
from .atomic import check_free, write_text_atomic
from .coco import json_number
from .image_files import image_named_like
from .outlines import Outline, annotation_from_outlines, instance_polygons, per_image_paths

__all__ = ["geojson_dict", "looks_like_geojson", "read_geojson", "write_geojson"]

PathLike = str | os.PathLike[str]
SUFFIX = ".geojson"
#: the namespace of our own feature ids (uuid5 of image name and label id: stable files)
_NAMESPACE = uuid.UUID("5c1f3f1e-6a53-4d43-9a43-2b6f0d3f7a11")
_AREA_GEOMETRIES = ("Polygon", "MultiPolygon")
#: files up to this size are parsed fully by :func:`looks_like_geojson` (as COCO's sniffing)
_SNIFF_PARSE_BYTES = 2_000_000


# --- detection -------------------------------------------------------------------------------
def _features_of(data: Any) -> list[Any] | None:
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
        return features if isinstance(features, list) else None
    if isinstance(data, dict) and data.get("type") == "Feature":
        return [data]
    if (
        isinstance(data, list)
        and data
        and all(isinstance(f, dict) and f.get("type") == "Feature" for f in data)
    ):
        return data
    return None


def looks_like_geojson(path: PathLike) -> bool:
    """A JSON file holding a GeoJSON FeatureCollection, a Feature or an array of Features.
    Never raises."""
    p = Path(path)
    if not p.is_file() or p.suffix.lower() not in (".geojson", ".json"):
        return False
    try:
        with open(p, "rb") as f:
            head = f.read(4096).decode("utf-8", "replace")
        if '"Feature' not in head or not head.lstrip("\ufeff \t\r\n").startswith(("{", "[")):
            return False
        if p.stat().st_size > _SNIFF_PARSE_BYTES:
            # a QuPath export of a slide runs to hundreds of MB: the reader parses it once,
            # detection must not parse it a second time
            return True
        return _features_of(json.loads(p.read_text(encoding="utf-8"))) is not None
    except (OSError, ValueError):
        return False


# --- reading ---------------------------------------------------------------------------------
def _rings(source: Path, k: int, geometry: dict[str, Any]) -> list[np.ndarray]:
    kind = geometry.get("type")
    polygons: Any = geometry.get("coordinates")
    if kind == "Polygon":
        polygons = [polygons]
    try:
        rings = [np.asarray(ring, dtype=np.float64) for polygon in polygons for ring in polygon]
    except (TypeError, ValueError):
        raise InputError(
            f"feature {k + 1}: {kind} coordinates are not rings of [x, y] numbers", source=source
        ) from None
    for ring in rings:
        if ring.ndim != 2 or ring.shape[1] < 2:
            raise InputError(
                f"feature {k + 1}: {kind} coordinates are not rings of [x, y] numbers",
                source=source,
            )
    return [ring[:, :2] for ring in rings]


def _measurements(properties: dict[str, Any]) -> dict[str, Any]:
    value = properties.get("measurements") or {}
    if isinstance(value, list):  # QuPath 0.2 / 0.3: [{"name": ..., "value": ...}]
        return {str(m.get("name")): m.get("value") for m in value if isinstance(m, dict)}
    return value if isinstance(value, dict) else {}


def _score(measurements: dict[str, Any]) -> float:
    for key in ("score", "Detection probability", "Probability"):
        value = measurements.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return math.nan


def _outline(source: Path, k: int, feature: Any) -> Outline | None:
    if not isinstance(feature, dict) or not isinstance(feature.get("geometry"), dict):
        raise InputError(f"feature {k + 1} has no geometry", source=source)
    geometry = feature["geometry"]
    if geometry.get("type") not in _AREA_GEOMETRIES:
        return None
    properties = _dict(feature.get("properties"))
    name = _dict(properties.get("classification")).get("name")
    ours = _dict(properties.get("cellquant"))
    rings = _rings(source, k, geometry)
    outline = Outline(
        rings=rings,
        class_name=str(name) if name else None,
        score=_score(_measurements(properties)),
        origin=ours.get("origin"),
        object_id=ours.get("id") if isinstance(ours.get("id"), int) else None,
    )
    if ours.get("box") and len(rings) == 1:
        (x, y), (right, bottom) = rings[0].min(axis=0), rings[0].max(axis=0)
        outline.box = (float(x), float(y), float(right - x), float(bottom - y))
    return outline


def _dict(value: Any) -> dict[str, Any]:
    """``value`` when it is a JSON object, else empty: foreign files put odd things there."""
    return value if isinstance(value, dict) else {}


def _read_file(
    path: Path, class_set: ClassSet | str | None, images_dir: PathLike | None
) -> Annotation:
    try:
        features = _features_of(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the file ({exc})", source=path) from exc
    except ValueError as exc:
        raise InputError(f"is not valid JSON ({exc})", source=path) from exc
    if features is None:
        raise InputError(
            "is not GeoJSON: expected a FeatureCollection or an array of Features", source=path
        )
    outlines = [_outline(path, k, f) for k, f in enumerate(features)]
    skipped = sum(o is None for o in outlines)
    if skipped:
        warnings.warn(
            f"{path}: {skipped} feature(s) are points or lines, not areas, and were skipped",
            UserWarning,
            stacklevel=3,
        )
    # QuPath names an export after its image
    image_name, image_path = image_named_like(path, path.name[: -len(path.suffix)], images_dir)
    return annotation_from_outlines(
        path,
        [o for o in outlines if o is not None],
        image_name=image_name,
        image_path=image_path,
        class_set=class_set,
    )


def read_geojson(
    path: PathLike, *, class_set: ClassSet | str | None = None, images_dir: PathLike | None = None
) -> list[Annotation]:
    """One Annotation per GeoJSON file: ``path`` itself, or every ``*.geojson`` in a folder.

    Class names map onto ``class_set`` (by name, case-insensitive), else onto the built-in set
    that holds them all; objects without a classification are ``unclassified`` (or ``cell``
    when none has one).
    """
    p = Path(path)
    if not p.exists():
        raise InputError("no such file or folder", source=p)
    files = sorted(p.glob(f"*{SUFFIX}")) if p.is_dir() else [p]
    if not files:
        raise InputError(f"holds no {SUFFIX} files", source=p)
    return [_read_file(f, class_set, images_dir) for f in files]


# --- writing ---------------------------------------------------------------------------------
def _closed(ring: np.ndarray) -> list[list[float]]:
    points = [[json_number(x), json_number(y)] for x, y in ring.tolist()]
    return [*points, points[0]]


def _geometry(polygons: Sequence[Sequence[np.ndarray]]) -> dict[str, Any]:
    coordinates = [[_closed(ring) for ring in rings] for rings in polygons]
    if len(coordinates) == 1:
        return {"type": "Polygon", "coordinates": coordinates[0]}
    return {"type": "MultiPolygon", "coordinates": coordinates}


def _feature(
    annotation: Annotation,
    object_id: int,
    class_id: int,
    geometry: dict[str, Any],
    measurements: dict[str, Any],
    origin: str,
    box: bool = False,
) -> dict[str, Any]:
    cs = annotation.class_set
    ours: dict[str, Any] = {"id": object_id, "origin": origin}
    if box:
        ours["box"] = True
    return {
        "type": "Feature",
        "id": str(uuid.uuid5(_NAMESPACE, f"{annotation.image_name}/{object_id}")),
        "geometry": geometry,
        "properties": {
            "objectType": "detection" if origin == "model" else "annotation",
            "classification": {"name": cs.name_of(class_id), "color": list(cs.color_of(class_id))},
            "isLocked": False,
            "measurements": {
                k: v
                for k, v in measurements.items()
                if isinstance(v, int | float) and math.isfinite(v)
            },
            "cellquant": ours,
        },
    }


_MEASURED = (
    "area_px",
    "area_um2",
    "perimeter_px",
    "eccentricity",
    "solidity",
    "equivalent_diameter_px",
    "score",
)


def geojson_dict(annotation: Annotation, image: np.ndarray | None = None) -> dict[str, Any]:
    """One image's objects as a QuPath FeatureCollection (``image`` adds mean intensities)."""
    from ..measure import measure_objects

    table = measure_objects(annotation, image)
    measured = [k for k in table if k in _MEASURED or k.startswith("mean_intensity_")]
    row_of = {int(i): k for k, i in enumerate(table["id"].tolist())}

    def measurements(object_id: int) -> dict[str, float]:
        return {k: float(table[k][row_of[object_id]]) for k in measured}

    features = []
    for i, polygons in instance_polygons(annotation.labels):
        class_id = annotation.classes.get(i, 0)
        if not class_id:
            raise InputError(
                f"instance {i} has no class; QuPath objects need a classification",
                source=annotation.image_name or None,
            )
        features.append(
            _feature(
                annotation,
                i,
                class_id,
                _geometry(polygons),
                measurements(i),
                annotation.origins.get(i, "file"),
            )
        )
    first_box = int(annotation.labels.max(initial=0)) + 1
    for j, ((x, y, w, h), class_id) in enumerate(
        zip(annotation.boxes.xywh.tolist(), annotation.boxes.class_ids.tolist(), strict=True)
    ):
        ring = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]])
        features.append(
            _feature(
                annotation,
                first_box + j,
                class_id,
                _geometry([[ring]]),
                measurements(first_box + j),
                "file",
                box=True,
            )
        )
    return {"type": "FeatureCollection", "features": features}


def write_geojson(
    annotations: Sequence[Annotation], dst: PathLike, *, overwrite: bool = False
) -> list[Path]:
    """Write one ``<image stem>.geojson`` per image into the folder ``dst`` (or, for one image,
    to ``dst`` itself when it ends in ``.geojson``), as QuPath imports them by drag and drop;
    measurements include each channel's mean intensity when the image is found.
    Existing files are refused unless ``overwrite``; every file is written atomically."""
    paths = per_image_paths(
        annotations, Path(dst), file_suffix=SUFFIX, ending=SUFFIX, what="GeoJSON file"
    )
    check_free(paths, overwrite)
    return [
        write_text_atomic(
            path,
            json.dumps(geojson_dict(a, _pixels_of(a)), separators=(",", ":")),
            overwrite=overwrite,
        )
        for path, a in zip(paths, annotations, strict=True)
    ]


def _pixels_of(annotation: Annotation) -> np.ndarray | None:
    """The annotated image, when it is known and readable, for the mean intensities."""
    from ..errors import CellquantError
    from .images import read_image

    if annotation.image_path is None or not Path(annotation.image_path).is_file():
        return None
    try:
        return read_image(annotation.image_path)
    except CellquantError:
        return None

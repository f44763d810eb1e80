"""ImageJ / Fiji ROI sets (``RoiSet.zip`` of ``.roi`` files), through the ``roifile`` package.

Writing, one ``<image stem>_RoiSet.zip`` per image (what Fiji's ROI Manager opens by drag and
drop, and saves with *More > Save*):

- an instance of one part without holes is a *traced* polygon ROI, vertices on pixel corners
  (what Fiji's wand and *Analyze Particles* make); one with holes or several parts is a
  composite (shape) ROI, whose even-odd path ImageJ fills the same way;
- a box is a rectangle ROI (sub-pixel when its corners are not whole pixels);
- the ROI's name is ``<class>-<id>`` (the class is what a Fiji user sees in the ROI Manager),
  its stroke colour the class colour, and its properties (*Properties...* in Fiji) carry
  ``class``, ``id``, ``origin`` and ``score``, so our own sets read back exactly.

Reading takes polygon, freehand, traced, composite, oval and rectangle ROIs; the class comes
from the ``class`` property, else from a ``<class>-<number>`` name; ROIs whose names carry no
class (Fiji's ``0001-0123-0456``) are all ``cell``. Lines and points have no area and are
skipped with a warning.
"""

from __future__ import annotations

import math
import os
import re
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..annotation import Annotation
from ..classes import ClassSet
from ..errors import InputError
from .atomic import atomic_path, check_free
from .image_files import image_named_like
from .outlines import Outline, annotation_from_outlines, instance_polygons, per_image_paths

__all__ = ["looks_like_roiset", "read_roiset", "write_roiset"]

PathLike = str | os.PathLike[str]
SUFFIX = "_RoiSet.zip"
_NAMED = re.compile(r"^(?P<cls>.*[^\d\s-].*?)[-_ ](?P<id>\d+)$")  # "rbc-12", not "0001-0123"
_OVAL_VERTICES = 72


def looks_like_roiset(path: PathLike) -> bool:
    """A ``.roi`` file, or a ``.zip`` whose entries are ``.roi`` files. Never raises."""
    p = Path(path)
    try:
        if p.is_file() and p.suffix.lower() == ".roi":
            return True
        if p.is_file() and p.suffix.lower() == ".zip" and zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as z:
                names = z.namelist()
            return bool(names) and all(n.lower().endswith(".roi") for n in names)
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    return False


# --- reading ---------------------------------------------------------------------------------
def _class_and_id(roi: Any) -> tuple[str | None, int | None]:
    props = roi.properties
    name = props.get("class")
    object_id = props.get("id") if isinstance(props.get("id"), int) else None
    if name is None:
        match = _NAMED.match(roi.name or "")
        if match:
            name = match["cls"]
    return (str(name) if name not in (None, "") else None), object_id


def _ellipse(left: float, top: float, width: float, height: float) -> np.ndarray:
    angle = np.linspace(0, 2 * np.pi, _OVAL_VERTICES, endpoint=False)
    return np.column_stack(
        [left + width / 2 * (1 + np.cos(angle)), top + height / 2 * (1 + np.sin(angle))]
    )


def _rect(roi: Any) -> tuple[float, float, float, float]:
    if roi.subpixelresolution and roi.widthd > 0:
        return float(roi.xd), float(roi.yd), float(roi.widthd), float(roi.heightd)
    return float(roi.left), float(roi.top), float(roi.right - roi.left), float(roi.bottom - roi.top)


def _outline(roi: Any) -> Outline | None:
    from roifile import ROI_TYPE

    name, object_id = _class_and_id(roi)
    props = roi.properties
    score = props.get("score")
    outline = Outline(
        class_name=name,
        object_id=object_id,
        origin=props.get("origin"),
        score=float(score) if isinstance(score, int | float) else math.nan,
    )
    if roi.composite:
        outline.rings = [np.asarray(c, dtype=np.float64) for c in roi.coordinates(multi=True)]
    elif roi.roitype == ROI_TYPE.RECT:
        outline.box = _rect(roi)
    elif roi.roitype == ROI_TYPE.OVAL:
        outline.rings = [_ellipse(*_rect(roi))]
    elif roi.roitype in (ROI_TYPE.POLYGON, ROI_TYPE.FREEHAND, ROI_TYPE.TRACED):
        outline.rings = [np.asarray(roi.coordinates(), dtype=np.float64)]
    else:
        return None
    return outline


def _read_file(
    path: Path, class_set: ClassSet | str | None, images_dir: PathLike | None
) -> Annotation:
    import roifile

    try:
        rois = roifile.roiread(path)
    except Exception as exc:  # roifile raises ValueError, struct.error, BadZipFile ...
        raise InputError(f"is not a readable ImageJ ROI file ({exc})", source=path) from exc
    rois = rois if isinstance(rois, list) else [rois]
    outlines = [_outline(roi) for roi in rois]
    skipped = [roi.name for roi, o in zip(rois, outlines, strict=True) if o is None]
    if skipped:
        warnings.warn(
            f"{path}: {len(skipped)} ROI(s) are lines or points, not areas, and were "
            f"skipped ({', '.join(skipped[:5])})",
            UserWarning,
            stacklevel=3,
        )
    stem = re.sub(r"[-_ ]?roiset$", "", path.stem, flags=re.IGNORECASE) or path.stem
    image_name, image_path = image_named_like(path, stem, images_dir)
    return annotation_from_outlines(
        path,
        [o for o in outlines if o is not None],
        image_name=image_name,
        image_path=image_path,
        class_set=class_set,
    )


def read_roiset(
    path: PathLike, *, class_set: ClassSet | str | None = None, images_dir: PathLike | None = None
) -> list[Annotation]:
    """One Annotation per ROI set: ``path`` (a ``.zip`` or ``.roi``), or every ROI-set zip in
    a folder. The image is the one named like the file without ``_RoiSet``."""
    p = Path(path)
    if not p.exists():
        raise InputError("no such file or folder", source=p)
    files = sorted(f for f in p.glob("*.zip") if looks_like_roiset(f)) if p.is_dir() else [p]
    if not files:
        raise InputError("holds no ImageJ ROI sets (.zip of .roi files)", source=p)
    return [_read_file(f, class_set, images_dir) for f in files]


# --- writing ---------------------------------------------------------------------------------
def _argb(rgb: Sequence[int]) -> bytes:
    return bytes([255, *(int(c) for c in rgb)])


def _region_roi(rings: list[list[np.ndarray]], name: str) -> Any:
    from roifile import ROI_TYPE, ImagejRoi

    if len(rings) == 1 and len(rings[0]) == 1:
        roi = ImagejRoi.frompoints(rings[0][0], name=name)
        roi.roitype = ROI_TYPE.TRACED
        return roi
    path: list[float] = []
    for ring in (r for polygon in rings for r in polygon):
        (x0, y0), rest = ring[0], ring[1:]
        path += [0, float(x0), float(y0)]
        for x, y in rest.tolist():
            path += [1, float(x), float(y)]
        path.append(4)
    points = np.concatenate([r for polygon in rings for r in polygon])
    lows, highs = points.min(axis=0), points.max(axis=0)
    roi = ImagejRoi(
        roitype=ROI_TYPE.RECT,
        name=name,
        left=int(lows[0]),
        top=int(lows[1]),
        right=int(highs[0]),
        bottom=int(highs[1]),
    )
    roi.multi_coordinates = np.asarray(path, dtype=np.float32)
    roi.shape_roi_size = len(path)
    return roi


def _box_roi(x: float, y: float, w: float, h: float, name: str) -> Any:
    from roifile import ROI_OPTIONS, ROI_TYPE, ImagejRoi

    roi = ImagejRoi(
        roitype=ROI_TYPE.RECT,
        name=name,
        left=math.floor(x),
        top=math.floor(y),
        right=math.ceil(x + w),
        bottom=math.ceil(y + h),
    )
    if not all(float(v).is_integer() for v in (x, y, w, h)):
        roi.options |= ROI_OPTIONS.SUB_PIXEL_RESOLUTION
        roi.xd, roi.yd, roi.widthd, roi.heightd = x, y, w, h
    return roi


def _described(
    roi: Any, annotation: Annotation, class_id: int, object_id: int, origin: str, score: float
) -> Any:
    cs = annotation.class_set
    roi.stroke_color = _argb(cs.color_of(class_id))
    props: dict[str, Any] = {"class": cs.name_of(class_id), "id": object_id, "origin": origin}
    if math.isfinite(score):
        props["score"] = score
    roi.properties = props
    return roi


def roiset_rois(annotation: Annotation) -> list[Any]:
    """One image's objects as ``roifile.ImagejRoi`` objects, instances then boxes."""
    cs = annotation.class_set
    rois = []
    for i, polygons in instance_polygons(annotation.labels):
        class_id = annotation.classes.get(i, 0)
        if not class_id:
            raise InputError(f"instance {i} has no class", source=annotation.image_name or None)
        roi = _region_roi(polygons, f"{cs.name_of(class_id)}-{i}")
        rois.append(
            _described(
                roi,
                annotation,
                class_id,
                i,
                annotation.origins.get(i, "file"),
                annotation.scores.get(i, math.nan),
            )
        )
    first_box = int(annotation.labels.max(initial=0)) + 1
    for j, ((x, y, w, h), class_id, score) in enumerate(
        zip(
            annotation.boxes.xywh.tolist(),
            annotation.boxes.class_ids.tolist(),
            annotation.boxes.scores.tolist(),
            strict=True,
        )
    ):
        roi = _box_roi(x, y, w, h, name=f"{cs.name_of(class_id)}-{first_box + j}")
        rois.append(_described(roi, annotation, class_id, first_box + j, "file", score))
    return rois


def write_roiset(
    annotations: Sequence[Annotation], dst: PathLike, *, overwrite: bool = False
) -> list[Path]:
    """Write one ``<image stem>_RoiSet.zip`` per image into the folder ``dst`` (or, for one
    image, to ``dst`` itself when it ends in ``.zip``). Existing files are refused unless
    ``overwrite``; every file is written atomically."""
    import roifile

    paths = per_image_paths(
        annotations, Path(dst), file_suffix=".zip", ending=SUFFIX, what="ROI set"
    )
    check_free(paths, overwrite)
    written = []
    for path, annotation in zip(paths, annotations, strict=True):
        rois = roiset_rois(annotation)
        if not rois:
            raise InputError(
                "has no objects; an ImageJ ROI set cannot be empty",
                source=annotation.image_name or None,
            )
        with atomic_path(path, overwrite=overwrite) as tmp:
            roifile.roiwrite(tmp, rois, mode="w")  # the temporary name keeps ".zip"
        written.append(path)
    return written

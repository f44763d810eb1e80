"""Reading and writing annotations: one entry point per direction, dispatching on content.

``read_annotations`` turns any supported file or folder into Annotations; ``write_annotations``
writes Annotations in one of the output formats. The CLI, the napari reader/writer and the
batch engine all go through these two functions, so a file means the same thing everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..annotation import Annotation
from ..classes import ClassSet, get_class_set
from ..errors import InputError

KINDS = ("coco", "voc", "yolo", "geojson", "roiset", "masks", "labels", "colormap")
FORMATS = ("coco", "voc", "yolo", "geojson", "roiset", "masks", "class-masks", "csv")

PathLike = str | os.PathLike[str]


def detect_kind(path: PathLike, *, class_set: ClassSet | str | None = None) -> str:
    """What kind of annotation ``path`` holds, judged from its content.

    Returns one of :data:`KINDS`, or ``"image"`` for a plain RGB/grey picture that is only a
    colour-coded map when a class set is named.
    """
    from . import coco, geojson, roiset, voc, yolo
    from .images import IMAGE_SUFFIXES

    p = Path(path)
    if not p.exists():
        raise InputError("no such file or folder", source=p)
    if p.is_dir():
        return _detect_folder_kind(p, class_set=class_set)
    suffix = p.suffix.lower()
    if suffix in (".yaml", ".yml", ".txt"):
        if yolo.looks_like_yolo(p) or (suffix == ".txt" and yolo.looks_like_yolo(p.parent)):
            return "yolo"
        raise InputError(
            "is not a YOLO data file (data.yaml with 'names', or a label "
            "file in a 'labels' folder)",
            source=p,
        )
    if suffix in (".json", ".geojson"):
        if suffix == ".json" and coco.looks_like_coco(p):
            return "coco"
        if geojson.looks_like_geojson(p):
            return "geojson"
        raise InputError(
            "JSON file is neither COCO (needs 'images', 'annotations' and "
            "'categories') nor GeoJSON (a FeatureCollection)",
            source=p,
        )
    if suffix in (".zip", ".roi"):
        if roiset.looks_like_roiset(p):
            return "roiset"
        raise InputError("is not an ImageJ ROI set (a .zip of .roi files)", source=p)
    if suffix == ".xml":
        if voc.looks_like_voc(p):
            return "voc"
        raise InputError("XML file is not Pascal VOC (root element must be <annotation>)", source=p)
    if suffix in IMAGE_SUFFIXES:
        return _detect_image_kind(p, class_set=class_set)
    raise InputError(f"unsupported file type {suffix!r}", source=p)


def _detect_image_kind(path: Path, *, class_set: ClassSet | str | None) -> str:
    from .images import read_image

    pixels = read_image(path)
    if pixels.ndim == 2 and np.issubdtype(pixels.dtype, np.integer):
        return "labels"
    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4) and class_set is not None:
        return "colormap"
    return "image"


def _detect_folder_kind(folder: Path, *, class_set: ClassSet | str | None) -> str:
    from . import coco, geojson, roiset, voc, yolo
    from .images import IMAGE_SUFFIXES

    if yolo.looks_like_yolo(folder):
        return "yolo"
    files = sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))
    if any(f.name.endswith(("_instances.tif", "_instances.tiff")) for f in files):
        return "masks"
    if class_set is not None and _has_class_mask_files(files, get_class_set(class_set)):
        return "masks"
    if any(f.suffix.lower() == ".geojson" and geojson.looks_like_geojson(f) for f in files):
        return "geojson"
    if any(f.suffix.lower() == ".zip" and roiset.looks_like_roiset(f) for f in files):
        return "roiset"
    xmls = [f for f in files if f.suffix.lower() == ".xml"]
    if xmls and voc.looks_like_voc(xmls[0]):
        return "voc"
    jsons = [f for f in files if f.suffix.lower() == ".json" and coco.looks_like_coco(f)]
    if len(jsons) == 1:
        return "coco"
    if len(jsons) > 1:
        raise InputError(f"holds {len(jsons)} COCO files; name the one to read", source=folder)
    images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
    if images:
        return _detect_image_kind(images[0], class_set=class_set)
    raise InputError(
        "holds no annotation files (COCO JSON, VOC XML, masks or label images)", source=folder
    )


def _has_class_mask_files(files: Sequence[Path], class_set: ClassSet) -> bool:
    endings = tuple(f"_{name.lower()}.png" for name in class_set.names)
    return any(f.name.lower().endswith(endings) for f in files)


def read_annotations(
    path: PathLike,
    *,
    kind: str | None = None,
    class_set: ClassSet | str | None = None,
    images_dir: PathLike | None = None,
) -> list[Annotation]:
    """Read every image's annotations from a file or folder.

    Parameters
    ----------
    path
        A COCO JSON, a VOC XML or folder of them, a YOLO ``data.yaml`` or labels folder,
        a QuPath GeoJSON or ImageJ ``RoiSet.zip`` (or a folder of them),
        a label image, a colour-coded map, or a
        folder of masks (``<stem>_instances.tif`` + ``<stem>_classes.tif`` pairs, or one
        ``<stem>_<class>.png`` per class) or of label images / colour maps.
    kind
        Force the kind (one of :data:`KINDS`) instead of detecting it from the content.
    class_set
        Class set to map onto; required for colour-coded maps and per-class mask folders.
    images_dir
        Where the images are, when they are not beside the annotations.
    """
    from . import coco, geojson, masks, roiset, voc, yolo

    p = Path(path)
    cs = None if class_set is None else get_class_set(class_set)
    kind = kind or detect_kind(p, class_set=cs)
    if kind not in KINDS:
        if kind == "image":
            raise InputError(
                "is a plain image, not an annotation; to read a colour-coded class map "
                "name its class set with --classes (e.g. --classes blood10)",
                source=p,
            )
        raise InputError(
            f"unknown annotation kind {kind!r}; choose from {', '.join(KINDS)}", source=p
        )
    if kind == "coco":
        target = p if p.is_file() else _single_coco_in(p)
        return coco.read_coco(target, images_dir=images_dir, class_set=cs)
    if kind == "voc":
        return voc.read_voc(p, images_dir=images_dir, class_set=cs)
    if kind == "yolo":
        return yolo.read_yolo(p, class_set=cs, images_dir=images_dir)
    if kind == "geojson":
        return geojson.read_geojson(p, class_set=cs, images_dir=images_dir)
    if kind == "roiset":
        return roiset.read_roiset(p, class_set=cs, images_dir=images_dir)
    if kind == "masks":
        return masks.read_masks_folder(p, class_set=cs)
    if kind == "colormap" and cs is None:
        raise InputError("a colour-coded map needs its class set: pass --classes NAME", source=p)
    files = _image_files(p)
    if kind == "labels":
        return [masks.read_label_image(f, class_set=cs) for f in files]
    assert cs is not None
    return [masks.read_color_map(f, cs) for f in files]


def _single_coco_in(folder: Path) -> Path:
    from .coco import looks_like_coco

    found = [f for f in sorted(folder.glob("*.json")) if looks_like_coco(f)]
    if len(found) != 1:
        raise InputError(f"expected one COCO JSON file, found {len(found)}", source=folder)
    return found[0]


def _image_files(path: Path) -> list[Path]:
    from .images import IMAGE_SUFFIXES

    if path.is_file():
        return [path]
    files = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError("holds no images", source=path)
    return files


def write_annotations(
    annotations: Sequence[Annotation],
    dst: PathLike,
    *,
    to: str,
    encoding: str = "polygon",
    overwrite: bool = False,
) -> list[Path]:
    """Write annotations in format ``to`` (one of :data:`FORMATS`); returns the files written.

    ``coco`` and ``csv`` write one file (``dst`` itself, or ``annotations.json`` /
    ``counts.csv`` inside ``dst`` when it is a folder); ``voc``, ``yolo``, ``geojson``
    (QuPath, ``<stem>.geojson``), ``roiset`` (Fiji, ``<stem>_RoiSet.zip``), ``masks`` and
    ``class-masks`` write files per image into the folder ``dst`` (``yolo``: ``labels/``,
    ``images/``, ``data.yaml``). Existing files are refused unless
    ``overwrite``; every file is written atomically.
    """
    from . import coco, counts, geojson, masks, roiset, voc, yolo

    if to not in FORMATS:
        raise InputError(f"unknown output format {to!r}; choose from {', '.join(FORMATS)}")
    if not annotations:
        raise InputError("nothing to write: no annotations were read")
    target = Path(dst)
    if to == "coco":
        return [
            coco.write_coco(
                annotations,
                _file_in(target, "annotations.json"),
                encoding=coco.check_encoding(encoding),
                overwrite=overwrite,
            )
        ]
    if to == "csv":
        return [
            counts.write_counts_csv(
                annotations, _file_in(target, "counts.csv"), overwrite=overwrite
            )
        ]
    if to == "voc":
        return voc.write_voc(annotations, target, overwrite=overwrite)
    if to == "yolo":
        return yolo.write_yolo(annotations, target, overwrite=overwrite)
    if to == "geojson":
        return geojson.write_geojson(annotations, target, overwrite=overwrite)
    if to == "roiset":
        return roiset.write_roiset(annotations, target, overwrite=overwrite)
    if to == "masks":
        return masks.write_masks(annotations, target, overwrite=overwrite)
    written: list[Path] = []
    for annotation in annotations:
        written += masks.write_class_masks(annotation, target, overwrite=overwrite)
    return written


def _file_in(target: Path, default_name: str) -> Path:
    """``target`` when it names a file, else ``default_name`` inside the folder ``target``."""
    if target.is_dir() or not target.suffix:
        return target / default_name
    return target


__all__ = ["FORMATS", "KINDS", "detect_kind", "read_annotations", "write_annotations"]

"""napari reader: annotations (COCO, VOC, YOLO, QuPath GeoJSON, ImageJ ROI sets, masks,
label images) and OME-TIFF images with their pixel size, as layers.

``napari_get_reader`` only claims what it can read as annotations and returns ``None``
otherwise, so napari falls back to its built-in reader:

- ``*.json`` that is COCO or GeoJSON, ``*.geojson`` (QuPath), ``*.xml`` that is Pascal VOC,
  ``*.zip`` / ``*.roi`` that are ImageJ ROIs, ``data.yaml`` of YOLO;
- ``*.ome.tif`` / ``*.ome.tiff`` images: the layer's ``scale`` and ``units`` are the file's
  physical pixel size (µm), and the channels of a multi-channel image open as layers named
  after the OME channels;
- label images named ``<stem>_instances``, ``<stem>_labels`` or ``<stem>_masks``
  (``.tif``/``.tiff``/``.png``) holding a 2-D integer image; a ``<stem>_instances.tif``
  written by this plugin is read with its ``<stem>_classes.tif`` so classes come back;
- folders of masks (``*_instances.tif`` pairs), of VOC XML files, or holding one COCO file.

Plain images (photos, micrographs) are left to napari's built-in reader: napari picks readers
by file name alone, so claiming every ``*.tif`` or ``*.png`` in the manifest would make it ask
the user to choose a reader for every image (and make ``viewer.open(path)`` without
``plugin=`` fail for scripts). An ImageJ or plain TIFF that records its pixel size but is not
named ``.ome.tif`` therefore opens through napari's reader; Segment and Count still find its
pixel size in the file the layer came from (``_layers.layer_pixel_size_um``), and
``cellquant predict`` reads it from every file.

Each image's annotation becomes layers through :func:`._layers.annotation_to_layer_data`,
preceded by the image itself when it is found beside the annotation file. Errors in a file
the reader claimed are raised as :class:`~napari_cellquant.core.errors.InputError`, which
napari shows to the user.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from ._layers import LayerDataTuple, annotation_to_layer_data
from .core.annotation import Annotation
from .core.errors import CellquantError

log = logging.getLogger(__name__)

ReaderFunction = Callable[[str | Sequence[str]], list[LayerDataTuple]]

#: Name endings (before the suffix) that mark an integer image as instance labels.
LABEL_IMAGE_ENDINGS = ("_instances", "_labels", "_masks")
LABEL_IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
_FOLDER_KINDS = ("coco", "voc", "yolo", "geojson", "roiset", "masks")
OME_SUFFIXES = (".ome.tif", ".ome.tiff")


def napari_get_reader(path: str | Sequence[str]) -> ReaderFunction | None:
    """The reader function for ``path``, or ``None`` when it is not an annotation we read.

    Parameters
    ----------
    path
        A file or folder (napari passes a list when several are opened as a stack; only a
        single path is read here).
    """
    if isinstance(path, list | tuple):
        if len(path) != 1:
            return None
        path = path[0]
    kind = annotation_kind(Path(path))
    if kind is None:
        return None

    def read(p: str | Sequence[str]) -> list[LayerDataTuple]:
        target = p[0] if isinstance(p, list | tuple) else p
        return read_layers(Path(target), kind)

    return read


def annotation_kind(path: Path) -> str | None:
    """``coco``, ``voc``, ``yolo``, ``geojson``, ``roiset``, ``masks``, ``label_image`` or
    ``ome_image`` when we read ``path``, else ``None``.

    Cheap checks only: the file name, and for JSON/XML a look at the content.
    """
    from .core.io import coco, geojson, roiset, voc, yolo

    try:
        if path.is_dir():
            from .core.io import detect_kind

            kind = detect_kind(path)
            return kind if kind in _FOLDER_KINDS else None
        suffix = path.suffix.lower()
        if path.name.lower().endswith(OME_SUFFIXES):
            return "ome_image"
        if suffix == ".json" and coco.looks_like_coco(path):
            return "coco"
        if suffix in (".json", ".geojson"):
            return "geojson" if geojson.looks_like_geojson(path) else None
        if suffix in (".zip", ".roi"):
            return "roiset" if roiset.looks_like_roiset(path) else None
        if suffix == ".xml":
            return "voc" if voc.looks_like_voc(path) else None
        if suffix in (".yaml", ".yml"):
            return "yolo" if yolo.looks_like_yolo(path) else None
        if suffix in LABEL_IMAGE_SUFFIXES and path.stem.lower().endswith(LABEL_IMAGE_ENDINGS):
            return "label_image" if _is_label_image(path) else None
    except (CellquantError, OSError) as exc:
        # Not ours (or unreadable): let napari try its other readers, which report errors.
        log.debug("napari-cellquant does not read %s: %s", path, exc)
    return None


def _is_label_image(path: Path) -> bool:
    import numpy as np

    from .core.io.images import read_image

    pixels = read_image(path)
    return pixels.ndim == 2 and np.issubdtype(pixels.dtype, np.integer)


def read_annotation_files(path: Path, kind: str) -> list[Annotation]:
    """The annotations in ``path`` (``kind`` from :func:`annotation_kind`)."""
    from .core.io import read_annotations

    if kind == "label_image":
        classes_file = _classes_sibling(path)
        if classes_file is not None:
            from .core.io.masks import read_masks_folder

            # Only the pair of this image: read the folder and keep the matching stem.
            stem = path.stem[: -len("_instances")]
            found = [a for a in read_masks_folder(path.parent) if a.meta.get("stem") == stem]
            if found:
                return found
        return read_annotations(path, kind="labels")
    return read_annotations(path, kind=kind)


def _classes_sibling(path: Path) -> Path | None:
    if not path.stem.lower().endswith("_instances"):
        return None
    stem = path.stem[: -len("_instances")]
    for suffix in (".tif", ".tiff"):
        candidate = path.with_name(f"{stem}_classes{suffix}")
        if candidate.is_file():
            return candidate
    return None


def _strip_label_ending(stem: str) -> str:
    """``cells_instances`` -> ``cells``, so layers are not named ``cells_instances instances``."""
    for ending in LABEL_IMAGE_ENDINGS:
        if stem.lower().endswith(ending) and len(stem) > len(ending):
            return stem[: -len(ending)]
    return stem


def read_layers(path: Path, kind: str) -> list[LayerDataTuple]:
    """Layer data for every image annotated in ``path``: image (when found) then objects."""
    if kind == "ome_image":
        return image_layers(path)
    layers: list[LayerDataTuple] = []
    for annotation in read_annotation_files(path, kind):
        image = None
        if annotation.image_path is not None and Path(annotation.image_path).is_file():
            from .core.io.images import read_image

            image = read_image(annotation.image_path)
        name = Path(annotation.image_name).stem if annotation.image_name else path.stem
        if kind == "label_image":
            name = _strip_label_ending(name)
        layers += annotation_to_layer_data(annotation, name=name, image=image)
    return layers


def image_layers(path: Path) -> list[LayerDataTuple]:
    """An image file as Image layers: ``scale`` and ``units`` from its pixel size, and one
    layer per channel (named after the file's channels) when it has several that are not RGB."""
    from .core.io.image_metadata import read_image_metadata
    from .core.io.images import read_image

    pixels = read_image(path)
    metadata = read_image_metadata(path)
    lower = path.name.lower()
    name = next((path.name[: -len(s)] for s in OME_SUFFIXES if lower.endswith(s)), path.stem)
    kwargs: dict[str, object] = {"name": name}
    if metadata.pixel_size_um is not None:
        kwargs.update(scale=metadata.pixel_size_um, units=("um", "um"))
    channels = pixels.shape[-1] if pixels.ndim == 3 else 1
    rgb = channels in (3, 4) and pixels.dtype == "uint8" and not metadata.channel_names
    if channels > 1 and not rgb:
        names = (
            list(metadata.channel_names)
            if len(metadata.channel_names) == channels
            else [f"channel {c}" for c in range(channels)]
        )
        kwargs.update(channel_axis=2, name=[f"{name} {n}" for n in names])
    return [(pixels, kwargs, "image")]


__all__ = [
    "annotation_kind",
    "image_layers",
    "napari_get_reader",
    "read_annotation_files",
    "read_layers",
]

"""napari writers: COCO JSON, Pascal VOC XML, QuPath GeoJSON, Fiji ROI sets, label TIFF pairs
and counts CSV.

Each writer turns the layers napari hands it into Annotations with
:func:`._layers.layer_data_to_annotation` (layers grouped per image; Image layers only size
box-only groups) and writes them through :func:`napari_cellquant.core.io.write_annotations`
or the format module, atomically.

Overwriting: these functions pass ``overwrite=True``. They are only called by napari after
the user chose the path in the save dialog, which already asked before replacing an existing
file, or by ``viewer.layers.save(path)``, where the script names the path on purpose (napari's
own writers replace files too). The command line and the core keep refusing by default.

Errors: napari's ``viewer.layers.save`` treats any ``ValueError`` from a writer as "this
writer does not apply" and only warns that the plugin is not a valid writer, which would hide
our message (``InputError`` is a ``ValueError``). The writers therefore re-raise input
problems as a plain :class:`~napari_cellquant.core.errors.CellquantError` with the same
message, chained to the original, so napari shows the user what is wrong.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ._layers import layer_data_to_annotation
from .core.annotation import Annotation
from .core.errors import CellquantError, InputError

FullLayerData = tuple[Any, Mapping[str, Any], str]
_F = TypeVar("_F", bound=Callable[..., list[str]])


def _shown_by_napari(writer: _F) -> _F:
    """Re-raise InputError as CellquantError, which napari does not swallow (see above)."""

    @functools.wraps(writer)
    def wrapped(*args: Any, **kwargs: Any) -> list[str]:
        try:
            return writer(*args, **kwargs)
        except InputError as exc:
            raise CellquantError(str(exc)) from exc

    return wrapped  # type: ignore[return-value]


def _annotations(layer_data: Sequence[FullLayerData]) -> list[Annotation]:
    return layer_data_to_annotation(list(layer_data))


@_shown_by_napari
def write_coco(path: str, layer_data: Sequence[FullLayerData]) -> list[str]:
    """Write Labels (instances) and Shapes (boxes) layers as one COCO JSON file.

    Instances are written as polygons (RLE where a polygon cannot be exact, e.g. holes).
    """
    from .core.io import write_annotations

    written = write_annotations(_annotations(layer_data), path, to="coco", overwrite=True)
    return [str(p) for p in written]


@_shown_by_napari
def write_voc(path: str, layer_data: Sequence[FullLayerData]) -> list[str]:
    """Write boxes (and each instance's bounding box) as Pascal VOC XML.

    One image: exactly ``path``. Several images: one ``<image stem>.xml`` each in the folder
    ``path`` without its suffix (VOC holds one image per file).
    """
    import xml.etree.ElementTree as ET

    from .core.io import write_annotations
    from .core.io.atomic import atomic_path
    from .core.io.voc import voc_element

    annotations = _annotations(layer_data)
    target = Path(path)
    if len(annotations) > 1:
        folder = target.with_suffix("") if target.suffix else target
        return [str(p) for p in write_annotations(annotations, folder, to="voc", overwrite=True)]
    element = voc_element(annotations[0])
    with atomic_path(target, overwrite=True) as tmp:
        ET.ElementTree(element).write(tmp, encoding="utf-8", xml_declaration=False)
    return [str(target)]


def _one_file_per_image(path: str, layer_data: Sequence[FullLayerData], to: str) -> list[str]:
    """One image: exactly ``path``. Several: one file each in the folder ``path`` without its
    suffix (these formats hold one image per file)."""
    from .core.io import write_annotations

    annotations = _annotations(layer_data)
    target = Path(path)
    if len(annotations) > 1:
        target = target.with_suffix("") if target.suffix else target
    return [str(p) for p in write_annotations(annotations, target, to=to, overwrite=True)]


@_shown_by_napari
def write_geojson(path: str, layer_data: Sequence[FullLayerData]) -> list[str]:
    """Write instances (polygons with holes) and boxes as QuPath GeoJSON, with measurements."""
    return _one_file_per_image(path, layer_data, "geojson")


@_shown_by_napari
def write_roiset(path: str, layer_data: Sequence[FullLayerData]) -> list[str]:
    """Write instances and boxes as an ImageJ / Fiji ``RoiSet.zip``."""
    return _one_file_per_image(path, layer_data, "roiset")


@_shown_by_napari
def write_label_tiff(path: str, data: Any, meta: Mapping[str, Any]) -> list[str]:
    """Write one Labels layer as ``<stem>_instances.tif`` plus ``<stem>_classes.tif``.

    The pair keeps the classes, and the reader opens ``<stem>_instances.tif`` with them.
    ``<stem>`` is the chosen file's stem without a trailing ``_instances``, so saving as
    ``cells.tif`` or ``cells_instances.tif`` both give ``cells_instances.tif`` and
    ``cells_classes.tif`` beside each other.
    """
    from .core.io import write_annotations

    (annotation,) = layer_data_to_annotation([(data, meta, "labels")])
    target = Path(path)
    stem = target.stem
    if stem.lower().endswith("_instances") and len(stem) > len("_instances"):
        stem = stem[: -len("_instances")]
    # The masks writer names files after the image stem: give it the chosen stem, keeping
    # the image's suffix so the folder's classes.json still records a plausible image name.
    annotation.image_name = stem + (Path(annotation.image_name).suffix or ".png")
    written = write_annotations([annotation], target.parent, to="masks", overwrite=True)
    return [str(p) for p in written]


@_shown_by_napari
def write_counts_csv(path: str, layer_data: Sequence[FullLayerData]) -> list[str]:
    """Write objects per class and image (every class listed, even at 0) as CSV."""
    from .core.io import write_annotations

    written = write_annotations(_annotations(layer_data), path, to="csv", overwrite=True)
    return [str(p) for p in written]


__all__ = [
    "write_coco",
    "write_counts_csv",
    "write_geojson",
    "write_label_tiff",
    "write_roiset",
    "write_voc",
]

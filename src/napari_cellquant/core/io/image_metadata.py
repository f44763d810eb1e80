"""What an image file says about its pixels: physical pixel size and channel names.

Read from the file's header only (no pixels), in this order:

1. OME-TIFF: ``Pixels`` ``PhysicalSizeX`` / ``PhysicalSizeY`` with their ``...Unit``
   (default µm, as the OME schema says) and the ``Channel`` names;
2. ImageJ TIFF: the X/Y resolution tags in the ``unit`` of the ImageJ description
   (``micron``, ``um``, ``nm`` ...); ImageJ's ``spacing`` is the z step, not used for 2-D;
3. plain TIFF resolution tags in centimetres or inches. 72, 96, 150, 300 and 600 dots per
   inch are what image editors and cameras write for printing, not a microscope's pixel size,
   so they are ignored (with a debug message): a 72 dpi photo is not 353 µm per pixel.

Anything else (PNG, JPEG, TIFF without a physical unit) has no pixel size.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import tifffile

from ..errors import InputError

__all__ = ["ImageMetadata", "read_image_metadata"]

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]

#: micrometres per unit, for the unit spellings OME, ImageJ and TIFF use
MICROMETRES_PER: dict[str, float] = {
    "m": 1e6,
    "cm": 1e4,
    "mm": 1e3,
    "µm": 1.0,
    "μm": 1.0,
    "um": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "pm": 1e-6,
    "å": 1e-4,
    "angstrom": 1e-4,
    "in": 25400.0,
    "inch": 25400.0,
}
_PRINT_DPI = (72.0, 96.0, 150.0, 300.0, 600.0)


@dataclass(frozen=True)
class ImageMetadata:
    """Pixel size ``(rows, columns)`` in µm (None when the file gives none), channel names
    (empty when it names none) and where the size came from (``ome``, ``imagej``, ``tiff``)."""

    pixel_size_um: tuple[float, float] | None = None
    channel_names: tuple[str, ...] = ()
    source: str = ""


def _micrometres(value: float, unit: str | None, path: Path) -> float | None:
    factor = MICROMETRES_PER.get((unit or "µm").strip().lower().replace("\\u00b5", "µ"))
    if factor is None:
        log.warning(
            "%s: pixel size unit %r is not a length this tool knows; the pixel size is not used",
            path,
            unit,
        )
        return None
    return value * factor if value > 0 else None


def _ome(tif: tifffile.TiffFile, path: Path) -> ImageMetadata | None:
    if not tif.is_ome or not tif.ome_metadata:
        return None
    try:
        root = ET.fromstring(tif.ome_metadata)
    except ET.ParseError as exc:
        log.warning("%s: unreadable OME-XML (%s); no pixel size", path, exc)
        return None
    pixels = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None
    names = tuple(c.get("Name", "") for c in pixels if c.tag.rsplit("}", 1)[-1] == "Channel")
    size = None
    sx, sy = pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeY", pixels.get("PhysicalSizeX"))
    if sx is not None and sy is not None:
        x = _micrometres(float(sx), pixels.get("PhysicalSizeXUnit"), path)
        y = _micrometres(float(sy), pixels.get("PhysicalSizeYUnit"), path)
        size = (y, x) if x and y else None
    return ImageMetadata(size, names if any(names) else (), "ome" if size else "")


def _resolution(
    page: tifffile.TiffPage, tif: tifffile.TiffFile, path: Path
) -> ImageMetadata | None:
    tags = page.tags
    if "XResolution" not in tags:
        return None
    per_unit = []
    for key in ("XResolution", "YResolution" if "YResolution" in tags else "XResolution"):
        numerator, denominator = tags[key].value
        per_unit.append(numerator / denominator if denominator else 0.0)
    if min(per_unit) <= 0:
        return None
    imagej_unit = (tif.imagej_metadata or {}).get("unit") if tif.is_imagej else None
    resolution_unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
    if imagej_unit:
        unit, source = str(imagej_unit), "imagej"
    elif resolution_unit == 3:
        unit, source = "cm", "tiff"
    elif resolution_unit == 2:
        if any(abs(p - dpi) < 1e-6 for p in per_unit for dpi in _PRINT_DPI):
            log.debug("%s: %g dpi is a print resolution, not a pixel size", path, per_unit[0])
            return None
        unit, source = "inch", "tiff"
    else:  # ResolutionUnit NONE without an ImageJ unit: no physical size
        return None
    x = _micrometres(1.0 / per_unit[0], unit, path)
    y = _micrometres(1.0 / per_unit[1], unit, path)
    return ImageMetadata((y, x), (), source) if x and y else None


def read_image_metadata(path: PathLike) -> ImageMetadata:
    """The pixel size and channel names ``path`` records (see the module docstring)."""
    p = Path(path)
    if p.suffix.lower() not in (".tif", ".tiff"):
        return ImageMetadata()
    try:
        with tifffile.TiffFile(p) as tif:
            ome = _ome(tif, p)
            if ome is not None and ome.pixel_size_um is not None:
                return ome
            found = _resolution(tif.pages.first, tif, p)
    except (OSError, ValueError, tifffile.TiffFileError) as exc:
        raise InputError(f"cannot read the TIFF header ({exc})", source=p) from exc
    names = ome.channel_names if ome is not None else ()
    if found is None:
        return ImageMetadata(None, names, "")
    return ImageMetadata(found.pixel_size_um, names, found.source)

"""The image an annotation file refers to: where it is, and how its size decides the grid.

Shared by every reader of files that name their images (COCO, VOC, QuPath GeoJSON, ImageJ ROI
sets): :func:`search_dirs` lists where an image may sit, :func:`resolve_image_size` decides,
from the annotations themselves, whether coordinates drawn on a full-size original must be
rescaled to the smaller image found beside them or are already its pixels.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Literal, NamedTuple

from ..errors import InputError
from .images import image_shape

__all__ = [
    "BOUNDS_TOLERANCE",
    "SIZE_MISMATCH_MODES",
    "SizeDecision",
    "SizeMismatch",
    "check_size_mismatch",
    "image_named_like",
    "resolve_image_size",
    "search_dirs",
]

PathLike = str | os.PathLike[str]
#: What to do when the image found differs in size from the size the file declares.
SizeMismatch = Literal["auto", "rescale", "keep"]
SIZE_MISMATCH_MODES: tuple[str, ...] = ("auto", "rescale", "keep")
#: How far (pixels) a box or polygon may reach outside the image before it is an error.
BOUNDS_TOLERANCE = 1.0


def search_dirs(annotation_file: Path, images_dir: PathLike | None) -> list[Path]:
    """Where images may sit: ``images_dir``, beside the file, ``images/`` next to it or above."""
    here = annotation_file.parent
    dirs = [Path(images_dir)] if images_dir is not None else []
    dirs += [here, here / "images", here.parent / "images", here.parent]
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


class SizeDecision(NamedTuple):
    """How an image's annotations map onto its pixels (see :func:`resolve_image_size`)."""

    #: (rows, cols) of the pixel grid the annotation lives in.
    shape: tuple[int, int]
    #: (sy, sx) applied to the file's coordinates, or None when they are taken as they are.
    scale: tuple[float, float] | None
    #: None when the sizes agree (or no image was found), else ``"kept"`` or ``"rescaled"``.
    mismatch: str | None

    def meta(self, declared: tuple[int, int]) -> dict[str, Any]:
        """The ``Annotation.meta`` entries that record this decision."""
        out: dict[str, Any] = {}
        if self.mismatch is not None:
            out["size_mismatch"] = self.mismatch
        if self.scale is not None:
            out["rescaled_from"] = declared
            out["scale"] = self.scale
        return out


def check_size_mismatch(value: str) -> SizeMismatch:
    """``value`` if it is a valid ``size_mismatch`` option, else InputError."""
    if value not in SIZE_MISMATCH_MODES:
        raise InputError(
            f"unknown size_mismatch {value!r}; use one of {', '.join(SIZE_MISMATCH_MODES)}"
        )
    return value  # type: ignore[return-value]


def resolve_image_size(
    source: Path,
    image_name: str,
    image_path: Path | None,
    declared: tuple[int, int],
    extent: tuple[float, float],
    *,
    size_mismatch: SizeMismatch = "auto",
) -> SizeDecision:
    """Decide, from the annotations themselves, how they map onto the image found beside them.

    When the real image differs from the size the file declares, either the coordinates were
    drawn on a full-size original and must be rescaled, or they are already image pixels and
    only the declared size is stale (the NET data: declared 1920x1440, JPEG 1024x768, boxes
    reaching exactly x 1024). ``"auto"`` tells the two apart by ``extent``: when every object
    lies inside the real image (within :data:`BOUNDS_TOLERANCE`) the coordinates are kept,
    otherwise (objects beyond the image, yet inside the declared size) they are rescaled by
    real / declared. Either way a warning names the file, both sizes and the decision: never
    silent.

    Parameters
    ----------
    source
        The annotation file (named in warnings and errors).
    image_name, image_path
        The image as the file names it, and where it was found (None: not found, nothing to
        decide).
    declared
        (rows, cols) the file declares.
    extent
        (max y, max x) the image's annotations reach, in the file's coordinates (box
        ``y + h`` / ``x + w``, polygon vertices, last RLE pixel + 1); (0, 0) when none.
    size_mismatch
        ``"auto"``; ``"rescale"`` or ``"keep"`` force a choice (``"keep"`` with objects beyond
        the image is an InputError: nothing is clipped).

    Returns
    -------
    SizeDecision
        The grid, the scale (None unless rescaled) and ``"kept"``/``"rescaled"`` (None when
        the sizes agree).
    """
    if image_path is None:
        return SizeDecision(declared, None, None)
    real = image_shape(image_path)
    if real == declared:
        return SizeDecision(declared, None, None)
    tol = BOUNDS_TOLERANCE
    fits = extent[0] <= real[0] + tol and extent[1] <= real[1] + tol
    sizes = (
        f"{source}: image {image_name} is {real[1]}x{real[0]} (width x height) but the "
        f"annotations declare {declared[1]}x{declared[0]}"
    )
    reach = f"objects reach x {extent[1]:g}, y {extent[0]:g}"
    if size_mismatch == "keep" and not fits:
        raise InputError(
            f"image {image_name} is {real[1]}x{real[0]} but the annotations declare "
            f"{declared[1]}x{declared[0]}, and with size_mismatch='keep' the {reach}, beyond "
            "the image (not clipped: rescale them, or fix the annotation or its image)",
            source=source,
        )
    if size_mismatch == "keep" or (size_mismatch == "auto" and fits):
        why = (
            "size_mismatch='keep', so"
            if size_mismatch == "keep"
            else "all objects lie inside the image, so"
        )
        warnings.warn(
            f"{sizes}; {why} their coordinates are taken as image pixels and the declared "
            "size is ignored",
            UserWarning,
            stacklevel=4,
        )
        return SizeDecision(real, None, "kept")
    sy, sx = real[0] / declared[0], real[1] / declared[1]
    why = "size_mismatch='rescale'" if size_mismatch == "rescale" else f"{reach}, beyond the image"
    warnings.warn(
        f"{sizes}; rescaling coordinates by x {sx:.6g}, y {sy:.6g} ({why})",
        UserWarning,
        stacklevel=4,
    )
    return SizeDecision(real, (sy, sx), "rescaled")


def image_named_like(
    annotation_file: Path, stem: str, images_dir: PathLike | None
) -> tuple[str, Path | None]:
    """``(file name, path)`` of the image called ``stem`` (any image suffix) where
    :func:`search_dirs` looks; ``(stem + ".png", None)`` when there is none. For formats that
    name the image only through their own file name (QuPath GeoJSON, ImageJ ROI sets)."""
    from .images import find_image

    found = find_image(stem, search_dirs(annotation_file, images_dir)) if stem else None
    return (found.name, found) if found is not None else (f"{stem}.png", None)

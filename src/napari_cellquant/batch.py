"""Predict over many images and write the same files the plugin writes.

Layout of an output folder::

    OUTDIR/annotations.json          COCO predictions (file_name = input file name, score)
    OUTDIR/counts.csv                image,class,count
    OUTDIR/masks/<stem>_instances.tif and <stem>_classes.tif

Per-image masks are written as each image finishes; the merged COCO and counts at the end.
An image that fails is named with its error and the others still complete.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .core.annotation import Annotation
from .core.errors import CellquantError, InputError
from .core.predict import Model, predict

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    """What a batch run produced: annotations per image, failures per image, files written."""

    annotations: list[Annotation] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)


def collect_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Image files named by ``inputs`` (files, folders, or glob patterns), sorted by file name."""
    from .core.io.images import IMAGE_SUFFIXES

    found: dict[Path, None] = {}
    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            matches = [p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        elif path.exists():
            matches = [path]
        else:
            matches = [Path(p) for p in glob.glob(text)]
            if not matches:
                raise InputError(path, "no such file, folder or matching pattern")
        for match in matches:
            if match.is_file() and not match.name.startswith("."):
                found[match] = None
    images = sorted(found, key=lambda p: (p.name, str(p)))
    if not images:
        raise InputError(None, "no images found in " + ", ".join(map(str, inputs)))
    names = [p.name for p in images]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(None, f"two inputs share the file name {duplicates[0]!r}; outputs are "
                         "keyed by file name, so give each image a unique name")
    return images


def predict_images(
    images: Sequence[Path],
    model: Model,
    outdir: Path,
    *,
    tile: int | None = None,
    overlap: float | None = None,
    diameter: float | None = None,
    overwrite: bool = False,
    on_image: Callable[[int, int, Path, str], None] | None = None,
) -> BatchResult:
    """Run ``model`` on every image; write masks per image and COCO + counts at the end."""
    from .core.io import write_annotations
    from .core.io.images import read_image

    result = BatchResult()
    for index, path in enumerate(images):
        try:
            annotation = predict(read_image(path), model, tile=tile, overlap=overlap,
                                 diameter=diameter)
            annotation.image_name = path.name
            annotation.image_path = path
            result.written += write_annotations(
                [annotation], outdir / "masks", to="masks", overwrite=overwrite
            )
        except Exception as exc:  # one bad image must not cost the others their results
            message = str(exc) if isinstance(exc, CellquantError) else f"{type(exc).__name__}: {exc}"
            log.debug("%s failed", path, exc_info=True)
            result.failures.append((path, message))
            status = f"failed: {message}"
        else:
            result.annotations.append(annotation)
            status = f"{len(annotation.instance_ids()) + len(annotation.boxes)} objects"
        if on_image is not None:
            on_image(index + 1, len(images), path, status)
    if result.annotations:
        for to, name in (("coco", "annotations.json"), ("csv", "counts.csv")):
            result.written += write_annotations(
                result.annotations, outdir / name, to=to, encoding="rle", overwrite=overwrite
            )
    return result

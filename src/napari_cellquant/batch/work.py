"""One image's work, the same in-process and on a dask worker: read, predict, encode, thumbnail.

A worker gets a :class:`ModelSpec` (a model name or card path, never the network) and loads the
model itself, once per process; what comes back is an :class:`ImageResult` that the driver
writes. Every failure of one image is caught here and returned as its ``error``, so one bad
file never costs the others their results.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.annotation import Annotation
from ..core.errors import CellquantError
from ..core.predict import Model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """How a worker loads the model: the arguments of :func:`~..core.predict.load_model`.

    ``torch_threads`` sets ``torch.set_num_threads`` in the worker process (None leaves the
    worker's own setting, e.g. dask's ``OMP_NUM_THREADS``).
    """

    name_or_path: str
    device: str = "auto"
    weights: str | None = None
    torch_threads: int | None = None

    def load(self) -> Model:
        from ..core.predict import load_model

        model = load_model(self.name_or_path, self.device, weights=self.weights)
        if self.torch_threads is not None and model.network is not None:
            import torch

            torch.set_num_threads(max(1, int(self.torch_threads)))
        return model


@dataclass(frozen=True)
class Settings:
    """Prediction settings shared by every image of a run."""

    tile: int | None = None
    overlap: float | None = None
    diameter: float | None = None
    pixel_size_um: float | None = None  # for images whose files do not record one
    flip_views: int | None = None  # None: the card's

    def as_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "tile": self.tile,
            "overlap": self.overlap,
            "diameter": self.diameter,
            "pixel_size_um": self.pixel_size_um,
        }
        if self.flip_views is not None:  # absent, so folders from before it still resume
            record["flip_views"] = self.flip_views
        return record

    def pixel_size_of(self, path: Path) -> tuple[float, float] | None:
        """(rows, columns) µm per pixel: what the file records, else the run's setting."""
        from ..core.io.image_metadata import read_image_metadata

        recorded = read_image_metadata(path).pixel_size_um
        if recorded is not None or self.pixel_size_um is None:
            return recorded
        return (self.pixel_size_um, self.pixel_size_um)


@dataclass
class ImageResult:
    """What one image gave: its objects, their COCO entries and thumbnail, or an error."""

    path: Path
    annotation: Annotation | None = None
    coco: dict[str, Any] | None = None  # coco_dict([annotation], "rle") without "info"
    thumbnail: bytes | None = None  # JPEG
    thumbnail_shape: tuple[int, int] = (0, 0)
    overlay: bytes | None = None  # JPEG, the larger view a thumbnail opens
    objects: list[dict[str, Any]] | None = None  # core.measure.object_table rows
    error: str | None = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def ok(self) -> bool:
        return self.error is None


def describe_error(exc: BaseException, path: Path | None = None) -> str:
    """One line for a person: our errors already name the file, others get their type.

    The image's own path is left out when the error names it (failures.csv and the CLI
    print the path beside the message), so a failing file is named once.
    """
    from ..core.errors import InputError

    if isinstance(exc, InputError) and exc.source is not None and path is not None:
        if Path(exc.source) == Path(path):
            return exc.problem
    if isinstance(exc, CellquantError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def predict_one(model: Model, path: Path, settings: Settings) -> ImageResult:
    """Read ``path``, run ``model`` on it and prepare everything the driver writes."""
    from ..core.io.coco import coco_dict
    from ..core.io.images import read_image
    from ..core.measure import object_table
    from ..core.predict import predict
    from .report import OVERLAY_SIZE, render_thumbnail, thumbnail_shape

    path = Path(path)
    try:
        pixels = read_image(path)
        pixel_size = settings.pixel_size_of(path)
        annotation = predict(
            pixels,
            model,
            tile=settings.tile,
            overlap=settings.overlap,
            diameter=settings.diameter,
            pixel_size_um=None if pixel_size is None else pixel_size[1],
            flip_views=settings.flip_views,
        )
        annotation.image_name = path.name
        annotation.image_path = path
        if pixel_size is not None:
            annotation.meta["pixel_size_um"] = pixel_size
        coco = coco_dict([annotation], encoding="rle")
        coco.pop("info", None)  # dated; the merged file gets its own
        thumbnail = render_thumbnail(pixels, annotation)
        overlay = render_thumbnail(pixels, annotation, OVERLAY_SIZE)
        objects = object_table(annotation, pixels, pixel_size_um=pixel_size)
    except Exception as exc:  # one bad image must not cost the others their results
        log.debug("%s failed", path, exc_info=True)
        return ImageResult(path=path, error=describe_error(exc, path))
    return ImageResult(
        path=path,
        annotation=annotation,
        coco=coco,
        thumbnail=thumbnail,
        thumbnail_shape=thumbnail_shape(annotation.shape),
        overlay=overlay,
        objects=objects,
    )


# --- on a dask worker ------------------------------------------------------------------------
_models: dict[ModelSpec, Model] = {}
_models_lock = threading.Lock()


def _model_for(spec: ModelSpec) -> Model:
    """The worker process's model for ``spec``, loaded on first use."""
    with _models_lock:
        model = _models.get(spec)
        if model is None:
            log.info("worker %d loads %s", os.getpid(), spec.name_or_path)
            model = _models[spec] = spec.load()
        return model


def predict_on_worker(spec: ModelSpec, path: str, settings: Settings) -> ImageResult:
    """The task a dask worker runs for one image (model loading failures included)."""
    try:
        model = _model_for(spec)
    except Exception as exc:
        return ImageResult(
            path=Path(path), error=f"loading the model failed: {describe_error(exc)}"
        )
    return predict_one(model, Path(path), settings)

"""The public prediction API: ``load_model`` and ``predict``, for learned and classical models
alike.

Long work is a generator (:func:`iter_predict`) that yields progress and can be cancelled at
each yield; :func:`predict` runs it to the end for scripts and the CLI, and the napari widget
runs the same generator in a ``thread_worker``.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .annotation import Annotation
from .errors import InputError
from .models.card import ModelCard
from .models.registry import WeightsError, get_card, resolve_weights
from .scale import ImageScale

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
CancelCallback = Callable[[], bool]


@dataclass
class Model:
    """A model ready to run: its card, and for learned models the network on its device."""

    card: ModelCard
    network: Any = None  # torch.nn.Module for learned models, None for classical pipelines
    device: Any = None  # torch.device for learned models

    @property
    def name(self) -> str:
        return self.card.name


def load_model(
    name_or_path: str | os.PathLike[str],
    device: str = "auto",
    *,
    weights: str | os.PathLike[str] | None = None,
) -> Model:
    """Load a built-in model by name, or a trained one from its card or weights file.

    Parameters
    ----------
    name_or_path
        A registry name (see ``cellquant models``), a model card ``.json``, or a weights
        file with its card beside it.
    device
        ``"auto"`` (cuda, then mps, then cpu), or any torch device string.
    weights
        A local weights file to use instead of the card's; ``"random"`` runs the network
        with untrained weights (for benchmarks and tests only).
    """
    card = get_card(name_or_path)
    if card.kind == "classical":
        return Model(card=card)
    import torch

    from .inference import choose_device
    from .models.efficientnet import EfficientNetClassifier
    from .models.networks import build_network

    network: torch.nn.Module
    if card.task == "classify":
        network = EfficientNetClassifier(card.architecture)
    else:
        network = build_network(card.architecture)
    if weights != "random":
        path = resolve_weights(card) if weights is None else os.fspath(weights)
        network.load_state_dict(_read_state_dict(path, card))
    dev = choose_device(device)
    network.to(dev).eval()
    if dev.type == "cuda":
        # Module.to takes memory_format at run time; torch's stubs do not list it
        network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return Model(card=card, network=network, device=dev)


def _read_state_dict(path: str | os.PathLike[str], card: ModelCard) -> dict[str, Any]:
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"{card.name}: weights file {path} does not exist") from None
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise WeightsError(f"{path}: not a readable PyTorch weights file ({exc})") from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: holds no state dict")
    return state


def iter_predict(
    image: np.ndarray,
    model: Model,
    *,
    tile: int | None = None,
    overlap: float | None = None,
    batch_size: int = 4,
    diameter: float | str | None = None,
    pixel_size_um: float | None = None,
) -> Generator[tuple[int, int], None, Annotation]:
    """Yield ``(done, total)`` progress steps; return the Annotation (``StopIteration.value``).

    ``diameter`` and ``pixel_size_um`` say how large the objects in ``image`` are (see
    :func:`predict`); the decision is recorded in the result's ``meta``: ``diameter_px``,
    ``diameter_source`` and ``zoom``.
    """
    from .scale import image_scale

    card = model.card
    if card.task == "classify":
        raise InputError(
            f"{card.name} classifies crops of cells another model found "
            "(blood-detector runs it); it does not find objects itself"
        )
    if card.class_set.startswith("blood") and (image.ndim == 2 or image.shape[-1] == 1):
        raise InputError(
            f"a grey image, but {card.name} tells blood cells apart by the "
            "stain's colours: give the colour (RGB) image"
        )
    estimator: Callable[[np.ndarray], Any] | None = None
    if model.network is not None:
        from .detector_scale import measure_diameter, measures_own_scale

        if measures_own_scale(model):  # a detector measures its own objects
            estimator = functools.partial(measure_diameter, model=model)
    scale = image_scale(
        image, card, diameter=diameter, pixel_size_um=pixel_size_um, estimator=estimator
    )
    if card.kind == "classical":
        from .classical import run_pipeline

        params = dict(card.params)
        if math.isfinite(scale.diameter):  # the pipelines express every size relative to it
            params["diameter"] = float(scale.diameter)
        yield (0, 1)
        annotation = run_pipeline(card.pipeline or card.name, image, params)
        yield (1, 1)
        return _record_scale(annotation, scale)
    from .inference import iter_predict_maps
    from .normalization import channel_last_view, make_normalizer

    zoom = scale.zoom
    pixels = to_model_channels(channel_last_view(_resize(channel_last_view(image), zoom)), card)
    steps = iter_predict_maps(
        pixels,
        model.network,
        tile=tile or card.tile,
        overlap=card.overlap if overlap is None else overlap,
        batch_size=batch_size,
        device=model.device,
        normalize=make_normalizer(pixels, card.normalization, card.input_channels),
    )
    while True:
        try:
            event = next(steps)
        except StopIteration as finished:
            maps = finished.value
            break
        try:
            yield (event.done, event.total)
        except GeneratorExit:
            steps.close()
            raise
    annotation = _maps_to_annotation(maps, card, pixels.shape[:2])
    if zoom != 1.0:
        annotation = _annotation_to_shape(annotation, image.shape[:2], zoom)
    if card.params.get("wbc_types"):  # a detector of plain WBCs names their types
        from .wbc_types import type_white_cells

        classifier = _classifier(str(card.params["wbc_types"]), str(model.device))
        annotation = type_white_cells(channel_last_view(image), annotation, classifier)
    return _record_scale(annotation, scale)


@functools.lru_cache(maxsize=4)
def _classifier(name: str, device: str) -> Model:
    """A helper model a card names (the WBC type classifier), loaded once per device."""
    return load_model(name, device)


def to_model_channels(pixels: np.ndarray, card: ModelCard) -> np.ndarray:
    """Channel-last ``pixels`` with the channels ``card``'s network takes (grey <-> RGB
    converted once, up front; unchanged when they already fit)."""
    from .inference import prepare_image

    if pixels.shape[-1] != card.input_channels:
        return prepare_image(pixels, card.input_channels)
    return pixels


def _record_scale(annotation: Annotation, scale: ImageScale) -> Annotation:
    annotation.meta.update(
        diameter_px=scale.diameter, diameter_source=scale.source, zoom=scale.zoom
    )
    return annotation


def _resize(image: np.ndarray, zoom: float) -> np.ndarray:
    if zoom == 1.0:
        return image
    from skimage.transform import rescale

    channel_axis = -1 if image.ndim == 3 else None
    resized = rescale(
        image.astype(np.float32),
        zoom,
        order=1,
        channel_axis=channel_axis,
        preserve_range=True,
        anti_aliasing=zoom < 1,
    )
    # keep the dtype: integer images are scaled by their dtype's range downstream
    if np.issubdtype(image.dtype, np.integer):
        return np.rint(resized).astype(image.dtype)
    return resized.astype(image.dtype, copy=False)


def _annotation_to_shape(annotation: Annotation, shape: tuple[int, ...], zoom: float) -> Annotation:
    """Bring a result found on a zoomed image back to the original pixel grid: labels by
    nearest neighbour, boxes scaled by the two grids' actual size ratio."""
    from skimage.transform import resize

    zoomed = annotation.labels.shape
    labels = resize(
        annotation.labels, shape[:2], order=0, preserve_range=True, anti_aliasing=False
    ).astype(np.int32)
    # the zoomed grid is rounded to whole pixels: scale by the ratio actually applied
    boxes = annotation.boxes.scaled(shape[1] / zoomed[1], shape[0] / zoomed[0])
    present = set(np.unique(labels).tolist())
    keep = {k: v for k, v in annotation.classes.items() if k in present}
    return annotation.copy(
        labels=labels,
        boxes=boxes,
        classes=keep,
        scores={k: v for k, v in annotation.scores.items() if k in keep},
        origins={k: v for k, v in annotation.origins.items() if k in keep},
    )


def _maps_to_annotation(
    maps: dict[str, np.ndarray], card: ModelCard, shape: tuple[int, ...]
) -> Annotation:
    from . import postprocess

    settings = dict(card.postprocess)
    classes = card.classes
    if "heatmap" in maps:
        boxes = postprocess.boxes_from_heatmap(
            maps["heatmap"],
            maps["size"],
            maps.get("offset"),
            stride=int(card.architecture["detector"]["stride"]),
            **settings,
        )
        if card.task == "boxes":
            return Annotation.empty(
                (shape[0], shape[1]), classes, boxes=boxes, meta={"model": card.name}
            )
        # a detector of instances: every box becomes an editable mask (its inscribed ellipse)
        labels, class_ids, scores = postprocess.instances_from_boxes(boxes, (shape[0], shape[1]))
        return Annotation(
            labels,
            classes,
            classes=class_ids,
            scores=scores,
            origins=dict.fromkeys(class_ids, "model"),
            meta={"model": card.name},
        )
    labels, class_ids, scores = postprocess.instances_from_maps(
        maps["classes"], distance=maps.get("distance"), boundary=maps.get("boundary"), **settings
    )
    return Annotation(
        labels,
        classes,
        classes=class_ids,
        scores=scores,
        origins=dict.fromkeys(class_ids, "model"),
        meta={"model": card.name},
    )


def predict(
    image: np.ndarray,
    model: Model,
    *,
    tile: int | None = None,
    overlap: float | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
    diameter: float | str | None = None,
    pixel_size_um: float | None = None,
) -> Annotation:
    """Run ``model`` on one 2-D image (grey, RGB or multi-channel, any size) and return its objects.

    Scale: the image is brought to the model's scale before inference and the result back
    to the image's pixel grid after (labels by nearest neighbour, boxes scaled); classical
    pipelines take the diameter as their unit of length.

    - ``diameter``: the typical diameter in pixels of the model's reference objects in this
      image (RBC for blood, nucleus for fluorescence and NETs, as the card's
      ``diameter_px``);
    - else ``pixel_size_um`` (micrometres per pixel), when the card states its own;
    - else the diameter is estimated from the image
      (:func:`~napari_cellquant.core.scale.estimate_diameter`, well under a second);
    - ``diameter="model"`` skips all that: the image is at the model's scale.

    The result's ``meta`` says what was used: ``diameter_px``, ``diameter_source`` (given,
    pixel_size, estimated, model) and ``zoom``; the decision is also logged.

    ``progress(done, total)`` is called as tiles finish; ``cancel()`` returning True stops the
    work at the next step with :class:`~napari_cellquant.core.errors.CancelledError`.
    """
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3):
        raise InputError(f"expected a 2-D image (H, W) or (H, W, C); got {np.shape(image)}")
    steps = iter_predict(
        image, model, tile=tile, overlap=overlap, diameter=diameter, pixel_size_um=pixel_size_um
    )
    from .drive import drive

    report = None if progress is None else (lambda step: progress(*step))
    return drive(steps, report, cancel, what="prediction")

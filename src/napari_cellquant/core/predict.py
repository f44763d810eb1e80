"""The public prediction API: ``load_model`` and ``predict``, for learned and classical models
alike.

Long work is a generator (:func:`iter_predict`) that yields progress and can be cancelled at
each yield; :func:`predict` runs it to the end for scripts and the CLI, and the napari widget
runs the same generator in a ``thread_worker``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .annotation import Annotation, Boxes
from .errors import InputError
from .models.card import ModelCard
from .models.registry import WeightsError, get_card, resolve_weights
from .scale import ImageScale, image_scale, median_object_diameter

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
CancelCallback = Callable[[], bool]


@dataclass
class Model:
    """A model ready to run: its card, and for learned models the network on its device."""

    card: ModelCard
    network: Any = None  # torch.nn.Module for learned models, None for classical pipelines
    device: Any = None  # torch.device for learned models (and a cells_from pipeline's helper)

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
        if not card.params.get("cells_from"):
            return Model(card=card)
        from .inference import choose_device  # the device of the model that finds its cells

        return Model(card=card, device=choose_device(device))
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
        network.load_state_dict(_with_class_bias(_read_state_dict(path, card), card))
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


def _with_class_bias(state: dict[str, Any], card: ModelCard) -> dict[str, Any]:
    """``state`` with ``params.class_logit_bias`` (class name -> added logit) in the bias of
    the class head: a prior shift calibrated for these weights, such as the one that keeps
    blood-unet from calling ordinary red cells infected. Kept out of the weights file so
    that the card shows it and a lab can set it back to 0."""
    bias = card.params.get("class_logit_bias")
    if not bias:
        return state
    key = "heads.classes.bias"
    if key not in state:
        raise WeightsError(f"{card.name}: params.class_logit_bias needs a class head ({key})")
    shifted = state[key].clone()
    for name, value in bias.items():
        if name not in card.classes.names:
            raise InputError(
                f"{card.name}: params.class_logit_bias names {name!r}, not a class of "
                f"{card.class_set} ({', '.join(card.classes.names)})"
            )
        shifted[card.classes.id_of(name)] += float(value)  # channel 0 is the background
    return {**state, key: shifted}


def iter_predict(
    image: np.ndarray,
    model: Model,
    *,
    tile: int | None = None,
    overlap: float | None = None,
    batch_size: int = 4,
    diameter: float | str | None = None,
    pixel_size_um: float | None = None,
    flip_views: int | None = None,
) -> Generator[tuple[int, int], None, Annotation]:
    """Yield ``(done, total)`` progress steps; return the Annotation (``StopIteration.value``).

    ``diameter``, ``pixel_size_um`` and ``flip_views`` are as in :func:`predict`; the scale
    decision is recorded in the result's ``meta``: ``diameter_px``, ``diameter_source`` and
    ``zoom``.
    """

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
    views = flip_views_of(card, flip_views)
    estimator: Callable[[np.ndarray], Any] | None = None
    if model.network is not None:
        from .detector_scale import measure_diameter, measures_own_scale

        if measures_own_scale(model):  # a detector measures its own objects
            estimator = functools.partial(measure_diameter, model=model)
        elif card.params.get("size_model"):  # a segmenter reads them from its features
            from .size_model import regress_diameter

            estimator = functools.partial(regress_diameter, model=model)
        elif card.params.get("scale_from"):
            estimator = functools.partial(measure_diameter, model=_scale_helper(card, model))
    scale = image_scale(
        image, card, diameter=diameter, pixel_size_um=pixel_size_um, estimator=estimator
    )
    if card.kind == "classical":
        from .classical import run_pipeline

        params = dict(card.params)
        if math.isfinite(scale.diameter):  # the pipelines express every size relative to it
            params["diameter"] = float(scale.diameter)
        yield (0, 1)
        # the user's scale holds for the cell finder too; an estimate it makes (and checks) itself
        known = scale.diameter if scale.source in ("given", "pixel_size") else None
        find_cells = cell_finder(params.pop("cells_from", None), str(model.device), known)
        annotation = run_pipeline(card.pipeline or card.name, image, params, find_cells)
        yield (1, 1)
        return _record_scale(annotation, scale)
    run = functools.partial(
        _network_pass,
        image,
        model,
        tile=tile,
        overlap=overlap,
        batch_size=batch_size,
        flip_views=views,
    )
    annotation = yield from run(scale.zoom)
    if card.params.get("refine_scale") and diameter is None:
        annotation, scale = yield from _refined(image, card, annotation, scale, run)
    if card.params.get("wbc_types"):  # a detector of plain WBCs names their types
        from .normalization import channel_last_view
        from .wbc_types import type_white_cells

        classifier = _helper_model(str(card.params["wbc_types"]), str(model.device))
        annotation = type_white_cells(channel_last_view(image), annotation, classifier)
    return _record_scale(annotation, scale)


def takes_flip_views(card: ModelCard) -> bool:
    """Whether the model's maps can be averaged over mirror views: a learned segmentation
    network's can; a box detector's heads and a weight-free pipeline have none."""
    return (
        card.kind == "learned"
        and card.task != "classify"
        and not (card.architecture or {}).get("detector")
    )


def flip_views_of(card: ModelCard, flip_views: int | None) -> int:
    """How many mirror views of each tile the network averages: ``flip_views`` when given
    (1, 2 or 4), else the card's ``params.flip_views`` (1 without one). A user trades the
    card's accuracy for speed here (4 views are 4 network passes)."""
    if flip_views is None:
        return int(card.params.get("flip_views", 1))
    if isinstance(flip_views, bool) or flip_views not in (1, 2, 4):
        raise InputError(f"flip views must be 1, 2 or 4, got {flip_views!r}")
    if flip_views > 1 and not takes_flip_views(card):
        raise InputError(
            f"{card.name} has no segmentation maps to average over mirror views: flip views "
            "are for learned segmentation models (box detectors and weight-free pipelines "
            "run once)"
        )
    return int(flip_views)


#: fewest objects whose median size says anything about the scale
_MIN_OBJECTS_FOR_SCALE = 3


def _refined(
    image: np.ndarray,
    card: ModelCard,
    annotation: Annotation,
    scale: ImageScale,
    run: Callable[[float], Generator[tuple[int, int], None, Annotation]],
) -> Generator[tuple[int, int], None, tuple[Annotation, ImageScale]]:
    """Run again at the scale of the model's own objects while their median diameter is off
    the card's by more than ``refine_scale["tolerance"]`` (at most ``["rounds"]`` times).

    Only an estimated (or assumed) scale is refined, never one the user or the pixel size
    gave, nor a size model's reading: on the 39 inner DSB2018 images ``fluo-resunet``
    did better without the check (F1 0.849 both, count error 8.7 % against 10.8 %), by the
    rule set before that trial (drop it if F1 is higher and the count error no worse).

    The weight-free estimate misreads textured or sparse fields; objects found at a wrong
    scale are still about the right size, so each round usually lands closer, though not
    always: a network zoomed far in can take texture for objects, each round smaller
    than the last. So the round whose objects are closest to the card's size is kept.
    """
    reference = card.typical_diameter
    read_by_size_model = scale.estimate is not None and scale.estimate.reader == "size model"
    if scale.source not in ("estimated", "model") or reference is None or read_by_size_model:
        return annotation, scale
    settings = card.params["refine_scale"]
    tolerance = math.log(float(settings.get("tolerance", 1.15)))
    rounds = int(settings.get("rounds", 1))
    closest = (math.inf, annotation, scale)
    for done in range(rounds + 1):
        measured = median_object_diameter(annotation.labels, min_objects=_MIN_OBJECTS_FOR_SCALE)
        off = math.inf if measured is None else abs(math.log(measured * scale.zoom / reference))
        if off < closest[0]:
            closest = (off, annotation, scale)
        if measured is None or off <= tolerance or done == rounds:
            break
        scale = dataclasses.replace(image_scale(image, card, diameter=measured), source="refined")
        annotation = yield from run(scale.zoom)
    return closest[1], closest[2]


def _network_pass(
    image: np.ndarray,
    model: Model,
    zoom: float,
    *,
    tile: int | None,
    overlap: float | None,
    batch_size: int,
    flip_views: int,
) -> Generator[tuple[int, int], None, Annotation]:
    """One tiled pass of the network at ``zoom``; the objects come back at image scale."""
    from .inference import iter_predict_maps
    from .normalization import channel_last_view, make_normalizer, neutral_pixel

    card = model.card
    # channels become the network's band by band, in the normaliser
    pixels = _resize(channel_last_view(image), zoom)
    normalize = make_normalizer(pixels, card.normalization, card.input_channels)
    border = _edge_border(card)
    if border:
        pixels = _framed(
            pixels, border, neutral_pixel(pixels, card.normalization, card.input_channels)
        )
    steps = iter_predict_maps(
        pixels,
        model.network,
        tile=tile or card.tile,
        overlap=card.overlap if overlap is None else overlap,
        batch_size=batch_size,
        device=model.device,
        normalize=normalize,
        flip_views=flip_views,
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
    inner = (pixels.shape[0] - 2 * border, pixels.shape[1] - 2 * border)
    annotation = _maps_to_annotation(maps, card, inner, border)
    if zoom != 1.0:
        annotation = _annotation_to_shape(annotation, image.shape[:2], zoom)
    return annotation


def _edge_border(card: ModelCard) -> int:
    """Pixels of neutral frame a detector's card asks for around each image (model scale).

    A detector learns the image's edge as the edge of its training crop (or a band of
    padding, 0 after normalising), with cells cut there. Tiled inference mirrors the image
    beyond its edge, where a cut cell and its mirror look like one whole cell, and cut cells
    were missed or misread (a cut WBC called an RBC, platelet slivers lost). A frame of the
    colour that normalises to 0, ``params.edge_border`` cell diameters wide, shows the edge
    as in training.
    """
    width = card.params.get("edge_border")
    if not width or not card.architecture.get("detector") or not card.typical_diameter:
        return 0
    return int(math.ceil(float(width) * card.typical_diameter))


def _framed(pixels: np.ndarray, border: int, value: np.ndarray) -> np.ndarray:
    """``pixels`` (H, W, C) inside a frame ``border`` pixels wide of the pixel ``value``."""
    rows, cols, channels = pixels.shape
    framed = np.empty((rows + 2 * border, cols + 2 * border, channels), dtype=pixels.dtype)
    framed[...] = value
    framed[border : border + rows, border : border + cols] = pixels
    return framed


def _scale_helper(card: ModelCard, model: Model) -> Model:
    """The detector a segmenter's card names in ``params.scale_from`` to measure its
    reference objects (the weight-free estimate gives up on packed smear photographs, and a
    segmenter at the wrong scale breaks cells into pieces); both cards' reference class (the
    first ``diameter_px`` key) must be the same."""
    from .detector_scale import measures_own_scale

    helper = _helper_model(str(card.params["scale_from"]), str(model.device))
    mine, theirs = next(iter(card.diameter_px), None), next(iter(helper.card.diameter_px), None)
    if mine is None or mine != theirs or not measures_own_scale(helper):
        raise InputError(
            f"{card.name}: params.scale_from names {helper.card.name}, which does not "
            f"measure {mine!r} objects"
        )
    return helper


@functools.lru_cache(maxsize=4)
def _helper_model(name: str, device: str) -> Model:
    """A helper model a card names (the WBC type classifier, the detector that measures the
    scale), loaded once per device."""
    return load_model(name, device)


def cell_finder(
    name: str | None, device: str = "cpu", diameter: float | None = None
) -> Callable[[np.ndarray], np.ndarray] | None:
    """The cells of model ``name`` as a label image, at ``diameter`` (None: its own
    estimate), for a pipeline that classes cells another model finds (``params.cells_from``);
    None without a name."""
    if not name:
        return None
    helper = _helper_model(str(name), device)
    return lambda grey: predict(grey, helper, diameter=diameter).labels


def _record_scale(annotation: Annotation, scale: ImageScale) -> Annotation:
    annotation.meta.update(
        diameter_px=scale.diameter, diameter_source=scale.source, zoom=scale.zoom
    )
    if scale.estimate is not None:
        annotation.meta["diameter_reader"] = scale.estimate.reader
    return annotation


#: input values resized at a time: bounds the float32 working copy (8 MB)
_RESIZE_BAND_VALUES = 2_000_000


def _resize(image: np.ndarray, zoom: float) -> np.ndarray:
    """``image`` zoomed by ``zoom``, in its own dtype: Gaussian anti-aliasing when shrinking
    (sigma ``(s - 1) / 2`` for ``s`` input pixels per output pixel) and bilinear sampling at
    the pixel centres, as scikit-image's ``rescale`` does. Written here, in bands of output
    rows, because ``rescale`` converts the whole image to float64 first (12 megapixels of RGB
    become 290 MB); a band needs a few MB."""
    if zoom == 1.0:
        return image
    from scipy import ndimage as ndi

    h, w = image.shape[:2]
    out_h, out_w = max(1, round(h * zoom)), max(1, round(w * zoom))
    step_y, step_x = h / out_h, w / out_w
    sigma = [max(0.0, (step_y - 1) / 2), max(0.0, (step_x - 1) / 2)] + [0.0] * (image.ndim - 2)
    halo = int(4 * sigma[0] + 0.5) + 2  # gaussian_filter's radius (truncate 4) and the taps
    x0, fx = _taps(out_w, step_x, w)
    out = np.empty((out_h, out_w, *image.shape[2:]), dtype=image.dtype)
    per_row = w * (image.size // (h * w)) * step_y  # input values behind one output row
    band_rows = max(8, int(_RESIZE_BAND_VALUES / per_row))
    for top in range(0, out_h, band_rows):
        y0, fy = _taps(min(band_rows, out_h - top), step_y, h, start=top)
        first, last = max(0, int(y0[0]) - halo), min(h, int(y0[-1]) + 2 + halo)
        band = image[first:last].astype(np.float32)
        if any(sigma):
            band = ndi.gaussian_filter(band, sigma, mode="mirror")
        rows = _lerp(band, y0 - first, fy, axis=0)
        values = _lerp(rows, x0, fx, axis=1)
        if np.issubdtype(image.dtype, np.integer):
            info = np.iinfo(image.dtype)
            values = np.clip(np.rint(values), info.min, info.max)
        out[top : top + len(y0)] = values  # keeps the dtype: later steps scale by its range
    return out


def _taps(n: int, step: float, size: int, *, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Left input index and weight of the right one for output pixels ``start..start+n``
    (their centres mapped onto the input, clamped to its edge pixels)."""
    centre = np.clip((np.arange(start, start + n) + 0.5) * step - 0.5, 0, size - 1)
    left = np.minimum(np.floor(centre).astype(np.int64), max(size - 2, 0))
    return left, (centre - left).astype(np.float32)


def _nearest(n: int, size: int) -> np.ndarray:
    """Index of the input pixel whose area holds each of ``n`` output pixel centres."""
    return np.minimum(((np.arange(n) + 0.5) * (size / n)).astype(np.int64), size - 1)


def _lerp(values: np.ndarray, left: np.ndarray, weight: np.ndarray, axis: int) -> np.ndarray:
    right = np.minimum(left + 1, values.shape[axis] - 1)
    shape = [1] * values.ndim
    shape[axis] = -1
    w = weight.reshape(shape)
    return np.take(values, left, axis=axis) * (1 - w) + np.take(values, right, axis=axis) * w


def _annotation_to_shape(annotation: Annotation, shape: tuple[int, ...], zoom: float) -> Annotation:
    """Bring a result found on a zoomed image back to the original pixel grid: labels by
    nearest neighbour, boxes scaled by the two grids' actual size ratio."""
    zoomed = annotation.labels.shape
    # nearest neighbour as an index gather: int32 throughout (skimage's resize would make a
    # full-size float64 copy of the labels)
    rows = _nearest(shape[0], zoomed[0])
    cols = _nearest(shape[1], zoomed[1])
    labels = annotation.labels.astype(np.int32, copy=False)[rows[:, None], cols[None, :]]
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
    maps: dict[str, np.ndarray], card: ModelCard, shape: tuple[int, ...], border: int = 0
) -> Annotation:
    """The objects in a network's ``maps``; ``shape`` is the image's, without the detector's
    frame of ``border`` pixels (:func:`_edge_border`)."""
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
        if border:  # back to the image's pixels; objects centred in the frame are not in it
            xywh = boxes.xywh - np.array([border, border, 0, 0], dtype=boxes.xywh.dtype)
            cx, cy = xywh[:, 0] + xywh[:, 2] / 2, xywh[:, 1] + xywh[:, 3] / 2
            inside = (cx >= 0) & (cy >= 0) & (cx < shape[1]) & (cy < shape[0])
            boxes = Boxes(xywh, boxes.class_ids, boxes.scores).select(inside)
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
        maps["classes"],
        distance=maps.get("distance"),
        boundary=maps.get("boundary"),
        foreground=maps.get("classes_foreground"),
        **settings,
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
    flip_views: int | None = None,
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
    pixel_size, estimated, model, refined), ``diameter_reader`` for an estimate (weight-free,
    detector, size model) and ``zoom``; the decision is also logged.

    ``flip_views`` (1, 2 or 4) overrides the card's ``params.flip_views``: how many mirror
    images of each tile a segmentation network averages its maps over (1 is fastest).

    ``progress(done, total)`` is called as tiles finish; ``cancel()`` returning True stops the
    work at the next step with :class:`~napari_cellquant.core.errors.CancelledError`.
    """
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3):
        raise InputError(f"expected a 2-D image (H, W) or (H, W, C); got {np.shape(image)}")
    steps = iter_predict(
        image,
        model,
        tile=tile,
        overlap=overlap,
        diameter=diameter,
        pixel_size_um=pixel_size_um,
        flip_views=flip_views,
    )
    from .drive import drive

    report = None if progress is None else (lambda step: progress(*step))
    return drive(steps, report, cancel, what="prediction")

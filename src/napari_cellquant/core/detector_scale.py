"""A detector measures the size of its own objects: the scale estimate of learned detectors.

The weight-free estimate (:func:`~napari_cellquant.core.scale.estimate_diameter`) needs
separate objects on a plain background, and gives up or reads half the size on packed smear
photographs (TXL-PBC, BCCD), where RBCs touch and overlap. A detector trained with scale
jitter finds its objects correctly over a range of about 2x around its own scale, and its
boxes then say how large they are. So the image is probed at a ladder of zooms a factor 2
apart (:data:`PROBE_ZOOMS`), each time on one central crop of :data:`PROBE_SIDE` pixels at
that zoom (well under a second in all, whatever the image's size):

1. At each zoom the detector's reference-class boxes (RBCs for blood) are decoded; those
   whose size lies in the band the network was trained on (:data:`BAND` times the card's
   diameter) count, weighted by their scores, per model-scale cell area of the crop.
2. The zoom with the most such evidence wins; the median size of its in-band boxes, divided
   by the zoom, is the diameter. One more probe at the zoom that diameter implies refines it.

None when no zoom finds at least :data:`MIN_OBJECTS` in-band objects; the caller then falls
back on the model's own scale, as for the weight-free estimate.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from .scale import DiameterEstimate

if TYPE_CHECKING:
    from .predict import Model

log = logging.getLogger(__name__)

#: zooms tried, from enlarging 4x (RBCs of 10 px) to shrinking 8x (RBCs of 320 px)
PROBE_ZOOMS = (4.0, 2.0, 1.0, 0.5, 0.25, 0.125)
#: edge of the probed crop at model scale, in pixels
PROBE_SIDE = 256
#: sizes (relative to the card's diameter) that count as the model's own scale
BAND = (0.65, 1.6)
MIN_OBJECTS = 3


def central_batch(
    image: np.ndarray, model: Model, side: int, zoom: float, *, min_source: int
) -> Any:
    """The central crop of ``image`` that is ``side`` pixels wide at ``zoom`` (at least
    ``min_source`` pixels of the image), zoomed and normalised for ``model``'s network: a
    one-image float tensor batch on the model's device, what a scale reader runs on."""
    import torch

    from .normalization import channel_last_view, make_normalizer
    from .predict import _resize

    card = model.card
    pixels = channel_last_view(image)
    source = max(min_source, int(round(side / zoom)))
    top, left = max(0, (pixels.shape[0] - source) // 2), max(0, (pixels.shape[1] - source) // 2)
    crop = _resize(pixels[top : top + source, left : left + source], zoom)
    normalised = make_normalizer(crop, card.normalization, card.input_channels)(crop)
    batch = torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))[None]
    return batch.to(model.device)


def _probe(
    image: np.ndarray, model: Model, network: Any, zoom: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """Reference-class box sizes (model pixels) and scores on a central crop at ``zoom``,
    and the crop's area in model pixels. ``network`` is the model's, ready for inference."""
    import torch

    from .inference import _activate
    from .postprocess import boxes_from_heatmap

    card = model.card
    batch = central_batch(image, model, PROBE_SIDE, zoom, min_source=8)
    if min(batch.shape[-2:]) < 16:
        return np.zeros(0), np.zeros(0), 0.0
    with torch.inference_mode():
        raw = network(batch)
    acts = network.output_activations
    maps = {k: _activate(v.float(), acts[k])[0].cpu().numpy() for k, v in raw.items()}
    detector = card.architecture["detector"]
    boxes = boxes_from_heatmap(
        maps["heatmap"],
        maps["size"],
        maps.get("offset"),
        stride=int(detector["stride"]),
        **card.postprocess,
    )
    reference = card.classes.id_of(next(iter(card.diameter_px)))
    keep = boxes.class_ids == reference
    sizes = np.sqrt(boxes.xywh[keep, 2] * boxes.xywh[keep, 3])
    return sizes, boxes.scores[keep], float(batch.shape[-2] * batch.shape[-1])


def _evidence(
    sizes: np.ndarray, scores: np.ndarray, area: float, reference: float
) -> tuple[float, np.ndarray]:
    band = (sizes >= BAND[0] * reference) & (sizes <= BAND[1] * reference)
    cells = max(area / reference**2, 1.0)
    return float(scores[band].sum() / cells), sizes[band]


def measure_diameter(image: np.ndarray, model: Model) -> DiameterEstimate | None:
    """The diameter of ``model``'s reference objects in ``image``, measured by the model.

    ``model`` must be a learned detector (its card has a ``detector`` architecture and a
    ``diameter_px`` whose first key names a class of its class set).
    """
    started = time.perf_counter()
    reference = float(model.card.typical_diameter or 0)
    if reference <= 0:
        return None
    from .inference import _prepare_network

    network, _ = _prepare_network(model.network, model.device, channels_last=False)
    best: tuple[float, float, np.ndarray] | None = None
    for zoom in PROBE_ZOOMS:
        evidence, sizes = _evidence(*_probe(image, model, network, zoom), reference)
        if len(sizes) >= MIN_OBJECTS and (best is None or evidence > best[0]):
            best = (evidence, zoom, sizes)
    if best is None:
        log.info("%s found too few objects of its own size at any zoom", model.name)
        return None
    _, zoom, sizes = best
    diameter = float(np.median(sizes)) / zoom
    refined = reference / diameter
    if abs(math.log(refined / zoom)) > math.log(1.15):
        _, sizes_refined = _evidence(*_probe(image, model, network, refined), reference)
        if len(sizes_refined) >= MIN_OBJECTS:
            zoom, sizes = refined, sizes_refined
            diameter = float(np.median(sizes)) / zoom
    seconds = time.perf_counter() - started
    log.info(
        "%s measured its objects at %.1f px (%d objects at zoom %.3g, %.2f s)",
        model.name,
        diameter,
        len(sizes),
        zoom,
        seconds,
    )
    return DiameterEstimate(
        diameter=diameter,
        n_objects=float(len(sizes)),
        shrink=1 / zoom,
        seconds=seconds,
        reader="detector",
    )


def measures_own_scale(model: Model) -> bool:
    """Whether ``model`` measures its own scale: a learned detector of instances."""
    card = model.card
    return (
        card.kind == "learned"
        and bool(card.architecture.get("detector"))
        and card.task == "instances"
        and bool(card.diameter_px)
    )

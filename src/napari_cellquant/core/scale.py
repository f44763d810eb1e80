"""How big the objects in an image are, and how to bring an image to a model's scale.

A model or classical pipeline is tuned at one magnification: its card states the typical
object diameter of its training data in pixels (``diameter_px``, e.g. ``{"rbc": 40}``). The
user's image may be at any other scale. :func:`estimate_diameter` measures the typical object
diameter of an image from its content, without a model, in a fraction of a second:

1. The image is shrunk by block averaging so that it holds about :data:`WORKING_PIXELS`
   pixels (a 4032 x 3024 photograph is read at 1/14 of its side).
2. Foreground = colour (or intensity) distance to the background above the triangle
   threshold (a dominant background peak with a tail of objects; Otsu would split stained
   nuclei from pale RBCs instead). The background is the bright glass of a brightfield
   smear or the dark field of a fluorescence image, told apart by where the median lies.
   Holes (an RBC's central pallor) are filled.
3. Each object's radius is the maximum of the Euclidean distance transform inside it (its
   largest inscribed disk); a clump of touching cells still measures one cell and counts as
   as many cells as its area holds. The diameter is twice the weighted geometric mean of
   the radii between the 10th and 50th percentiles (:data:`BAND`: the lower half, so nuclei
   win over the NETs around them and RBCs over the fewer, larger WBCs; the smallest tenth,
   platelets and debris, is left out). Objects cut by the border are left out when enough
   others remain.
4. The first pass gives a guess; the second measures again on the image resampled so that
   the guess is :data:`TARGET_DIAMETER` pixels wide (a central crop when that exceeds
   :data:`FINE_PIXELS`), so the same content at any magnification is measured at the same
   scale, and small objects in a large image as accurately as large ones.

:func:`image_scale` turns a given diameter, a pixel size or an estimate into the diameter
a model runs with and the zoom that brings the image to the model's scale.

The figure is the size of the image's common objects: RBCs in a blood smear, nuclei or
cells in fluorescence. What it reads on a card's own data may differ from the card's
reference object (NET images: nuclei and dead cells together read 33.5 px where the
unstimulated nucleus is 28), so a card can state that reading (:data:`ESTIMATE_KEY`) and
:func:`image_scale` converts. Images whose small objects are many (platelets or debris over
~15% of the objects) read low, and a field packed so densely that its cells touch in one
mass (BCCD's photographs) has no separate objects: the estimate then gives up (None: the
foreground covers most of the image, or the coarse and fine passes disagree) and the
model's own scale is used. Give the diameter or the pixel size there.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage as ndi

from .errors import InputError

if TYPE_CHECKING:
    from .models.card import ModelCard

log = logging.getLogger(__name__)

#: pixels of the shrunk image the estimate works on (about 512 x 512)
WORKING_PIXELS = 512 * 512
#: pixel budget of the finer passes, measured where objects are TARGET_DIAMETER wide
FINE_PIXELS = 768 * 768
#: the finer passes measure objects at this diameter (pixels)
TARGET_DIAMETER = 28.0
#: on the finer passes, objects with an inscribed radius under this fraction of the
#: expected one are specks
NOISE_RADIUS = 0.2
#: objects whose inscribed radius is under this many working pixels are noise
MIN_RADIUS = 1.5
#: a smaller figure is specks or texture, not cells: the estimate gives up
MIN_DIAMETER = 8.0
#: the finer pass enlarges an image at most this much (tiny objects: a smaller crop)
MAX_ENLARGE = 4.0
#: fewer objects than this and there is nothing to measure
MIN_OBJECTS = 3
#: a foreground covering more of the image than this is one merged mass, not objects
MAX_FOREGROUND = 0.75
#: the two passes must agree within this ratio (measured on blood_smear_224 and the NET
#: images at 0.5x-4x: 0.76-1.17; on BCCD's packed fields 0.3-1.6)
AGREEMENT = 1.4
#: the weighted percentiles of the radii whose geometric mean is the typical size
BAND = (0.1, 0.5)
#: the ``diameter_px`` key of a model card giving what :func:`estimate_diameter` reads on
#: the card's training data, when that differs from its reference object's diameter (e.g.
#: NET images read larger than their nuclei: NETs and dead cells are counted too)
ESTIMATE_KEY = "objects"
#: zooms closer to 1 than this are not applied: the networks are trained with 0.8-1.25
#: scale jitter, and a per-image estimate on a small image varies by about this much
NO_ZOOM = 0.1
#: how the diameter a model runs with was decided (``Annotation.meta["diameter_source"]``)
SOURCES = ("given", "pixel_size", "estimated", "model")


@dataclass(frozen=True)
class DiameterEstimate:
    """A measured typical object diameter.

    Attributes
    ----------
    diameter
        Typical object diameter in pixels of the full-resolution image.
    n_objects
        How many objects the figure rests on (clumps count as the cells they hold).
    shrink
        Side reduction of the pass that gave the figure (under 1: the image was enlarged).
    seconds
        Time the estimate took.
    reader
        What measured it: ``"weight-free"`` (:func:`estimate_diameter`), ``"detector"``
        (the detector's own boxes) or ``"size model"`` (a network's features).
    """

    diameter: float
    n_objects: float
    shrink: float
    seconds: float
    reader: str = "weight-free"


def estimate_diameter(image: np.ndarray) -> DiameterEstimate | None:
    """Estimate the typical object diameter (pixels) of a 2-D grey or ``(H, W, C)`` image.

    Parameters
    ----------
    image
        Brightfield (dark objects on a bright background, colour or grey) or fluorescence
        (bright objects on a dark background) image, any numeric dtype and size.

    Returns
    -------
    DiameterEstimate or None
        None when the image holds too few separate objects to measure (blank, flat, or
        one merged mass), or only specks under :data:`MIN_DIAMETER` pixels.
    """
    start = time.perf_counter()
    pixels = _as_channels_last(image)
    height, width = pixels.shape[:2]
    # pass 1, coarse: a first guess
    shrink = max(1, int(math.ceil(math.sqrt(height * width / WORKING_PIXELS))))
    objects = _objects(_block_mean(pixels, shrink))
    found = None
    if objects is not None:
        guess = _typical_diameter(*objects) * shrink
        # pass 2: measure again where the guess is TARGET_DIAMETER pixels wide, so one
        # content at any magnification is measured at the same scale
        view, zoom = _at_scale(pixels, min(TARGET_DIAMETER / guess, MAX_ENLARGE))
        objects = _objects(view, min_radius=NOISE_RADIUS * TARGET_DIAMETER / 2)
        if objects is not None:
            diameter = _typical_diameter(*objects) / zoom
            # objects that read one size coarse and another fine are fragments of a packed
            # field (touching cells cut apart by the threshold), not cells: give up
            if 1 / AGREEMENT <= diameter / guess <= AGREEMENT:
                found = (diameter, float(_cells(*objects).sum()), 1 / zoom)
    seconds = time.perf_counter() - start
    if found is None or found[0] < MIN_DIAMETER:
        log.info("no objects to estimate a diameter from (%.2f s)", seconds)
        return None
    estimate = DiameterEstimate(found[0], found[1], found[2], seconds)
    log.debug(
        "estimated object diameter %.1f px from %.0f objects (working scale 1/%.2g, %.2f s)",
        estimate.diameter,
        estimate.n_objects,
        estimate.shrink,
        seconds,
    )
    return estimate


@dataclass(frozen=True)
class ImageScale:
    """The scale a model runs an image at, and how it was decided.

    Attributes
    ----------
    diameter
        Typical diameter, in the image's pixels, of the model card's reference objects (its
        first ``diameter_px`` group: RBC, nucleus, cell).
    source
        ``"given"`` (the caller's diameter), ``"pixel_size"`` (from the image's and the
        card's pixel sizes), ``"estimated"`` (measured on the image), ``"model"`` (the
        image is taken to be at the model's scale) or ``"refined"`` (measured on the model's
        own objects, see :func:`~napari_cellquant.core.predict.iter_predict`).
    zoom
        Factor that brings the image to the model's scale: the card's diameter / ``diameter``
        (1 when they differ by under :data:`NO_ZOOM`, so that nothing is resampled for
        nothing).
    estimate
        The measurement, when the diameter was estimated (in the reference objects' units).
    """

    diameter: float
    source: str
    zoom: float
    estimate: DiameterEstimate | None = None


def image_scale(
    image: np.ndarray,
    card: ModelCard,
    *,
    diameter: float | str | None = None,
    pixel_size_um: float | None = None,
    estimator: Callable[[np.ndarray], DiameterEstimate | None] | None = None,
) -> ImageScale:
    """Decide the diameter a model runs ``image`` with, and the zoom to the model's scale.

    Parameters
    ----------
    image
        The user's image.
    card
        The model's card: ``diameter_px`` (the reference object's diameter in its training
        data, first entry; an ``"objects"`` entry says what :func:`estimate_diameter` reads
        on that data when it differs), ``pixel_size_um``; a classical card without
        ``diameter_px`` falls back on its ``params["diameter"]``.
    diameter
        The reference objects' diameter in ``image`` (pixels); ``None`` to estimate it (or
        take it from ``pixel_size_um``); ``"model"`` when the image is known to be at the
        model's scale (no estimate, no resampling).
    pixel_size_um
        The image's pixel size in micrometres (a napari layer's scale); used ahead of an
        estimate when the card states its own pixel size, or its reference object has a
        known physical size (:data:`PHYSICAL_DIAMETER_UM`).
    estimator
        What measures the diameter when it is neither given nor known from the pixel size:
        :func:`estimate_diameter` by default; a detector measures its own objects instead
        (:func:`~napari_cellquant.core.detector_scale.measure_diameter`).
    """
    reference = card.typical_diameter or card.params.get("diameter")
    if reference is None:  # a card that says nothing of scale runs every image as it is
        return ImageScale(float("nan"), "model", 1.0)
    reference = float(reference)
    estimate = None
    if isinstance(diameter, str):
        if diameter != "model":
            raise InputError(
                f"diameter must be a number of pixels, None (estimate) or 'model', got {diameter!r}"
            )
        value, source = reference, "model"
    elif diameter is not None:
        value, source = float(diameter), "given"
        if not math.isfinite(value) or value <= 0:
            raise InputError(f"diameter must be a positive number of pixels, got {diameter}")
        if value >= min(image.shape[:2]):
            log.warning(
                "objects %g px across cannot be found in a %d x %d image: is the diameter right?",
                value,
                image.shape[1],
                image.shape[0],
            )
    elif pixel_size_um is not None and (reference_um := _reference_um(card)) is not None:
        if not (math.isfinite(pixel_size_um) and pixel_size_um > 0):
            raise InputError(f"pixel size must be positive, got {pixel_size_um} um")
        value, source = reference_um / float(pixel_size_um), "pixel_size"
    else:
        if pixel_size_um is not None:
            log.info("%s states no pixel size: estimating the diameter instead", card.name)
        estimate = estimator(image) if estimator else weight_free_estimate(image, card)
        if estimate is None:
            log.warning(
                "could not estimate the object diameter (too few separate objects); "
                "taking the image to be at the scale of %s (%g px): give the diameter "
                "if that is wrong",
                card.name,
                reference,
            )
            value, source = reference, "model"
        else:
            value, source = estimate.diameter, "estimated"
    zoom = reference / value
    if abs(zoom - 1.0) < NO_ZOOM:
        zoom = 1.0
    log.info(
        "object diameter %.1f px (%s); %s's own scale: %g px",
        value,
        DIAMETER_SOURCES[source],
        card.name,
        reference,
    )
    return ImageScale(value, source, zoom, estimate)


def weight_free_estimate(image: np.ndarray, card: ModelCard) -> DiameterEstimate | None:
    """:func:`estimate_diameter` in the card's reference objects' units: scaled by what it
    reads on the card's training data (``diameter_px["objects"]``) where that differs."""
    estimate = estimate_diameter(image)
    reference = card.typical_diameter
    if estimate is None or reference is None:
        return estimate
    reads = float(card.diameter_px.get(ESTIMATE_KEY, reference))
    return dataclasses.replace(estimate, diameter=estimate.diameter * float(reference) / reads)


def median_object_diameter(labels: np.ndarray, *, min_objects: int = 1) -> float | None:
    """Median equivalent diameter (pixels) of the objects of a label image; None when it holds
    fewer than ``min_objects`` (their median says nothing about the scale)."""
    areas = np.bincount(np.asarray(labels).ravel())[1:]
    areas = areas[areas > 0]
    if len(areas) < max(min_objects, 1):
        return None
    return float(np.median(2.0 * np.sqrt(areas / np.pi)))


#: Diameters of reference objects that are the same in every lab's images: a human red cell is
#: 7.5 um across in a dried smear. With it, a layer's physical scale sets the size even when a
#: card does not know the pixel size of its training data (the blood sets do not state one).
PHYSICAL_DIAMETER_UM = {"rbc": 7.5}


def _reference_um(card: ModelCard) -> float | None:
    """The card's reference object diameter in micrometres, when it can be known."""
    reference = card.typical_diameter
    if card.pixel_size_um and reference:
        return float(reference) * float(card.pixel_size_um)
    group = next(iter(card.diameter_px), None)
    return PHYSICAL_DIAMETER_UM.get(group) if group else None


def expected_pixel_size_um(card: ModelCard) -> float | None:
    """The pixel size (um) of the model's own scale: stated, or implied by its reference."""
    reference_um, reference_px = _reference_um(card), card.typical_diameter
    return reference_um / float(reference_px) if reference_um and reference_px else None


#: how each ``diameter_source`` reads in messages (logs, the Segment widget's status)
DIAMETER_SOURCES = {
    "given": "given",
    "pixel_size": "from the pixel size",
    "estimated": "estimated",
    "model": "the model's scale",
    "refined": "measured on the model's own objects",
}
#: how each reader of an estimate is named where a scale is reported
READERS = {
    "weight-free": "from the image",
    "detector": "by the detector's own boxes",
    "size model": "by the network's size model",
}


def describe_scale(meta: Mapping[str, Any]) -> str:
    """``"diameter 27.0 px, estimated by the network's size model"`` for a result's
    ``meta``: what the run took the object size to be, so an estimate is never silent; ""
    where no scale applies (a card that knows none)."""
    diameter = meta.get("diameter_px")
    if diameter is None or not math.isfinite(diameter):
        return ""
    source = str(meta.get("diameter_source", ""))
    how = DIAMETER_SOURCES.get(source, source)
    if source == "estimated" and meta.get("diameter_reader") in READERS:
        how += " " + READERS[meta["diameter_reader"]]
    return f"diameter {diameter:.1f} px, {how}"


def _as_channels_last(image: np.ndarray) -> np.ndarray:
    from .normalization import channel_last_view

    array = channel_last_view(np.asarray(image))
    if array.ndim != 3 or array.shape[0] < 8 or array.shape[1] < 8:
        raise InputError(f"cannot estimate a diameter on an image of shape {np.shape(image)}")
    if array.dtype == bool or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise InputError(f"image must be numeric to estimate a diameter, got {array.dtype}")
    if array.shape[-1] == 4:  # RGBA: alpha carries no object
        array = array[..., :3]
    return array


def _block_mean(pixels: np.ndarray, shrink: int) -> np.ndarray:
    """Mean over ``shrink`` x ``shrink`` blocks, as float32 (no full-size float copy)."""
    if shrink == 1:
        return pixels.astype(np.float32)
    rows, cols = pixels.shape[0] // shrink, pixels.shape[1] // shrink
    blocks = pixels[: rows * shrink, : cols * shrink].reshape(
        rows, shrink, cols, shrink, pixels.shape[-1]
    )
    # summing the block rows first keeps each reduction over contiguous memory
    return blocks.mean(axis=1, dtype=np.float32).mean(axis=2, dtype=np.float32)


def _central_crop(pixels: np.ndarray, side: int) -> np.ndarray:
    """The central ``side`` x ``side`` part (or less) of an image."""
    top = max((pixels.shape[0] - side) // 2, 0)
    left = max((pixels.shape[1] - side) // 2, 0)
    return pixels[top : top + side, left : left + side]


def foreground_signal(pixels: np.ndarray) -> np.ndarray:
    """Distance of each pixel's (robustly normalised) colour to the background colour."""
    flat = pixels.reshape(-1, pixels.shape[-1])
    # all channels share one scale, so colours keep their balance
    low, high = np.percentile(flat[:: max(1, len(flat) // 100_000)], [0.5, 99.5])
    scaled = (pixels - low) / np.maximum(high - low, 1e-6)
    grey = scaled.mean(axis=2)
    median = float(np.median(grey))
    low_grey, high_grey = np.percentile(grey, [2, 98])
    if median > 0.5 * (low_grey + high_grey):  # brightfield: the glass is the brightest part
        background_pixels = scaled[grey >= np.quantile(grey, 0.8)]
    else:  # fluorescence: the dark field
        background_pixels = scaled[grey <= median]
    background = np.median(background_pixels, axis=0)
    return np.sqrt(((scaled - background) ** 2).sum(axis=2))


def _objects(
    pixels: np.ndarray, min_radius: float = MIN_RADIUS
) -> tuple[np.ndarray, np.ndarray] | None:
    """Inscribed radius and area (working pixels) of the foreground objects, or None.

    Objects cut by the border are left out when enough others remain.
    """
    from skimage.filters import threshold_triangle

    signal = ndi.gaussian_filter(foreground_signal(pixels), 1.0)
    if float(signal.max()) - float(signal.min()) < 1e-6:
        return None
    foreground = ndi.binary_fill_holes(signal > threshold_triangle(signal))
    if foreground.mean() > MAX_FOREGROUND:
        return None
    labels, n = ndi.label(foreground)
    if n == 0:
        return None
    distance = ndi.distance_transform_edt(foreground)
    index = np.arange(1, n + 1)
    radius = np.asarray(ndi.maximum(distance, labels, index), dtype=np.float64)
    area = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.float64)
    keep = radius >= max(min_radius, MIN_RADIUS)
    edge = np.zeros(n + 1, dtype=bool)
    edge[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = True
    inner = keep & ~edge[1:]
    if inner.sum() >= MIN_OBJECTS:
        keep = inner
    if keep.sum() < MIN_OBJECTS:
        return None
    return radius[keep], area[keep]


def _cells(radius: np.ndarray, area: np.ndarray) -> np.ndarray:
    """How many cells each object holds: a clump of touching cells has one cell's inscribed
    disk, and as many cells as that disk fits in its area."""
    return np.maximum(area / (np.pi * radius**2), 1.0)


def _typical_diameter(radius: np.ndarray, area: np.ndarray) -> float:
    """Typical diameter of the cells (clumps count as the cells they hold): the weighted
    geometric mean of the radii in :data:`BAND`, steadier than a median when a few dozen
    objects fall in two or three size groups."""
    typical = _weighted_band_mean(np.log(radius), _cells(radius, area), *BAND)
    # the distance transform's maximum in a digital disk of diameter d is about d / 2 + 0.5
    return max(2.0 * float(np.exp(typical)) - 1.0, 1.0)


def _at_scale(pixels: np.ndarray, zoom: float) -> tuple[np.ndarray, float]:
    """``pixels`` resampled by ``zoom`` (a central crop when larger than the pixel budget),
    and the zoom actually applied."""
    side = int(math.sqrt(FINE_PIXELS) / zoom)
    crop = _central_crop(pixels, side) if side < max(pixels.shape[:2]) else pixels
    block = max(1, int(1.0 / zoom))  # shrink by block means first: fast and anti-aliased
    small = _block_mean(crop, block)
    rest = zoom * block
    if abs(rest - 1.0) > 0.02:
        small = ndi.zoom(small, (rest, rest, 1), order=1, grid_mode=True, mode="nearest")
    return small, small.shape[0] / crop.shape[0]


def _weighted_band_mean(values: np.ndarray, weights: np.ndarray, low: float, high: float) -> float:
    """Weighted mean of the values between the weighted ``low`` and ``high`` quantiles."""
    order = np.argsort(values)
    values, weights = values[order], weights[order]
    upper = np.cumsum(weights) / weights.sum()
    lower = upper - weights / weights.sum()
    # the share of each value's weight that falls inside [0.25, 0.75]
    inside = np.clip(np.minimum(upper, high) - np.maximum(lower, low), 0.0, None)
    return float((values * inside).sum() / inside.sum())

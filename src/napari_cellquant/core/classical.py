"""Weight-free pipelines: colour, thresholds and watersheds, no trained model.

Each pipeline is a function ``pipeline(image, params) -> Annotation`` whose every parameter
lives in a plain dict (stored in a model card, see :data:`DEFAULT_PARAMS`). Sizes are given
relative to ``params["diameter"]``, the typical diameter in pixels of the reference object
(an RBC for blood, a cell body for fluorescence, an unstimulated nucleus for NETs), so one
parameter set serves any magnification once ``diameter`` is set:

- a length ``x`` means ``x * diameter`` pixels;
- an area ``a`` means ``a * pi * diameter**2 / 4`` pixels, i.e. a fraction of the reference
  object's area.

Every object the pipelines return has origin ``"model"`` and a score in [0, 1] saying how
clearly it passed the rule that classed it (see each function).
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage import filters
from skimage.measure import regionprops_table
from skimage.segmentation import watershed
from skimage.transform import resize

from .annotation import Annotation
from .classes import BLOOD3, CELL, NET4
from .errors import InputError
from .postprocess import (
    fill_small_holes,
    relabel_sequential,
    remove_small_instances,
    split_touching,
)

__all__ = [
    "DEFAULT_PARAMS",
    "blood_classical",
    "classify_net_objects",
    "fluo_classical",
    "net_classical",
    "net_objects",
    "param_help",
    "resolve_params",
    "run_pipeline",
]

#: Parameters of every pipeline, by model name. Lengths are fractions of ``diameter`` and
#: areas fractions of the reference object's area (see the module docstring).
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "blood-classical": {
        # RBC diameter in pixels: about 90 in BCCD's 640x480 photographs, 40 in the 224x224 set
        "diameter": 90.0,
        # larger images are analysed shrunk so that a diameter is at most this many pixels
        # (counts do not change; outlines come back at full size, blocky by the shrink factor)
        "max_working_diameter": 90.0,
        # smaller images are analysed enlarged so that a diameter is at least this many pixels
        # (a platelet of a 20-px-RBC image is ~5 px: blur and openings would erase it)
        "min_working_diameter": 32.0,
        "smooth": 0.03,  # Gaussian sigma before thresholding (length)
        "background_quantile": 0.8,  # the brightest 20% pixels give the background colour
        "foreground_method": "triangle",  # threshold on colour distance to the background
        "foreground_scale": 1.0,  # multiplies that threshold (<1 keeps paler cells)
        "close_radius": 0.04,  # closes broken RBC rims before hole filling (length)
        "max_hole": 0.5,  # central pallor and other holes filled up to this area
        "stain_threshold": 0.14,  # purple index (blue - green, 0..1) of stained pixels ...
        "stain_core_threshold": 0.18,  # ... connected to a core at least this purple
        "stain_min_blue_over_red": 0.0,  # stained pixels are blue-violet: blue - red above this
        "stain_dark_density": 1.5,  # ... or darker than this summed optical density (chromatin)
        "stain_dark_min_purple": 0.05,  # ... and at least this purple
        "stain_open_radius": 0.02,  # removes stain specks thinner than this (length)
        "nucleus_group_radius": 0.12,  # stained lobes this close belong to one WBC (length)
        "wbc_min_nucleus_area": 0.3,  # a stained group this large is a WBC nucleus (area)
        "wbc_margin": 0.2,  # a WBC reaches this far beyond its nucleus (length)
        "platelet_min_area": 0.008,  # smaller stained specks are noise (area)
        "platelet_max_area": 0.3,  # larger but not WBC-size stained blobs are ignored (area)
        "platelet_max_cell_contact": 0.5,  # stained blob ringed by unstained cell = inclusion
        "platelet_rim": 0.1,  # ... judged on a ring this far out, as wide again (length)
        "rbc_min_area": 0.2,  # smaller unstained fragments are dropped (area)
        "rbc_min_distance": 0.35,  # minimum distance between RBC seeds (length)
        "rbc_distance_smooth": 0.06,  # blur of the distance map before seeding (length)
    },
    # otsu_floor, min_snr and min_distance re-tuned on 77 DSB2018 fluorescence training
    # images (scripts/fluo_nuclei.py --tune-classical; instance F1 0.66 -> 0.77 on them)
    "fluo-classical": {
        # cell diameter in pixels (Fluorescent Neuronal Cells, 1600x1200: about 40)
        "diameter": 40.0,
        "max_working_diameter": 40.0,  # see blood-classical
        "channel": None,  # None: mean of the colour channels; an int picks one
        "smooth": 0.05,  # Gaussian sigma (length)
        "block_size": 3.0,  # side of the local-threshold window (length), made odd
        "local_offset": 0.0,  # subtracted from the local threshold (intensity units 0..1)
        "otsu_floor": 0.5,  # pixels must also exceed this fraction of the global Otsu level
        "min_snr": 1.5,  # ... and the background by this many robust noise deviations
        "max_hole": 0.48,  # holes filled up to this area (600 px at diameter 40)
        "min_area": 0.16,  # objects under this area dropped (200 px at diameter 40)
        "min_distance": 0.2,  # peak footprint half-width (a 16x16 footprint at diameter 40)
        "distance_smooth": 0.05,  # blur of the distance map before peak finding (length)
    },
    "net-classical": {
        # diameter of an unstimulated neutrophil nucleus in pixels (1024x768 JPEGs: about 28)
        "diameter": 28.0,
        "max_working_diameter": 30.0,  # see blood-classical
        # membrane-impermeable DNA dye (SYTOX-like: stains dead cells and NETs), channel index
        "dna_channel": 1,
        # membrane-permeable DNA dye (Hoechst-like: stains every nucleus), channel index;
        # None when only one DNA dye was imaged (morphology-only rules are used then)
        "nuclear_channel": 2,
        "smooth": 0.05,  # Gaussian sigma (length)
        "threshold_method": "li",  # per-channel threshold above the background (median)
        "min_signal": 0.04,  # ... but never below this rise over background (0..1)
        "max_hole": 0.5,  # holes filled up to this area
        "min_area": 0.6,  # smaller objects are debris or cells mostly outside the field
        "min_distance": 0.6,  # seed separation for splitting touching objects (length)
        "distance_smooth": 0.08,  # blur of the distance map before seeding (length)
        # share of the impermeable dye, dna / (dna + nuclear), above which the membrane is
        # compromised (dead or NET); intact cells measure ~0.0-0.05, dead ~0.2-0.5
        "compromised_min_dna_fraction": 0.12,
        # a compromised object is a NET when any of: large (spread chromatin) ...
        "net_min_area": 3.5,
        # ... dominated by the impermeable dye (decondensed, extracellular DNA) ...
        "net_min_dna_fraction": 0.6,
        # ... or irregular (low solidity)
        "net_max_solidity": 0.8,
        # an intact nucleus is decondensed when enlarged ...
        "decondensed_min_area": 1.4,
        # ... and not brighter than this x the median normal-size intact nucleus (the same DNA
        # spread thinner; a bright enlarged object is rather two overlapping nuclei)
        "decondensed_max_intensity": 0.8,
        # single-dye images: a small object this much brighter than the median one is dead
        "single_dye_dead_min_intensity": 1.3,
    },
}


@functools.cache
def param_help(pipeline: str) -> Mapping[str, tuple[str, str]]:
    """``{parameter: (unit, explanation)}`` of a pipeline, for tooltips.

    Read from the comments beside :data:`DEFAULT_PARAMS` in this module's source, so the
    explanation has one home: lengths are multiples of the diameter, areas of the reference
    object's area. Read once per pipeline (Segment asks at every change of model).
    """
    import inspect
    import re

    try:
        source = inspect.getsource(sys.modules[__name__])
    except (OSError, TypeError):  # no source (a frozen install): no tooltips
        return MappingProxyType({})
    block = source[source.index(f'    "{pipeline}": {{') :]
    block = block[: block.index("\n    },")]
    out: dict[str, tuple[str, str]] = {}
    pending: list[str] = []
    for line in block.splitlines()[1:]:
        text = line.strip()
        if text.startswith("#"):
            pending.append(text.lstrip("# "))
            continue
        match = re.match(r'"(\w+)":[^#]*(?:#\s*(.*))?$', text)
        if match:
            note = " ".join([*pending, match.group(2) or ""]).strip()
            unit = (
                "x diameter"
                if "(length)" in note
                else "x object area"
                if "(area)" in note or "this area" in note
                else "px"
                if "pixels" in note
                else ""
            )
            out[match.group(1)] = (unit, note)
        pending = []
    return MappingProxyType(out)  # shared by every caller: read-only


def resolve_params(name: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults of pipeline ``name`` updated with ``params``; unknown keys are an error."""
    defaults = DEFAULT_PARAMS[name]
    merged = dict(defaults)
    if params:
        unknown = sorted(set(params) - set(defaults))
        if unknown:
            raise InputError(
                f"{name}: unknown parameter(s) {', '.join(unknown)}; known: {', '.join(defaults)}"
            )
        merged.update(params)
    diameter = merged["diameter"]
    if not isinstance(diameter, (int, float)) or not math.isfinite(diameter) or diameter <= 2:
        raise InputError(f"{name}: diameter must be a number of pixels > 2, got {diameter!r}")
    return merged


#: the most a small image is enlarged to reach ``min_working_diameter``
MAX_ENLARGE = 3.0


class _Scale:
    """Converts relative lengths/areas of a parameter dict into pixels."""

    def __init__(self, diameter: float) -> None:
        self.diameter = float(diameter)
        self.area_unit = math.pi * self.diameter**2 / 4

    def length(self, fraction: float) -> float:
        return float(fraction) * self.diameter

    def px(self, fraction: float) -> int:
        return max(int(round(fraction * self.diameter)), 0)

    def area(self, fraction: float) -> int:
        return max(int(round(fraction * self.area_unit)), 0)


def _dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    """Dilation by a disk of ``radius`` px via the distance transform: O(pixels) at any radius,
    where a structuring element would cost pixels x radius**2 on a 12-megapixel photograph."""
    if radius <= 0 or not mask.any():
        return mask.copy()
    return ndi.distance_transform_edt(~mask) <= radius


def _erode(mask: np.ndarray, radius: float) -> np.ndarray:
    """Erosion by a disk of ``radius`` px (the image border counts as foreground)."""
    if radius <= 0:
        return mask.copy()
    return ndi.distance_transform_edt(mask) > radius


def _close(mask: np.ndarray, radius: float) -> np.ndarray:
    """Closing by a disk; never removes pixels of ``mask``."""
    return (_erode(_dilate(mask, radius), radius) | mask) if radius > 0 else mask.copy()


def _open(mask: np.ndarray, radius: float) -> np.ndarray:
    """Opening by a disk: removes parts thinner than ``2 * radius``."""
    return (_dilate(_erode(mask, radius), radius) & mask) if radius > 0 else mask.copy()


def _as_float_image(image: np.ndarray, *, rgb: bool, source: str) -> np.ndarray:
    """Validate and scale an image to float32 in [0, 1] (integers by their dtype's range)."""
    array = np.asarray(image)
    if array.dtype == bool or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise InputError(f"image must be numeric, got {array.dtype}", source=source)
    if rgb and not (array.ndim == 3 and array.shape[-1] in (3, 4)):
        raise InputError(f"expected an RGB image (H, W, 3), got shape {array.shape}", source=source)
    if not rgb and array.ndim not in (2, 3):
        raise InputError(
            f"expected a 2-D or (H, W, C) image, got shape {array.shape}", source=source
        )
    if array.shape[0] < 3 or array.shape[1] < 3:
        raise InputError(f"image is too small: {array.shape}", source=source)
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        out = array.astype(np.float32) / float(info.max)
    else:
        out = array.astype(np.float32)
        if not np.isfinite(out).all():
            raise InputError("image contains NaN or infinite values", source=source)
        top = float(out.max(initial=0.0))
        if top > 1.0:  # floats on a 0..255 or arbitrary scale
            out = out / top
    if rgb:
        out = out[..., :3]
    return out


def _working_scale(image: np.ndarray, p: Mapping[str, Any]) -> tuple[np.ndarray, _Scale]:
    """Resample ``image`` so that ``diameter`` lies between ``min_working_diameter`` (when
    set) and ``max_working_diameter`` px.

    Every size in the parameters is relative to the diameter, so the result does not depend
    on the resampling, while a 12-megapixel photograph with 500-px cells is analysed in
    seconds, and a small image with 20-px cells keeps its smallest objects (platelets) above
    the blur and the opening radii.
    """
    diameter = float(p["diameter"])
    limit = float(p.get("max_working_diameter") or diameter)
    floor = float(p.get("min_working_diameter") or 0.0)
    factor = min(1.0, limit / diameter)
    if floor > diameter:
        factor = min(floor / diameter, MAX_ENLARGE)
    if factor == 1.0 or min(image.shape[:2]) * factor < 16:
        return image, _Scale(diameter)
    shape = (
        max(int(round(image.shape[0] * factor)), 1),
        max(int(round(image.shape[1] * factor)), 1),
    )
    resized = resize(
        image, shape + image.shape[2:], order=1, anti_aliasing=factor < 1, preserve_range=True
    ).astype(np.float32)
    return resized, _Scale(diameter * shape[0] / image.shape[0])


def resample_labels(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour resampling of a label image to ``shape`` (pixel centres aligned)."""
    if labels.shape == tuple(shape):
        return labels
    rows = ((np.arange(shape[0]) + 0.5) * labels.shape[0] / shape[0]).astype(np.intp)
    cols = ((np.arange(shape[1]) + 0.5) * labels.shape[1] / shape[1]).astype(np.intp)
    rows = np.minimum(rows, labels.shape[0] - 1)
    cols = np.minimum(cols, labels.shape[1] - 1)
    return labels[rows[:, None], cols]


def _annotation(
    labels: np.ndarray,
    classes: dict[int, int],
    scores: dict[int, float],
    class_set: Any,
    params: dict[str, Any],
    pipeline: str,
    *,
    shape: tuple[int, int] | None = None,
) -> Annotation:
    if shape is not None:
        labels = resample_labels(labels, shape)
    labels, mapping = relabel_sequential(labels)
    classes = {mapping[k]: v for k, v in classes.items() if k in mapping}
    scores = {mapping[k]: float(np.clip(v, 0.0, 1.0)) for k, v in scores.items() if k in mapping}
    ann = Annotation(
        labels=labels.astype(np.int32),
        class_set=class_set,
        classes=classes,
        scores=scores,
        origins={int(i): "model" for i in mapping.values()},
        meta={"pipeline": pipeline, "params": dict(params)},
    )
    return ann


def _logistic(margin: np.ndarray | float, width: float) -> np.ndarray:
    """A score in (0, 1): 0.5 at the decision threshold, ~0.9 at ``2 * width`` past it."""
    return 1.0 / (1.0 + np.exp(-np.asarray(margin, dtype=np.float64) / max(width, 1e-9)))


# --------------------------------------------------------------------------------------
# blood smears (Giemsa / Leishman / Wright)
# --------------------------------------------------------------------------------------
def blood_classical(image_rgb: np.ndarray, params: Mapping[str, Any] | None = None) -> Annotation:
    """RBCs, WBCs and platelets in a stained blood smear, without a trained model.

    Method
    ------
    1. Stain: purple index = blue - green (azure-stained chromatin and platelet granules
       absorb green far more than blue; haemoglobin much less so), kept only where blue >
       red + ``stain_min_blue_over_red`` (blue-violet, not the magenta of eosin-tinged or
       parasitised RBCs) or where the summed optical density exceeds ``stain_dark_density``
       (chromatin is the darkest thing on a smear). Hysteresis: pixels above
       ``stain_threshold`` count when connected to a core above ``stain_core_threshold``.
    2. Foreground: background colour = median of the brightest pixels
       (``background_quantile``); foreground = colour distance to it above a threshold
       (triangle by default) computed on the unstained pixels only (a dark nucleus would
       stretch the histogram past pale RBCs), plus the stained pixels. Broken RBC rims are
       closed (``close_radius``) and central pallor filled (``max_hole``).
    3. Stained blobs within ``nucleus_group_radius`` of each other (the lobes of one
       segmented nucleus) form groups. A group of at least ``wbc_min_nucleus_area`` is a WBC
       nucleus; the WBC is the nucleus grown by ``wbc_margin`` into the foreground.
    4. A smaller stained group (``platelet_min_area`` .. ``platelet_max_area``) whose rim is
       (a ring ``platelet_rim``..2x``platelet_rim`` out) is mostly not unstained cell
       (``platelet_max_cell_contact``) is a platelet; one ringed by an RBC is an inclusion
       (parasite, stippling) and stays part of that RBC. Its pixels are the stained ones.
    5. The remaining foreground is RBCs: touching ones are split by watershed on the smoothed
       distance transform with seeds at least ``rbc_min_distance`` apart; fragments under
       ``rbc_min_area`` are dropped.

    Scores: WBC and platelet, how far the group's stain exceeds ``stain_threshold``; RBC, the
    solidity of the region (a merged pair or a fragment is less convex).

    Parameters
    ----------
    image_rgb
        ``(H, W, 3)`` RGB image (uint8/uint16 or float in [0, 1]); a 4th channel is ignored.
    params
        Overrides of ``DEFAULT_PARAMS["blood-classical"]``.

    Returns
    -------
    Annotation
        Instances in class set ``blood3`` (rbc, wbc, platelet).
    """
    p = resolve_params("blood-classical", params)
    rgb = _as_float_image(image_rgb, rgb=True, source="blood image")
    full_shape = rgb.shape[:2]
    rgb, scale = _working_scale(rgb, p)
    sigma = scale.length(p["smooth"])
    if sigma > 0:
        rgb = ndi.gaussian_filter(rgb, (sigma, sigma, 0))

    # 1. stained (purple) pixels: purple index = blue - green
    purple = rgb[..., 2] - rgb[..., 1]
    # azure-stained nuclei and platelets are blue-violet (blue above red); eosin-tinged or
    # parasitised RBCs that look purple are magenta (red above blue). Chromatin is also the
    # darkest thing on a smear: very dark purple pixels count whatever their hue (a nucleus
    # seen through an eosinophil's orange granules turns red-purple).
    background = _background_colour(rgb, p)
    density = -np.log10(np.clip(rgb, 1e-3, None) / np.clip(background, 1e-3, None))
    dark = density.sum(axis=2) > p["stain_dark_density"]
    violet = (rgb[..., 2] - rgb[..., 0] > p["stain_min_blue_over_red"]) | dark
    purple = np.where(violet, purple, 0.0)
    # hysteresis: faint purple (cell rims, blended edges) counts only when attached to a
    # clearly stained core, so pale lilac RBC outlines do not become nuclei
    dark_stain = dark & (purple > p["stain_dark_min_purple"])
    weak = (purple > p["stain_threshold"]) | dark_stain
    core = (purple > p["stain_core_threshold"]) | dark_stain
    weak_parts, _ = ndi.label(weak)
    has_core = np.zeros(int(weak_parts.max()) + 1, dtype=bool)
    has_core[weak_parts[core]] = True
    has_core[0] = False
    stained = has_core[weak_parts]
    open_r = scale.px(p["stain_open_radius"])
    if open_r > 0:
        stained = _open(stained, open_r)

    # 2. foreground = far (in colour) from the pale background. The threshold is computed on
    # unstained pixels only: a dark nucleus would otherwise stretch the histogram and push
    # the threshold above pale RBCs.
    colour_distance = np.sqrt(((rgb - background) ** 2).sum(axis=2))
    unstained = colour_distance[~stained] if (~stained).any() else colour_distance.ravel()
    level = _threshold(unstained, p["foreground_method"]) * float(p["foreground_scale"])
    foreground = (colour_distance > level) | stained
    close = scale.px(p["close_radius"])
    if close > 0:
        foreground = _close(foreground, close)
    foreground = fill_small_holes(foreground, scale.area(p["max_hole"]))

    # 3. group stained blobs (nucleus lobes) and class the groups by area
    labels = np.zeros(stained.shape, dtype=np.int32)
    classes: dict[int, int] = {}
    scores: dict[int, float] = {}
    wbc_id, plt_id, rbc_id = BLOOD3.id_of("wbc"), BLOOD3.id_of("platelet"), BLOOD3.id_of("rbc")
    taken = np.zeros(stained.shape, dtype=bool)
    next_id = 1
    if stained.any():
        group_r = scale.px(p["nucleus_group_radius"])
        reach = _dilate(stained, group_r)
        groups_img, n_groups = ndi.label(reach)
        group_of_pixel = np.where(stained, groups_img, 0)
        area = np.bincount(group_of_pixel.ravel(), minlength=n_groups + 1)
        strength = np.bincount(
            group_of_pixel.ravel(), weights=purple.ravel(), minlength=n_groups + 1
        ) / np.maximum(area, 1)
        stain_score = _logistic(strength - p["stain_threshold"], 0.05)
        is_wbc = area >= scale.area(p["wbc_min_nucleus_area"])
        is_wbc[0] = False

        # WBCs: nucleus grown into the surrounding foreground; several WBCs share the
        # cytoplasm between them by a watershed on distance to their nuclei
        if is_wbc.any():
            nuclei = np.where(is_wbc[group_of_pixel], group_of_pixel, 0)
            margin = scale.px(p["wbc_margin"])
            closed = _close(nuclei > 0, max(group_r, 1))
            body = _dilate(closed, margin)
            body = fill_small_holes(body, scale.area(p["max_hole"]) * 4)
            body &= foreground | closed
            seeds = np.where(closed & ~(nuclei > 0), 0, nuclei)
            wbc = watershed(ndi.distance_transform_edt(nuclei == 0), seeds, mask=body)
            wbc_ids = np.flatnonzero(is_wbc)
            remap = np.zeros(n_groups + 1, dtype=np.int32)
            remap[wbc_ids] = np.arange(next_id, next_id + len(wbc_ids))
            labels = np.where(wbc > 0, remap[wbc], 0).astype(np.int32)
            for g, new in zip(wbc_ids, remap[wbc_ids]):
                classes[int(new)] = wbc_id
                scores[int(new)] = float(stain_score[g])
            next_id += len(wbc_ids)
            taken |= labels > 0

        # platelets: small stained groups lying free, not ringed by an unstained cell
        is_plt = (area >= scale.area(p["platelet_min_area"])) & (
            area <= scale.area(p["platelet_max_area"])
        )
        is_plt &= ~is_wbc
        is_plt[0] = False
        if is_plt.any():
            candidates = np.where(is_plt[group_of_pixel] & ~taken, group_of_pixel, 0)
            # the rim is a ring 0.1-0.2 diameters out: beyond the blob's own blurred halo,
            # still inside an RBC that would enclose an inclusion
            rim_width = max(scale.px(p["platelet_rim"]), 1)
            gap, (near_r, near_c) = ndi.distance_transform_edt(candidates == 0, return_indices=True)
            owner = candidates[near_r, near_c]
            rim = (gap > rim_width) & (gap <= 2 * rim_width) & ~stained
            rim_total = np.bincount(owner[rim], minlength=n_groups + 1)
            rim_cell = np.bincount(owner[rim & foreground], minlength=n_groups + 1)
            contact = rim_cell / np.maximum(rim_total, 1)
            free = is_plt & (contact <= p["platelet_max_cell_contact"])
            plt_ids = np.flatnonzero(free)
            if len(plt_ids):
                remap = np.zeros(n_groups + 1, dtype=np.int32)
                remap[plt_ids] = np.arange(next_id, next_id + len(plt_ids))
                plt_pixels = (remap[candidates] > 0) & ~taken
                labels[plt_pixels] = remap[candidates][plt_pixels]
                for g, new in zip(plt_ids, remap[plt_ids]):
                    classes[int(new)] = plt_id
                    scores[int(new)] = float(stain_score[g])
                next_id += len(plt_ids)
                # a platelet's blurred halo must not turn into an RBC fragment
                taken |= _dilate(plt_pixels, rim_width)

    # 5. RBCs: the rest of the foreground, touching cells split by distance watershed
    rest = foreground & ~taken
    rbc = split_touching(
        rest,
        scale.px(p["rbc_min_distance"]),
        smooth=scale.length(p["rbc_distance_smooth"]),
    )
    rbc = remove_small_instances(rbc, scale.area(p["rbc_min_area"]))
    rbc, _ = relabel_sequential(rbc)
    n_rbc = int(rbc.max(initial=0))
    if n_rbc:
        props = regionprops_table(rbc, properties=("label", "solidity"))
        labels = np.where(rbc > 0, rbc + next_id - 1, labels).astype(np.int32)
        for lab, solidity in zip(props["label"], props["solidity"]):
            classes[int(lab) + next_id - 1] = rbc_id
            scores[int(lab) + next_id - 1] = float(solidity)
    return _annotation(labels, classes, scores, BLOOD3, p, "blood-classical", shape=full_shape)


def _background_colour(rgb: np.ndarray, p: Mapping[str, Any]) -> np.ndarray:
    """Median colour of the brightest pixels: the empty glass and plasma of a smear."""
    brightness = rgb.sum(axis=2)
    bright = brightness >= np.quantile(brightness, p["background_quantile"])
    return np.median(rgb[bright], axis=0)


def _threshold(values: np.ndarray, method: str) -> float:
    """A global threshold of ``values`` by name (triangle, otsu, li)."""
    methods: dict[str, Callable[[np.ndarray], float]] = {
        "triangle": filters.threshold_triangle,
        "otsu": filters.threshold_otsu,
        "li": filters.threshold_li,
    }
    try:
        func = methods[method]
    except KeyError:
        raise InputError(
            f"unknown threshold method {method!r}; known: {', '.join(methods)}"
        ) from None
    if float(values.max()) - float(values.min()) < 1e-6:
        return float(values.max())  # a flat image has nothing above its own level
    return float(func(values))


def _grey(image: np.ndarray, channel: int | None, source: str) -> np.ndarray:
    """One float channel in [0, 1]: ``channel`` of a multichannel image, or their mean."""
    img = _as_float_image(image, rgb=False, source=source)
    if img.ndim == 2:
        return img
    if channel is None:
        return img[..., : min(img.shape[-1], 3)].mean(axis=2)
    if not -img.shape[-1] <= int(channel) < img.shape[-1]:
        raise InputError(
            f"channel {channel} does not exist in an image of shape {img.shape}", source=source
        )
    return img[..., int(channel)]


def _grow_cells(cells: np.ndarray, foreground: np.ndarray, signal: np.ndarray) -> np.ndarray:
    """Each cell grown over the stained area around it, down the DNA signal (a watershed
    from the cells): a nuclei model outlines a NET's core, its expert box holds the spread
    DNA too. Stained areas no cell reaches stay objects of their own."""
    mask = foreground | (cells > 0)
    grown = watershed(-signal, markers=cells, mask=mask)
    orphans, _ = ndi.label(mask & (grown == 0))
    return np.where(grown > 0, grown, np.where(orphans > 0, orphans + int(grown.max()), 0))


def _dye_sum(image: np.ndarray, p: Mapping[str, Any]) -> np.ndarray:
    """Both DNA dyes added, at full size: every nucleus and every NET, for a cell finder."""
    if image.ndim == 2 or p["nuclear_channel"] is None:
        return _grey(image, None if image.ndim == 2 else p["dna_channel"], "NET image")
    return _grey(image, p["dna_channel"], "NET image") + _grey(
        image, p["nuclear_channel"], "NET image"
    )


# --------------------------------------------------------------------------------------
# fluorescence: bright cells on a dark background
# --------------------------------------------------------------------------------------
def fluo_classical(image: np.ndarray, params: Mapping[str, Any] | None = None) -> Annotation:
    """Bright cells on a dark background (e.g. Fluorescent Neuronal Cells), without a model.

    Method (as the Fluorescent Neuronal Cells ground truth was drafted, and the c-ResUnet
    post-processing): Gaussian smoothing; a local (adaptive) threshold over a window of
    ``block_size`` diameters, so uneven illumination and dim cells near bright ones are kept,
    AND a global floor: ``otsu_floor`` x the Otsu level, and at least ``min_snr`` robust
    noise deviations (MAD) above the median background, so background noise never passes;
    holes under ``max_hole`` filled; objects under ``min_area`` dropped; peaks of
    the smoothed distance transform at least ``min_distance`` diameters apart seed a
    watershed that splits touching cells.

    Score: mean intensity of the object relative to the threshold floor, squashed to (0, 1).

    Parameters
    ----------
    image
        2-D image, or ``(H, W, C)`` (``channel`` picks one; default the channel mean).
    params
        Overrides of ``DEFAULT_PARAMS["fluo-classical"]``.

    Returns
    -------
    Annotation
        Instances of class set ``cell``.
    """
    p = resolve_params("fluo-classical", params)
    img = _grey(image, p["channel"], "fluorescence image")
    full_shape = img.shape[:2]
    img, scale = _working_scale(img, p)
    sigma = scale.length(p["smooth"])
    if sigma > 0:
        img = ndi.gaussian_filter(img, sigma)
    block = max(int(round(scale.length(p["block_size"]))) | 1, 3)  # odd, >= 3
    local = filters.threshold_local(img, block, method="gaussian", offset=p["local_offset"])
    # two floors: a fraction of the global Otsu level, and a rise over the background
    # (median) of ``min_snr`` robust noise deviations, so an empty noisy field stays empty
    background = float(np.median(img))
    noise = 1.4826 * float(np.median(np.abs(img - background)))
    floor = max(_threshold(img, "otsu") * float(p["otsu_floor"]), background + p["min_snr"] * noise)
    foreground = (img > local) & (img > floor)
    foreground = fill_small_holes(foreground, scale.area(p["max_hole"]))
    labels = split_touching(
        foreground, scale.px(p["min_distance"]), smooth=scale.length(p["distance_smooth"])
    )
    labels = remove_small_instances(labels, scale.area(p["min_area"]))
    labels, _ = relabel_sequential(labels)
    n = int(labels.max(initial=0))
    classes = {i: CELL.id_of("cell") for i in range(1, n + 1)}
    scores: dict[int, float] = {}
    if n:
        means = ndi.mean(img, labels, np.arange(1, n + 1))
        spread = max(float(img.max()) - floor, 1e-6)
        score = _logistic((np.asarray(means) - floor) / spread, 0.1)
        scores = {i: float(s) for i, s in zip(range(1, n + 1), score)}
    return _annotation(labels, classes, scores, CELL, p, "fluo-classical", shape=full_shape)


# --------------------------------------------------------------------------------------
# NETs: neutrophils imaged with DNA dyes
# --------------------------------------------------------------------------------------
#: finds cells in a grey image of DNA stain at full size: a label image of the same shape
CellFinder = Callable[[np.ndarray], np.ndarray]


def net_classical(
    image: np.ndarray,
    params: Mapping[str, Any] | None = None,
    find_cells: CellFinder | None = None,
) -> Annotation:
    """NETs, dead, unstimulated and decondensed neutrophils, without a model (or with a
    model's cells: ``find_cells``).

    Method
    ------
    The assay images two DNA dyes: a membrane-impermeable one (``dna_channel``, SYTOX-like,
    green in the NET paper's JPEGs) that enters only cells whose membrane is compromised
    (dead cells, NETs), and a membrane-permeable one (``nuclear_channel``, Hoechst-like,
    blue) that stains every nucleus.

    1. Each channel is smoothed, its background (median) subtracted and thresholded
       (``threshold_method``, never below ``min_signal``); objects are the union, holes
       filled, touching objects split by a distance watershed, objects under ``min_area``
       dropped.
    2. Per object: area (in units of the reference nucleus area), solidity, mean signal of
       each dye, and the impermeable-dye fraction ``dna / (dna + nuclear)``.
    3. Rules, in order:

       - fraction >= ``compromised_min_dna_fraction`` (membrane compromised):
         **NET** when area >= ``net_min_area``, or fraction >= ``net_min_dna_fraction``
         (chromatin decondensed and spread, dominated by the impermeable dye), or solidity
         <= ``net_max_solidity`` (irregular); otherwise **dead** (a compact nucleus, still
         bright in the permeable dye: condensed/pyknotic);
       - intact: **decondensed** when area >= ``decondensed_min_area`` and its mean signal
         is at most ``decondensed_max_intensity`` x the median of the normal-size intact
         nuclei; otherwise **unstimulated**.

       With ``nuclear_channel=None`` there is no membrane read-out: NET by area or solidity
       as above; dead when compact and at least ``single_dye_dead_min_intensity`` x the
       median object's brightness; decondensed/unstimulated as above.

    Score: how far the deciding measurement lies past its threshold, squashed to (0, 1).

    Parameters
    ----------
    image
        ``(H, W, C)`` multichannel (e.g. RGB) image, or 2-D for a single DNA dye.
    params
        Overrides of ``DEFAULT_PARAMS["net-classical"]``.
    find_cells
        Replaces step 1: the objects are the cells it finds in the sum of the two dyes
        (``net-detector`` passes a nuclei model's); steps 2 and 3 are the same.

    Returns
    -------
    Annotation
        Instances in class set ``net4`` plus their bounding boxes (``meta["boxes_mirror_
        instances"]`` is True: the boxes describe the same objects, they are not extra ones).
    """
    p = resolve_params("net-classical", params)
    labels, features, full_shape = net_objects(image, p, find_cells)
    if not len(features["area"]):
        return _annotation(labels, {}, {}, NET4, p, "net-classical", shape=full_shape)
    class_of, score = classify_net_objects(features, p)
    index = np.arange(1, len(class_of) + 1)
    classes = {int(i): int(c) for i, c in zip(index, class_of)}
    scores = {int(i): float(s) for i, s in zip(index, score)}
    return _annotation(labels, classes, scores, NET4, p, "net-classical", shape=full_shape)


def net_objects(
    image: np.ndarray,
    params: Mapping[str, Any] | None = None,
    find_cells: CellFinder | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], tuple[int, int]]:
    """Steps 1 and 2 of :func:`net_classical`: the objects (labels at the working scale;
    ``find_cells``' cells where given) and their measurements, one array per feature
    indexed by ``label - 1`` (``area`` in reference-nucleus areas, ``solidity``,
    ``dna_mean``, ``fraction`` (NaN with one dye), ``brightness``), and the image's own
    shape. The rules of step 3 only read these, so they can be fitted on some images and
    applied to others (``classify_net_objects``)."""
    p = resolve_params("net-classical", params)
    img = _as_float_image(image, rgb=False, source="NET image")
    full_shape = img.shape[:2]
    img, scale = _working_scale(img, p)
    nuclear_channel = p["nuclear_channel"]
    if img.ndim == 2:
        dna = img
        nuclear_channel = None
    else:
        dna = _grey(img, p["dna_channel"], "NET image")
    nuclear = None if nuclear_channel is None else _grey(img, nuclear_channel, "NET image")

    sigma = scale.length(p["smooth"])
    signals = []
    foreground = np.zeros(dna.shape, dtype=bool)
    for channel in (dna, nuclear):
        if channel is None:
            continue
        smooth = ndi.gaussian_filter(channel, sigma) if sigma > 0 else channel
        rise = np.clip(smooth - np.median(smooth), 0.0, None)
        level = max(_threshold(rise, p["threshold_method"]), float(p["min_signal"]))
        foreground |= rise > level
        signals.append(rise)
    foreground = fill_small_holes(foreground, scale.area(p["max_hole"]))
    if find_cells is None:
        labels = split_touching(
            foreground, scale.px(p["min_distance"]), smooth=scale.length(p["distance_smooth"])
        )
    else:
        cells = resample_labels(find_cells(_dye_sum(image, p)), dna.shape)
        labels = _grow_cells(cells, foreground, np.sum(signals, axis=0))
    labels = remove_small_instances(labels, scale.area(p["min_area"]))
    labels, _ = relabel_sequential(labels)
    n = int(labels.max(initial=0))
    empty = np.zeros(0)
    if n == 0:
        return (
            labels,
            {k: empty for k in ("area", "solidity", "dna_mean", "fraction", "brightness")},
            full_shape,
        )
    index = np.arange(1, n + 1)
    props = regionprops_table(labels, properties=("label", "area", "solidity"))
    dna_mean = np.asarray(ndi.mean(signals[0], labels, index))
    if nuclear is not None:
        nuc_mean = np.asarray(ndi.mean(signals[1], labels, index))
        fraction = dna_mean / np.maximum(dna_mean + nuc_mean, 1e-6)
        brightness = nuc_mean  # intact nuclei are read in the permeable dye
    else:
        fraction = np.full(n, np.nan)
        brightness = dna_mean
    features = {
        "area": props["area"] / scale.area_unit,
        "solidity": props["solidity"],
        "dna_mean": dna_mean,
        "fraction": fraction,
        "brightness": brightness,
    }
    return labels, features, full_shape


def classify_net_objects(
    features: Mapping[str, np.ndarray], params: Mapping[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Step 3 of :func:`net_classical`: each object's ``net4`` class id and score from its
    measurements (:func:`net_objects`) and the rule thresholds in ``params``."""
    p = resolve_params("net-classical", params)
    area, solidity = features["area"], features["solidity"]
    fraction, brightness = features["fraction"], features["brightness"]
    two_dyes = not np.isnan(fraction).all()
    n = len(area)
    compromised = (
        fraction >= p["compromised_min_dna_fraction"] if two_dyes else np.zeros(n, dtype=bool)
    )
    net_by_area = area >= p["net_min_area"]
    net_by_shape = solidity <= p["net_max_solidity"]
    net_by_fraction = fraction >= p["net_min_dna_fraction"] if two_dyes else False
    is_net = net_by_area | net_by_shape | net_by_fraction
    if two_dyes:
        is_net &= compromised
        is_dead = compromised & ~is_net
    else:
        reference = np.median(brightness[~is_net]) if (~is_net).any() else np.median(brightness)
        is_dead = ~is_net & (brightness >= p["single_dye_dead_min_intensity"] * reference)
    intact = ~is_net & ~is_dead
    enlarged = area >= p["decondensed_min_area"]
    normal = intact & ~enlarged
    pool = brightness[normal] if normal.any() else brightness[intact]
    reference = float(np.median(pool)) if len(pool) else np.inf
    is_decondensed = intact & enlarged & (brightness <= p["decondensed_max_intensity"] * reference)

    ids = {name: NET4.id_of(name) for name in NET4.names}
    class_of = np.full(n, ids["unstimulated"], dtype=np.int32)
    class_of[is_decondensed] = ids["decondensed"]
    class_of[is_dead] = ids["dead"]
    class_of[is_net] = ids["NET"]

    # score: distance past the deciding threshold, on a log scale for areas
    area_margin = np.log(area / p["net_min_area"])
    if two_dyes:
        frac_margin = fraction - p["compromised_min_dna_fraction"]
        net_margin = np.maximum(area_margin, fraction - p["net_min_dna_fraction"])
        score = np.where(
            is_net,
            _logistic(net_margin, 0.15),
            np.where(
                is_dead,
                _logistic(np.minimum(frac_margin, -net_margin), 0.05),
                _logistic(-frac_margin, 0.03),
            ),
        )
    else:
        score = np.where(is_net, _logistic(area_margin, 0.15), _logistic(-area_margin, 0.3))
    decond_margin = np.log(area / p["decondensed_min_area"])
    score = np.where(is_decondensed, np.minimum(score, _logistic(decond_margin, 0.15)), score)
    score = np.where(
        intact & ~is_decondensed, np.minimum(score, _logistic(-decond_margin, 0.15)), score
    )
    return class_of, score


#: The pipelines by model name (the ``pipeline`` field of a classical model card).
PIPELINES = {
    "blood-classical": blood_classical,
    "fluo-classical": fluo_classical,
    "net-classical": net_classical,
}


def run_pipeline(
    name: str,
    image: np.ndarray,
    params: Mapping[str, Any] | None = None,
    find_cells: CellFinder | None = None,
) -> Annotation:
    """Run the classical pipeline ``name`` (a key of :data:`PIPELINES`) on ``image``;
    ``find_cells`` (a model's cells) only for ``net-classical``."""
    try:
        pipeline = PIPELINES[name]
    except KeyError:
        raise InputError(
            f"unknown classical pipeline {name!r}; known: {', '.join(PIPELINES)}"
        ) from None
    if find_cells is not None:
        if pipeline is not net_classical:
            raise InputError(f"the {name} pipeline finds its own cells: it takes no cells_from")
        return net_classical(image, params, find_cells)
    return pipeline(image, params)

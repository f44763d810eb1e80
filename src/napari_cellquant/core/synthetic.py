"""Synthetic images with exact ground truth, for samples, tests and demos.

:func:`synthetic_blood_smear` paints a plausible Giemsa-stained peripheral blood smear: a pale
pink background, red blood cells as biconcave discs (pink, with a pale central pallor, some
touching, a few infected with ring-form parasites), one or two white blood cells with dark
purple nuclei (lobed for neutrophils and eosinophils, round for lymphocytes) and a few small
purple platelets, then optical blur and camera noise. The returned :class:`Annotation` is the
exact instance and class truth of what was painted, so segmentation can be scored against it.

The image is formed as in bright-field microscopy: each object adds optical density
(absorbance) per colour channel and the camera sees ``background * 10 ** -density``. That keeps
overlaps and blur physically sensible (a nucleus over cytoplasm is darker than either).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .annotation import Annotation
from .classes import BLOOD10
from .errors import InputError

#: Colour of an empty glass + plasma region of a Giemsa smear (RGB, 0-255).
BACKGROUND_RGB = (238, 224, 228)

# Colours the stained structures would have on their own over the background, turned into
# optical densities below. Chosen to match typical Giemsa smears: haemoglobin pink-red,
# chromatin dark purple, neutrophil cytoplasm faint lilac, eosinophil granules orange-red.
_RBC_RGB = (212, 128, 140)
_NUCLEUS_RGB = (88, 42, 122)
_LYMPH_NUCLEUS_RGB = (72, 40, 118)
_NEUTRO_CYTO_RGB = (222, 204, 226)
_LYMPH_CYTO_RGB = (190, 198, 228)
_EOSINO_CYTO_RGB = (232, 150, 120)
_PLATELET_RGB = (150, 92, 172)
_PARASITE_RGB = (96, 50, 140)

_WBC_KINDS = ("neutrophil", "lymphocyte", "eosinophil")


def _density(rgb: tuple[int, int, int]) -> np.ndarray:
    """Optical density per channel that turns the background into ``rgb``."""
    return -np.log10(np.asarray(rgb, dtype=np.float64) / np.asarray(BACKGROUND_RGB))


@dataclass
class _Shape:
    """One painted object: centre, mean radius, outline wobble, and its class."""

    center: np.ndarray  # (row, col)
    radius: float
    harmonics: np.ndarray  # (k, 3): order, amplitude, phase of radius modulation
    class_name: str


def _window(center: np.ndarray, reach: float, shape: tuple[int, int]) -> tuple[slice, slice]:
    r0 = max(int(np.floor(center[0] - reach)), 0)
    c0 = max(int(np.floor(center[1] - reach)), 0)
    r1 = min(int(np.ceil(center[0] + reach)) + 1, shape[0])
    c1 = min(int(np.ceil(center[1] + reach)) + 1, shape[1])
    return slice(r0, r1), slice(c0, c1)


def _normalised_radius(obj: _Shape, window: tuple[slice, slice]) -> np.ndarray:
    """Distance to the centre divided by the (wobbly) radius at that angle: 1 on the outline."""
    rows = np.arange(window[0].start, window[0].stop, dtype=np.float64)[:, None] - obj.center[0]
    cols = np.arange(window[1].start, window[1].stop, dtype=np.float64)[None, :] - obj.center[1]
    theta = np.arctan2(rows, cols)
    scale = np.ones_like(theta)
    for order, amplitude, phase in obj.harmonics:
        scale = scale + amplitude * np.cos(order * theta + phase)
    return np.hypot(rows, cols) / (obj.radius * scale)


def _soft_inside(rho: np.ndarray, radius: float, edge_px: float = 0.8) -> np.ndarray:
    """1 inside the outline, 0 outside, a linear ramp ``edge_px`` wide across it."""
    return np.clip((1.0 - rho) * radius / edge_px + 0.5, 0.0, 1.0)


def _harmonics(rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """Low-order outline wobble: order 2 makes ellipses, orders 3-4 irregular outlines."""
    orders = np.array([2.0, 3.0, 4.0])
    amplitudes = rng.uniform(0.0, amplitude, size=3) * np.array([1.0, 0.5, 0.3])
    phases = rng.uniform(0.0, 2 * np.pi, size=3)
    return np.stack([orders, amplitudes, phases], axis=1)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-filtered noise (texture, illumination)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    std = field.std()
    return field / std if std > 0 else field


def _place_rbcs(
    rng: np.random.Generator,
    shape: tuple[int, int],
    radius: float,
    coverage: float,
    blocked: list[tuple[np.ndarray, float]],
    touching_fraction: float,
) -> list[_Shape]:
    """Random sequential placement of discs; some placed against a neighbour on purpose.

    Discs may overlap their neighbours by at most ~1.5 px (touching cells), never more, so
    every cell keeps a clear disc of its own.
    """
    area = shape[0] * shape[1]
    target = max(1, round(coverage * area / (np.pi * radius**2)))
    centers = np.zeros((0, 2))
    radii = np.zeros(0)
    fixed_c = np.array([c for c, _ in blocked]).reshape(-1, 2)
    fixed_r = np.array([r for _, r in blocked])
    cells: list[_Shape] = []
    attempts = 0
    margin = radius * 0.6  # allow cells cut by the border, as in real fields of view
    while len(cells) < target and attempts < target * 60:
        attempts += 1
        r = radius * rng.uniform(0.85, 1.15)
        if len(cells) and rng.random() < touching_fraction:
            # put this cell against an existing one: distance = sum of radii minus ~1 px
            j = rng.integers(len(cells))
            angle = rng.uniform(0, 2 * np.pi)
            dist = radii[j] + r - rng.uniform(0.3, 1.5)
            center = centers[j] + dist * np.array([np.sin(angle), np.cos(angle)])
        else:
            center = rng.uniform([-margin, -margin], [shape[0] + margin, shape[1] + margin])
        if not (
            -margin <= center[0] <= shape[0] + margin and -margin <= center[1] <= shape[1] + margin
        ):
            continue
        gaps = np.hypot(*(centers - center).T) - (radii + r) if len(cells) else np.array([np.inf])
        if gaps.min() < -1.6:
            continue
        if len(fixed_r):
            fixed_gaps = np.hypot(*(fixed_c - center).T) - (fixed_r + r)
            if fixed_gaps.min() < 1.0:
                continue
        centers = np.vstack([centers, center])
        radii = np.append(radii, r)
        cells.append(_Shape(center, r, _harmonics(rng, 0.06), "healthy_rbc"))
    return cells


def synthetic_blood_smear(
    shape: tuple[int, int] = (512, 512),
    seed: int = 0,
    *,
    rbc_radius: float = 17.0,
    rbc_coverage: float = 0.38,
    infected_fraction: float = 0.05,
    n_wbc: int | None = None,
    n_platelets: int | None = None,
    blur_sigma: float = 0.9,
    noise_std: float = 2.5,
) -> tuple[np.ndarray, Annotation]:
    """A synthetic Giemsa-stained blood smear and its exact ground truth.

    Parameters
    ----------
    shape
        Image size (rows, columns).
    seed
        Seed of the random generator; the same seed gives the same image and truth.
    rbc_radius
        Mean red-cell radius in pixels (white cells are about 1.7 times larger, platelets
        about a quarter).
    rbc_coverage
        Fraction of the field covered by red cells before overlaps are removed.
    infected_fraction
        Share of red cells that carry a ring-form parasite (class ``infected_rbc``).
    n_wbc, n_platelets
        Number of white cells / platelets; by default 1-2 white cells and 3-6 platelets per
        512 x 512 field (scaled by area).
    blur_sigma
        Optical blur (Gaussian sigma, pixels).
    noise_std
        Camera noise (standard deviation in 0-255 grey levels).

    Returns
    -------
    image
        ``(rows, cols, 3)`` uint8 RGB image.
    annotation
        Its truth in the ``blood10`` class set: one instance per painted object (red cells
        cut by the border included), classes ``healthy_rbc``, ``infected_rbc``,
        ``neutrophil``, ``lymphocyte``, ``eosinophil`` and ``platelet``.

    Raises
    ------
    InputError
        ``shape`` smaller than 16 x 16.
    """
    rows, cols = (int(shape[0]), int(shape[1]))
    if rows < 16 or cols < 16:
        raise InputError(f"synthetic_blood_smear needs at least 16 x 16 pixels, got {shape}")
    rng = np.random.default_rng(seed)
    area_factor = rows * cols / 512.0**2
    density = np.zeros((rows, cols, 3))
    # Each pixel belongs to the object whose outline it is deepest inside (smallest
    # normalised radius), which splits the thin overlaps of touching cells fairly.
    owner = np.zeros((rows, cols), dtype=np.int32)
    depth = np.full((rows, cols), np.inf)
    objects: list[_Shape] = []

    def claim(obj: _Shape, window: tuple[slice, slice], rho: np.ndarray) -> None:
        objects.append(obj)
        inside = (rho <= 1.0) & (rho < depth[window])
        owner[window][inside] = len(objects)
        depth[window][inside] = rho[inside]

    # --- white cells first, fully inside the field, apart from each other ---------------
    wbc_radius = rbc_radius * 1.7
    count_wbc = int(rng.integers(1, 3)) if n_wbc is None else int(n_wbc)
    blocked: list[tuple[np.ndarray, float]] = []
    for _ in range(count_wbc):
        radius = wbc_radius * rng.uniform(0.92, 1.1)
        for _attempt in range(200):
            low, high = radius + 2, np.array([rows, cols]) - radius - 2
            if np.any(high <= low):
                center = np.array([rows, cols]) / 2.0
            else:
                center = rng.uniform(low, high)
            if all(np.hypot(*(center - c)) > radius + r + 4 for c, r in blocked):
                break
        blocked.append((center, radius))
        kind = _WBC_KINDS[int(rng.integers(len(_WBC_KINDS)))]
        obj = _Shape(center, radius, _harmonics(rng, 0.04), kind)
        window = _window(center, radius * 1.2 + 3, (rows, cols))
        rho = _normalised_radius(obj, window)
        claim(obj, window, rho)
        _paint_wbc(rng, density, window, obj, rho)

    # --- red cells -----------------------------------------------------------------------
    rbcs = _place_rbcs(rng, (rows, cols), rbc_radius, rbc_coverage, blocked, 0.3)
    rbc_density = _density(_RBC_RGB)
    parasite_density = _density(_PARASITE_RGB)
    for obj in rbcs:
        window = _window(obj.center, obj.radius * 1.3 + 3, (rows, cols))
        if window[0].start >= window[0].stop or window[1].start >= window[1].stop:
            continue
        rho = _normalised_radius(obj, window)
        if not np.any(rho <= 1.0):
            continue
        # Biconcave disc: thick rim, thin centre (the central pallor), soft edge.
        # The pallor covers about the central third of the cell.
        pallor = rng.uniform(0.3, 0.42)
        rise = np.clip((rho - 0.12) / 0.5, 0.0, 1.0) ** 1.5
        thickness = (pallor + (1 - pallor) * rise) * _soft_inside(rho, obj.radius)
        density[window] += thickness[..., None] * rbc_density * rng.uniform(0.9, 1.1)
        if rng.random() < infected_fraction and _fully_inside(obj, rows, cols):
            obj.class_name = "infected_rbc"
            _paint_ring(rng, density[window], obj, window, parasite_density)
        claim(obj, window, rho)

    # --- platelets, in free space --------------------------------------------------------
    if n_platelets is None:
        count_platelets = int(rng.integers(3, 7) * max(area_factor, 0.25))
    else:
        count_platelets = int(n_platelets)
    platelet_density = _density(_PLATELET_RGB)
    placed = 0
    for _attempt in range(count_platelets * 100):
        if placed >= count_platelets:
            break
        radius = rbc_radius * rng.uniform(0.24, 0.36)
        center = rng.uniform([radius + 2, radius + 2], [rows - radius - 2, cols - radius - 2])
        window = _window(center, radius * 1.6 + 3, (rows, cols))
        if owner[window].any():
            continue
        obj = _Shape(center, radius, _harmonics(rng, 0.35), "platelet")
        rho = _normalised_radius(obj, window)
        granules = 1.0 + 0.35 * _smooth_noise(rng, rho.shape, 0.8)
        amount = _soft_inside(rho, radius) * np.clip(granules, 0.4, 1.8)
        density[window] += amount[..., None] * platelet_density
        claim(obj, window, rho)
        placed += 1

    image = _render(rng, density, blur_sigma, noise_std)
    annotation = _truth(owner, objects)
    return image, annotation


def _fully_inside(obj: _Shape, rows: int, cols: int) -> bool:
    r = obj.radius * 1.1
    return r <= obj.center[0] <= rows - r and r <= obj.center[1] <= cols - r


def _paint_wbc(
    rng: np.random.Generator,
    density: np.ndarray,
    window: tuple[slice, slice],
    obj: _Shape,
    rho: np.ndarray,
) -> None:
    """Cytoplasm over the whole cell, then the nucleus (lobed or round) on top."""
    inside = _soft_inside(rho, obj.radius)
    local_rows = np.arange(window[0].start, window[0].stop, dtype=np.float64)[:, None]
    local_cols = np.arange(window[1].start, window[1].stop, dtype=np.float64)[None, :]
    shape = rho.shape
    if obj.class_name == "eosinophil":
        # Coarse orange granules fill the cytoplasm.
        granules = np.clip(1.0 + 0.6 * _smooth_noise(rng, shape, 1.2), 0.2, 2.2)
        density[window] += (inside * granules)[..., None] * _density(_EOSINO_CYTO_RGB)
    elif obj.class_name == "lymphocyte":
        density[window] += inside[..., None] * _density(_LYMPH_CYTO_RGB)
    else:
        density[window] += inside[..., None] * _density(_NEUTRO_CYTO_RGB)

    if obj.class_name == "lymphocyte":
        # One large round nucleus, slightly off centre, leaving a thin rim of cytoplasm.
        offset = rng.uniform(-0.1, 0.1, size=2) * obj.radius
        nucleus = _Shape(obj.center + offset, obj.radius * 0.78, _harmonics(rng, 0.05), "")
        nucleus_density = _density(_LYMPH_NUCLEUS_RGB)
        amount = _soft_inside(_normalised_radius(nucleus, window), nucleus.radius, 1.2)
    else:
        # Segmented nucleus: 2 (eosinophil) or 3-4 (neutrophil) lobes along an arc, joined
        # by thin chromatin bridges.
        n_lobes = 2 if obj.class_name == "eosinophil" else int(rng.integers(3, 5))
        start = rng.uniform(0, 2 * np.pi)
        span = rng.uniform(2.0, 2.8)
        angles = start + np.linspace(0, span, n_lobes)
        arc = obj.radius * rng.uniform(0.38, 0.45)
        lobe_r = obj.radius * (0.36 if n_lobes == 2 else 0.3)
        lobes = obj.center + arc * np.stack([np.sin(angles), np.cos(angles)], axis=1)
        dist = np.full(shape, np.inf)
        for k, lobe in enumerate(lobes):
            d = np.hypot(local_rows - lobe[0], local_cols - lobe[1]) / (
                lobe_r * rng.uniform(0.9, 1.1)
            )
            dist = np.minimum(dist, d)
            if k:
                bridge = _segment_distance(local_rows, local_cols, lobes[k - 1], lobe)
                dist = np.minimum(dist, bridge / (lobe_r * 0.3))
        amount = _soft_inside(dist, lobe_r, 1.2)
        nucleus_density = _density(_NUCLEUS_RGB)
    chromatin = np.clip(1.0 + 0.18 * _smooth_noise(rng, shape, 1.5), 0.6, 1.5)
    # The nucleus replaces cytoplasm stain rather than adding to all of it.
    density[window] += (amount * chromatin * inside)[..., None] * nucleus_density * 0.85


def _segment_distance(
    rows: np.ndarray, cols: np.ndarray, a: np.ndarray, b: np.ndarray
) -> np.ndarray:
    """Distance of each pixel to the segment from ``a`` to ``b`` (both (row, col))."""
    ab = b - a
    t = ((rows - a[0]) * ab[0] + (cols - a[1]) * ab[1]) / max(float(ab @ ab), 1e-9)
    t = np.clip(t, 0.0, 1.0)
    return np.hypot(rows - (a[0] + t * ab[0]), cols - (a[1] + t * ab[1]))


def _paint_ring(
    rng: np.random.Generator,
    density_window: np.ndarray,
    obj: _Shape,
    window: tuple[slice, slice],
    parasite_density: np.ndarray,
) -> None:
    """A ring-form trophozoite: a thin dark ring with a chromatin dot, inside the red cell."""
    angle = rng.uniform(0, 2 * np.pi)
    center = obj.center + obj.radius * rng.uniform(0.15, 0.45) * np.array(
        [np.sin(angle), np.cos(angle)]
    )
    ring_r = obj.radius * rng.uniform(0.2, 0.27)
    local_rows = np.arange(window[0].start, window[0].stop, dtype=np.float64)[:, None]
    local_cols = np.arange(window[1].start, window[1].stop, dtype=np.float64)[None, :]
    d = np.hypot(local_rows - center[0], local_cols - center[1])
    ring = np.clip(1.0 - np.abs(d - ring_r) / 1.1, 0.0, 1.0)
    dot_angle = rng.uniform(0, 2 * np.pi)
    dot = center + ring_r * np.array([np.sin(dot_angle), np.cos(dot_angle)])
    dot_amount = np.clip(1.0 - np.hypot(local_rows - dot[0], local_cols - dot[1]) / 2.2, 0, 1)
    density_window += np.maximum(ring, dot_amount)[..., None] * parasite_density


def _render(
    rng: np.random.Generator, density: np.ndarray, blur_sigma: float, noise_std: float
) -> np.ndarray:
    """Optical density -> camera image: uneven illumination, blur, noise, 8-bit."""
    rows, cols = density.shape[:2]
    if blur_sigma > 0:
        density = ndimage.gaussian_filter(density, sigma=(blur_sigma, blur_sigma, 0))
    # A faint, smooth illumination falloff (vignetting) and background unevenness.
    rr = (np.arange(rows) - rows / 2)[:, None] / max(rows, cols)
    cc = (np.arange(cols) - cols / 2)[None, :] / max(rows, cols)
    light = 1.0 - 0.12 * (rr**2 + cc**2)
    light = light * (1.0 + 0.01 * _smooth_noise(rng, (rows, cols), max(rows, cols) / 16))
    image = np.asarray(BACKGROUND_RGB, dtype=np.float64) * light[..., None] * 10.0 ** (-density)
    if noise_std > 0:
        image = image + rng.normal(0.0, noise_std, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _truth(owner: np.ndarray, objects: list[_Shape]) -> Annotation:
    """Instance image and classes, renumbered 1..n in painting order without gaps."""
    present = np.bincount(owner.ravel(), minlength=len(objects) + 1) > 0
    present[0] = False
    lookup = np.zeros(len(objects) + 1, dtype=np.int32)
    lookup[present] = np.arange(1, int(present.sum()) + 1, dtype=np.int32)
    labels = lookup[owner]
    classes = {
        int(lookup[k + 1]): BLOOD10.id_of(obj.class_name)
        for k, obj in enumerate(objects)
        if present[k + 1]
    }
    return Annotation(
        labels=labels,
        class_set=BLOOD10,
        classes=classes,
        image_name="synthetic_blood_smear.png",
        meta={"generator": "synthetic_blood_smear"},
    )


__all__ = ["BACKGROUND_RGB", "synthetic_blood_smear"]

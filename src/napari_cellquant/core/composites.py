"""Composite blood smears made of real cells, with exact 10-class maps and instance ids.

The seed work behind ``blood-unet`` trained on composites: real cells cut out with their masks
and pasted onto smear backgrounds. Here that is done with the truth kept exact:

- :func:`cells_from_annotation` cuts every whole cell (not the ones the image's edge cuts: a
  half cell pasted elsewhere would look whole) out of an annotated image, with its mask, its
  class and the image it came from (cross-validation keeps a fold's test images, and every
  cell cut from them, out of its composites);
- :func:`smear_background` takes an image's empty smear: the colour and spread of the pixels
  away from every cell;
- :func:`composite_smear` pastes cells, each turned by any angle, flipped, scaled and given a
  stain of its own, onto one of those backgrounds, the later ones over the earlier (WBCs on
  top), and returns the image and its :class:`~.annotation.Annotation`: the instance ids of
  the pixels each cell shows and the cells' ``blood10`` classes. A cell mostly hidden by
  others keeps its pixels but loses its class, so training ignores it.

Red cells are parasitised at a share drawn per composite, so infected and healthy cells sit
on the same background: what tells them apart is the cell, not the smear it came from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .annotation import Annotation
from .classes import BLOOD10, ClassSet
from .errors import InputError

RBC_KINDS = ("healthy_rbc", "infected_rbc")
WBC_KINDS = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")
PLATELET_KINDS = ("platelet", "platelet_clump")
#: a cell keeps its class while at least this share of it is visible, and this many pixels
MIN_VISIBLE = 0.5
MIN_AREA = 30


@dataclass(frozen=True)
class Cell:
    """One real cell: its bounding box's pixels, its mask there, class and source image."""

    pixels: np.ndarray  # (h, w, 3) uint8 (float32 once turned and restained for pasting)
    mask: np.ndarray  # (h, w) bool
    class_name: str
    source: str


@dataclass(frozen=True)
class Background:
    """The empty smear of one image: mean RGB and its spread (standard deviation)."""

    colour: np.ndarray
    spread: np.ndarray
    source: str


def cells_from_annotation(
    image: np.ndarray,
    annotation: Annotation,
    *,
    min_area: int = MIN_AREA,
    source: str | None = None,
) -> list[Cell]:
    """Every classed instance of ``annotation`` that the image's edge does not cut."""
    if image.shape[:2] != annotation.shape:
        raise InputError(f"image {image.shape[:2]} and annotation {annotation.shape} differ")
    rgb = np.asarray(image)[..., :3]
    rows, cols = annotation.shape
    names = annotation.class_set.names
    name = source or annotation.image_name
    cells = []
    for index, found in enumerate(ndi.find_objects(annotation.labels), start=1):
        class_id = annotation.classes.get(index, 0)
        if found is None or not class_id:
            continue
        ys, xs = found
        if ys.start == 0 or xs.start == 0 or ys.stop == rows or xs.stop == cols:
            continue
        mask = annotation.labels[found] == index
        if mask.sum() < min_area:
            continue
        cells.append(Cell(rgb[found].copy(), mask, names[class_id - 1], name))
    return cells


def smear_background(image: np.ndarray, annotation: Annotation, margin: int = 3) -> Background:
    """Colour and spread of the pixels more than ``margin`` px from any object."""
    empty = ~ndi.binary_dilation(annotation.labels > 0, iterations=margin)
    if empty.sum() < 100:
        raise InputError(f"{annotation.image_name}: too little empty smear for a background")
    pixels = np.asarray(image)[..., :3][empty].astype(np.float64)
    return Background(pixels.mean(axis=0), pixels.std(axis=0), annotation.image_name)


def resized_cell(cell: Cell, factor: float) -> Cell:
    """``cell`` scaled by ``factor`` (bilinear pixels, the mask through its coverage)."""
    from skimage.transform import rescale

    pixels = rescale(cell.pixels.astype(np.float32), factor, order=1, channel_axis=-1)
    mask = rescale(cell.mask.astype(np.float32), factor, order=1) >= 0.5
    return Cell(
        np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mask, cell.class_name, cell.source
    )


def _transformed(cell: Cell, rng: np.random.Generator, scale: tuple[float, float]) -> Cell:
    """The cell turned by any angle, flipped half the time, scaled, with a stain of its own."""
    from skimage.transform import AffineTransform, warp

    factor = float(rng.uniform(*scale))
    angle = float(rng.uniform(0, 2 * math.pi))
    h, w = cell.mask.shape
    side = int(math.ceil(math.hypot(h, w) * factor)) + 2
    centre_in = np.array([w / 2, h / 2])
    centre_out = np.array([side / 2, side / 2])
    # output -> input: move to the centre, turn and shrink back, move to the cell's centre
    inverse = (
        AffineTransform(translation=-centre_out)
        + AffineTransform(rotation=-angle, scale=1 / factor)
        + AffineTransform(translation=centre_in)
    )
    pixels = warp(
        cell.pixels.astype(np.float32), inverse, output_shape=(side, side), order=1, mode="edge"
    )
    cover = warp(cell.mask.astype(np.float32), inverse, output_shape=(side, side), order=1)
    if rng.random() < 0.5:
        pixels, cover = pixels[:, ::-1], cover[:, ::-1]
    gain = np.exp(rng.normal(0.0, 0.04, 3)) * np.exp(rng.normal(0.0, 0.03))
    stained = pixels * gain + rng.normal(0.0, 4.0, 3)
    mask = cover >= min(0.5, float(cover.max()))
    keep = np.ix_(mask.any(axis=1), mask.any(axis=0))
    return Cell(
        np.clip(stained, 0, 255)[keep].astype(np.float32), mask[keep], cell.class_name, cell.source
    )


def _canvas(background: Background, shape: tuple[int, int], rng: np.random.Generator):
    """A smear background: its colour with a smooth grain of half its spread (the spread of
    an image's empty pixels also holds its slow shading)."""
    grain = ndi.gaussian_filter(rng.standard_normal(shape), 3)
    grain /= max(float(grain.std()), 1e-6)
    return (background.colour + 0.5 * grain[..., None] * background.spread).astype(np.float32)


def _drawn(
    rng: np.random.Generator,
    by_class: dict[str, list[Cell]],
    kinds: Sequence[str],
    n: int,
    weights: Sequence[float] | None = None,
) -> list[Cell]:
    """``n`` cells of ``kinds``: a kind first (uniform, or by ``weights``), then a cell."""
    present = [k for k in kinds if by_class.get(k)]
    if not present or n <= 0:
        return []
    p = None
    if weights is not None:
        w = np.array([weights[kinds.index(k)] for k in present], dtype=np.float64)
        p = w / w.sum() if w.sum() > 0 else None
    chosen = rng.choice(len(present), size=n, p=p)
    return [by_class[present[k]][rng.integers(len(by_class[present[k]]))] for k in chosen]


def _place(
    mask: np.ndarray, labels: np.ndarray, rng: np.random.Generator, max_overlap: float
) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """Where a cell goes: the canvas window and the part of the cell inside the canvas.

    Its centre lands anywhere on the canvas, so cells are cut by the canvas's edge as by a
    photograph's; at most ``max_overlap`` of the cell may cover cells already there.
    """
    h, w = mask.shape
    rows, cols = labels.shape
    area = max(int(mask.sum()), 1)
    for _ in range(20):
        top = int(rng.integers(-(h // 2), rows - h // 2))
        left = int(rng.integers(-(w // 2), cols - w // 2))
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + h, rows), min(left + w, cols)
        canvas = (slice(y0, y1), slice(x0, x1))
        part = (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
        covered = np.count_nonzero(labels[canvas][mask[part]])
        if covered <= max_overlap * area:
            return canvas, part
    return None


def composite_smear(
    cells: Sequence[Cell],
    backgrounds: Sequence[Background],
    rng: np.random.Generator,
    *,
    shape: tuple[int, int] = (224, 224),
    rbc: tuple[int, int] = (8, 30),
    wbc: tuple[int, int] = (0, 2),
    platelets: tuple[int, int] = (0, 4),
    infected_shares: Sequence[float] = (0.0, 0.0, 0.3, 0.7),
    scale: tuple[float, float] = (0.85, 1.15),
    max_overlap: float = 0.2,
    class_set: ClassSet = BLOOD10,
    name: str = "composite",
) -> tuple[np.ndarray, Annotation]:
    """One composite smear and its exact truth (see the module's description).

    Counts are drawn uniformly from the ``(low, high)`` ranges; WBC types uniformly among those
    in ``cells`` (the rare ones as often as the common), the parasitised share of the red
    cells from ``infected_shares``. A cell is placed where at most ``max_overlap`` of it lies
    over cells already there (or left out after 20 tries). ``meta["sources"]`` names the
    images every pasted cell and the background came from.
    """
    if not cells or not backgrounds:
        raise InputError("a composite needs cells and at least one background")
    by_class: dict[str, list[Cell]] = {}
    for cell in cells:
        by_class.setdefault(cell.class_name, []).append(cell)
    share = float(rng.choice(np.asarray(infected_shares, dtype=np.float64)))
    n_rbc = int(rng.integers(rbc[0], rbc[1] + 1))
    chosen = (
        _drawn(rng, by_class, RBC_KINDS, n_rbc, (1 - share, share))
        + _drawn(rng, by_class, PLATELET_KINDS, int(rng.integers(platelets[0], platelets[1] + 1)))
        + _drawn(rng, by_class, WBC_KINDS, int(rng.integers(wbc[0], wbc[1] + 1)))
    )
    background = backgrounds[int(rng.integers(len(backgrounds)))]
    image = _canvas(background, shape, rng)
    labels = np.zeros(shape, dtype=np.int32)
    pasted: dict[int, int] = {}  # id -> pixels at pasting
    classes: dict[int, int] = {}
    sources = {background.source}
    for cell in chosen:
        placed = _transformed(cell, rng, scale)
        spot = _place(placed.mask, labels, rng, max_overlap)
        if spot is None:
            continue
        canvas, part = spot
        inside = placed.mask[part]
        # a soft inner rim: the cut-out's edge blends into the smear (outside its mask the
        # cut-out holds its source's neighbours, never pasted)
        soft = ndi.gaussian_filter(placed.mask.astype(np.float32), 0.7) * placed.mask
        alpha = np.clip(2 * soft[part], 0, 1)[..., None]
        image[canvas] = alpha * placed.pixels[part] + (1 - alpha) * image[canvas]
        new_id = len(pasted) + 1
        labels[canvas][inside] = new_id
        pasted[new_id] = int(inside.sum())
        classes[new_id] = class_set.id_of(cell.class_name)
        sources.add(cell.source)
    visible = np.bincount(labels.ravel(), minlength=len(pasted) + 1)
    for index, area in pasted.items():
        if visible[index] < max(MIN_VISIBLE * area, MIN_AREA):
            del classes[index]  # mostly hidden: its pixels stay, unclassed (ignored)
    noisy = image + rng.normal(0.0, 2.0, image.shape)
    out = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    return out, Annotation(
        labels, class_set, classes, image_name=name, meta={"sources": sorted(sources)}
    )

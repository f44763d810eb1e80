"""Composite smears of real cells: cut-outs, backgrounds and the exact truth of what was pasted."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk

from napari_cellquant.core.annotation import Annotation
from napari_cellquant.core.classes import BLOOD10
from napari_cellquant.core.composites import (
    MIN_AREA,
    cells_from_annotation,
    composite_smear,
    resized_cell,
    smear_background,
)
from napari_cellquant.core.errors import InputError

BACKGROUND = (236, 222, 226)
COLOURS = {  # one flat colour per class, far apart, so each pasted pixel tells its cell
    "healthy_rbc": (210, 120, 130),
    "infected_rbc": (120, 200, 110),
    "neutrophil": (90, 40, 130),
    "platelet": (40, 150, 220),
}


def _source(name: str, seed: int = 0) -> tuple[np.ndarray, Annotation]:
    """A 160 x 160 smear of flat discs: 6 healthy and 4 infected RBCs, one neutrophil, two
    platelets, an unclassed object and an RBC cut by the left edge."""
    rng = np.random.default_rng(seed)
    image = np.empty((160, 160, 3), np.uint8)
    image[...] = BACKGROUND
    labels = np.zeros((160, 160), np.int32)
    classes = {}
    spots = [(r, c) for r in range(24, 140, 34) for c in range(40, 150, 34)]
    kinds = ["healthy_rbc"] * 6 + ["infected_rbc"] * 4 + ["neutrophil"] + ["platelet"] * 2
    for i, (kind, (r, c)) in enumerate(zip([*kinds, None], spots, strict=False), start=1):
        radius = {"neutrophil": 15, "platelet": 5}.get(kind or "", 12)
        rr, cc = disk((r + rng.integers(-2, 3), c), radius, shape=labels.shape)
        labels[rr, cc] = i
        image[rr, cc] = COLOURS.get(kind or "", (0, 0, 0))
        if kind:
            classes[i] = BLOOD10.id_of(kind)
    rr, cc = disk((75, 3), 12, shape=labels.shape)  # cut by the edge
    labels[rr, cc] = 99
    image[rr, cc] = COLOURS["healthy_rbc"]
    classes[99] = BLOOD10.id_of("healthy_rbc")
    return image, Annotation(labels, BLOOD10, classes, image_name=name)


def _bank(*names: str):
    cells, backgrounds = [], []
    for k, name in enumerate(names):
        image, annotation = _source(name, seed=k)
        cells += cells_from_annotation(image, annotation)
        backgrounds.append(smear_background(image, annotation))
    return cells, backgrounds


def test_cut_outs_are_the_whole_classed_cells_with_their_source():
    image, annotation = _source("a.png")
    cells = cells_from_annotation(image, annotation)
    kinds = sorted(c.class_name for c in cells)
    # the edge-cut RBC and the unclassed object are left out
    assert kinds == sorted(
        ["healthy_rbc"] * 6 + ["infected_rbc"] * 4 + ["neutrophil"] * 1 + ["platelet"] * 2
    )
    assert {c.source for c in cells} == {"a.png"}
    for cell in cells:
        assert cell.pixels.shape[:2] == cell.mask.shape
        assert (cell.pixels[cell.mask] == COLOURS[cell.class_name]).all()
    background = smear_background(image, annotation)
    np.testing.assert_allclose(background.colour, BACKGROUND, atol=0.5)


def test_cell_resized_by_area():
    image, annotation = _source("a.png")
    cell = next(c for c in cells_from_annotation(image, annotation) if c.class_name == "neutrophil")
    bigger = resized_cell(cell, 2.0)
    assert bigger.mask.sum() == pytest.approx(4 * cell.mask.sum(), rel=0.1)
    assert bigger.class_name == "neutrophil" and bigger.pixels.dtype == np.uint8


def test_composite_truth_is_exactly_what_was_pasted():
    cells, backgrounds = _bank("a.png", "b.png")
    for seed in range(5):
        image, truth = composite_smear(cells, backgrounds, np.random.default_rng(seed))
        assert image.shape == (224, 224, 3) and image.dtype == np.uint8
        ids = set(np.unique(truth.labels)) - {0}
        assert set(truth.classes) <= ids
        colours = np.array(list(COLOURS.values()), dtype=np.float64)
        names = list(COLOURS)
        for index, class_id in truth.classes.items():
            inside = truth.labels == index
            assert inside.sum() >= MIN_AREA
            # each classed cell's pixels carry its own class's colour (up to stain jitter)
            mean = image[inside].astype(np.float64).mean(axis=0)
            nearest = names[int(np.argmin(np.abs(colours - mean).sum(axis=1)))]
            assert nearest == BLOOD10.names[class_id - 1], (index, mean)
        empty = truth.labels == 0
        np.testing.assert_allclose(image[empty].mean(axis=0), BACKGROUND, atol=6)
        assert truth.counts()["healthy_rbc"] + truth.counts()["infected_rbc"] >= 4


def test_composites_use_only_the_bank_they_are_given_and_repeat_by_seed():
    cells, backgrounds = _bank("train1.png", "train2.png")
    first = composite_smear(cells, backgrounds, np.random.default_rng(7))
    again = composite_smear(cells, backgrounds, np.random.default_rng(7))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1].labels, again[1].labels)
    for seed in range(5):
        _, truth = composite_smear(cells, backgrounds, np.random.default_rng(seed))
        assert set(truth.meta["sources"]) <= {"train1.png", "train2.png"}


def test_parasitised_share_is_drawn_per_composite():
    cells, backgrounds = _bank("a.png")
    rng = np.random.default_rng(3)
    for share, present, absent in (
        (0.0, "healthy_rbc", "infected_rbc"),
        (1.0, "infected_rbc", "healthy_rbc"),
    ):
        _, truth = composite_smear(cells, backgrounds, rng, infected_shares=(share,), rbc=(10, 12))
        assert truth.counts()[present] >= 5 and truth.counts()[absent] == 0


def test_composite_without_cells_or_backgrounds_is_an_input_error():
    cells, backgrounds = _bank("a.png")
    with pytest.raises(InputError, match="needs cells"):
        composite_smear([], backgrounds, np.random.default_rng(0))
    with pytest.raises(InputError, match="needs cells"):
        composite_smear(cells, [], np.random.default_rng(0))

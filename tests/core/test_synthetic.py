"""The synthetic smear: deterministic, physically plausible, and its truth matches its pixels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from napari_cellquant.core.classes import BLOOD10
from napari_cellquant.core.errors import InputError
from napari_cellquant.core.synthetic import BACKGROUND_RGB, synthetic_blood_smear

RBC = {"healthy_rbc", "infected_rbc"}
WBC = {"neutrophil", "lymphocyte", "eosinophil"}


@pytest.fixture(scope="module")
def smear():
    return synthetic_blood_smear(shape=(512, 512), seed=0)


def _class_mask(ann, names):
    ids = {BLOOD10.id_of(n) for n in names}
    return np.isin(ann.class_map(), list(ids))


def test_same_seed_same_image_other_seed_differs(smear):
    image, ann = smear
    again, ann_again = synthetic_blood_smear(shape=(512, 512), seed=0)
    np.testing.assert_array_equal(image, again)
    np.testing.assert_array_equal(ann.labels, ann_again.labels)
    assert ann.classes == ann_again.classes
    other, _ = synthetic_blood_smear(shape=(512, 512), seed=1)
    assert np.mean(other != image) > 0.2


def test_image_and_truth_are_consistent(smear):
    image, ann = smear
    assert image.shape == (512, 512, 3) and image.dtype == np.uint8
    assert ann.shape == (512, 512) and ann.class_set is BLOOD10
    ids = ann.instance_ids()
    np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))  # sequential, no gaps
    assert set(ann.classes) == set(ids.tolist())  # every instance has a class
    counts = ann.counts()
    assert counts["healthy_rbc"] + counts["infected_rbc"] >= 60
    assert 1 <= sum(counts[n] for n in WBC) <= 2
    assert counts["platelet"] >= 3
    assert {n for n, c in counts.items() if c} <= RBC | WBC | {"platelet"}


def test_every_instance_is_one_connected_object(smear):
    _, ann = smear
    for index, window in enumerate(ndi.find_objects(ann.labels), start=1):
        mask = ann.labels[window] == index
        parts, n = ndi.label(mask)
        sizes = np.bincount(parts.ravel())[1:]
        assert sizes.max() >= 0.97 * mask.sum(), f"instance {index} split into {n} parts"


def test_colours_follow_giemsa_staining(smear):
    image, ann = smear
    pixels = image.astype(float)
    background = pixels[ndi.binary_erosion(ann.labels == 0, iterations=3)].mean(axis=0)
    # pale pink background (vignetting darkens the corners a little)
    assert np.all(np.abs(background - BACKGROUND_RGB) < 15)
    assert background[0] > background[1]
    rbc = pixels[_class_mask(ann, RBC)].mean(axis=0)
    # red cells are pink-red: green absorbed most, red least
    assert rbc[0] > rbc[2] > rbc[1]
    assert background[1] - rbc[1] > 40
    # nuclei are the darkest structures, purple (blue above green)
    wbc = pixels[_class_mask(ann, WBC)]
    darkest = wbc[wbc.sum(axis=1) <= np.percentile(wbc.sum(axis=1), 20)].mean(axis=0)
    assert darkest.sum() < rbc.sum() - 150
    assert darkest[2] > darkest[1]
    platelets = pixels[_class_mask(ann, {"platelet"})].mean(axis=0)
    assert platelets[2] > platelets[1]


def test_red_cells_show_central_pallor(smear):
    image, ann = smear
    green = image[..., 1].astype(float)
    healthy = BLOOD10.id_of("healthy_rbc")
    brighter = []
    for index, window in enumerate(ndi.find_objects(ann.labels), start=1):
        mask = ann.labels[window] == index
        touches_border = (
            window[0].start == 0
            or window[1].start == 0
            or window[0].stop == ann.shape[0]
            or window[1].stop == ann.shape[1]
        )
        if ann.classes[index] != healthy or touches_border:
            continue
        inside = ndi.distance_transform_edt(mask)
        radius = inside.max()
        centre = green[window][inside >= 0.75 * radius].mean()
        rim = green[window][(inside >= 0.2 * radius) & (inside <= 0.45 * radius)].mean()
        brighter.append(centre > rim + 3)
    assert len(brighter) >= 30
    assert np.mean(brighter) > 0.9


def test_some_red_cells_touch(smear):
    _, ann = smear
    lab = ann.labels
    rbc = _class_mask(ann, RBC)
    # pairs of 4-neighbours that are both red cells with different ids
    right = (lab[:, 1:] != lab[:, :-1]) & rbc[:, 1:] & rbc[:, :-1]
    down = (lab[1:, :] != lab[:-1, :]) & rbc[1:, :] & rbc[:-1, :]
    pairs = {
        tuple(sorted(p))
        for p in np.concatenate(
            [
                np.stack([lab[:, 1:][right], lab[:, :-1][right]], axis=1),
                np.stack([lab[1:, :][down], lab[:-1, :][down]], axis=1),
            ]
        ).tolist()
    }
    assert len(pairs) >= 5


def test_simple_threshold_finds_the_cells(smear):
    """The smear is usable for classical segmentation: Otsu on green recovers the cells."""
    image, ann = smear
    green = image[..., 1]
    foreground = green < threshold_otsu(green)
    truth = ann.labels > 0
    iou = (foreground & truth).sum() / (foreground | truth).sum()
    assert iou > 0.85


def test_counts_and_sizes_follow_parameters():
    image, ann = synthetic_blood_smear(
        shape=(300, 700), seed=5, n_wbc=2, n_platelets=4, noise_std=0, blur_sigma=0
    )
    assert image.shape == (300, 700, 3)
    counts = ann.counts()
    assert sum(counts[n] for n in WBC) == 2
    assert counts["platelet"] == 4
    wbc_area = _class_mask(ann, WBC).sum() / 2
    rbc_ids = [i for i, c in ann.classes.items() if BLOOD10.name_of(c) in RBC]
    rbc_area = np.median(np.bincount(ann.labels.ravel())[rbc_ids])
    assert 2.0 < wbc_area / rbc_area < 4.5  # white cells ~1.7x the red-cell radius


def test_too_small_is_refused():
    with pytest.raises(InputError, match="16 x 16"):
        synthetic_blood_smear(shape=(8, 64))

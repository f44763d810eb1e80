"""core.training.losses: the contact weight finds the borders touching objects share, through
augmentation's zoom, and weighs the distance error there alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.draw import disk

from napari_cellquant.core.annotation import Boxes
from napari_cellquant.core.training.augment import AugmentSettings, make_batch
from napari_cellquant.core.training.datasets import TrainingSample, distance_targets
from napari_cellquant.core.training.losses import CONTACT_RADIUS, contact_zone, dense_loss

SIZE = 96


def _two_touching_and_one_lone() -> np.ndarray:
    """Nuclei 1 and 2 (radius 12) pressed together: 1 ends at column 30, 2 starts at 31;
    nucleus 3 alone."""
    labels = np.zeros((SIZE, SIZE), np.int32)
    labels[disk((30, 19), 12, shape=labels.shape)] = 1
    right = np.zeros_like(labels, bool)
    right[disk((30, 41), 12, shape=labels.shape)] = True
    labels[right & (labels == 0)] = 2
    labels[disk((70, 60), 12, shape=labels.shape)] = 3
    return labels


def _sample(labels: np.ndarray) -> TrainingSample:
    distance, boundary = distance_targets(labels)
    pixels = np.zeros((*labels.shape, 3), np.float32)
    return TrainingSample("t", pixels, (labels > 0).astype(np.int64), distance, boundary, Boxes())


def _zone(labels: np.ndarray) -> np.ndarray:
    sample = _sample(labels)
    classes = torch.from_numpy(sample.classes)[None]
    boundary = torch.from_numpy(sample.boundary)[None, None]
    return contact_zone(classes, boundary)[0, 0].numpy()


def test_contact_zone_covers_the_shared_border_and_nothing_else():
    labels = _two_touching_and_one_lone()
    zone = _zone(labels) > 0
    assert not (zone & (labels == 3)).any()  # the lone nucleus's outline is no contact
    cols = np.nonzero(zone)[1]
    # the valley between nuclei 1 and 2, both sides, not its ends at the background
    assert (cols.min(), cols.max()) == (30 - CONTACT_RADIUS, 31 + CONTACT_RADIUS)
    assert zone[27:34, 30:32].all()  # the chord where the two discs meet
    assert not zone[:, :27].any() and not zone[:, 34:].any()
    assert set(np.unique(labels[zone])) == {1, 2}


def test_contact_zone_holds_through_zoomed_crops():
    """Zoomed in, borders are 2 px wide; the lone nucleus must still get no contact weight."""
    labels = _two_touching_and_one_lone()
    settings = AugmentSettings(crop=SIZE, scale_range=(1.6, 1.6), object_bias=0.0)
    batch = make_batch([_sample(labels)], 8, settings, np.random.default_rng(1))
    zone = contact_zone(batch["classes"], batch["boundary"])
    assert zone.sum() > 0
    foreground = (batch["classes"] == 1).float()
    # every crop: the zone lies inside touching nuclei, a small part of the foreground
    assert float((zone[:, 0] * (1 - foreground)).sum()) == 0
    assert float(zone.sum()) < 0.2 * float(foreground.sum())


@pytest.mark.parametrize("weight", [0.0, 10.0])
def test_contact_weight_scales_the_distance_error_at_contacts_only(weight):
    labels = _two_touching_and_one_lone()
    sample = _sample(labels)
    batch = {
        "classes": torch.from_numpy(sample.classes)[None],
        "distance": torch.from_numpy(sample.distance)[None, None],
        "boundary": torch.from_numpy(sample.boundary)[None, None],
        "valid": torch.ones(1, 1, SIZE, SIZE, dtype=torch.bool),
    }
    zone = contact_zone(batch["classes"], batch["boundary"])
    off_at_contact = {"distance": batch["distance"] + 0.5 * zone}
    lone = torch.from_numpy(labels == 3)[None, None].float()
    off_on_lone = {"distance": batch["distance"] + 0.5 * lone}
    n = SIZE * SIZE
    contact_loss, _ = dense_loss(off_at_contact, batch, torch.ones(2), contact_weight=weight)
    lone_loss, _ = dense_loss(off_on_lone, batch, torch.ones(2), contact_weight=weight)
    assert float(contact_loss) == pytest.approx((1 + weight) * 0.5 * float(zone.sum()) / n)
    assert float(lone_loss) == pytest.approx(0.5 * float(lone.sum()) / n)

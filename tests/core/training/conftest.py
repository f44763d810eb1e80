"""Fixtures of the training tests: one torch thread, a tiny smear, a network trained on it."""

from __future__ import annotations

import pytest
import torch
from training_cases import config, dense_card

from napari_cellquant.core.annotation import Annotation
from napari_cellquant.core.classes import CELL
from napari_cellquant.core.synthetic import synthetic_blood_smear
from napari_cellquant.core.training import (
    train,
)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def smear():
    """A 96 x 96 synthetic smear and its truth as one-class cells."""
    image, truth = synthetic_blood_smear((96, 96), seed=1, rbc_radius=10)
    return image, Annotation.from_labels(truth.labels, CELL, image_name="smear.png")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, smear):
    """A tiny segmenter overfitted to the smear (shared by the fine-tuning tests)."""
    folder = tmp_path_factory.mktemp("trained")
    card = dense_card(folder)
    result = train(
        config(
            card,
            smear,
            folder / "cells.pt",
            epochs=12,
            steps_per_epoch=5,
            crop=96,
            augment=True,
            scale_range=(0.9, 1.1),
        )
    )
    return result

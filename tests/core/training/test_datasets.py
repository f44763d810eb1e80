"""core.training.datasets: files and layers become training samples; classes map by name."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from training_cases import (
    dense_card,
)

from napari_cellquant.core.annotation import Annotation, Boxes
from napari_cellquant.core.classes import BLOOD3, BLOOD10, CELL
from napari_cellquant.core.errors import InputError
from napari_cellquant.core.models.card import ModelCard
from napari_cellquant.core.synthetic import synthetic_blood_smear
from napari_cellquant.core.training import (
    load_training_pairs,
    make_sample,
)
from napari_cellquant.core.training.datasets import class_lookup


def test_class_mapping_by_name_and_blood10_to_blood3():
    lookup = class_lookup(BLOOD10, BLOOD3)
    assert lookup[BLOOD10.id_of("neutrophil")] == BLOOD3.id_of("wbc")
    assert lookup[BLOOD10.id_of("infected_rbc")] == BLOOD3.id_of("rbc")
    assert lookup[BLOOD10.id_of("platelet_clump")] == BLOOD3.id_of("platelet")
    assert class_lookup(BLOOD3, BLOOD3).tolist() == [0, 1, 2, 3]


def test_box_only_data_cannot_train_a_segmenter(smear, tmp_path):
    image, _ = smear
    annotation = Annotation.empty((96, 96), CELL, boxes=Boxes([[1, 1, 9, 9]], [1]))
    card = ModelCard.load(dense_card(tmp_path))
    with pytest.raises(InputError, match="boxes only"):
        make_sample(image, annotation, card)


def test_real_data_maps_onto_the_bundled_class_sets(shared_data):
    from napari_cellquant.core.models.registry import get_card

    blood = load_training_pairs(
        shared_data / "blood_smear_224" / "images",
        shared_data / "blood_smear_224" / "segments",
        class_set="blood10",
    )
    assert len(blood) == 14 and blood[0][0].shape == (224, 224, 3)
    sample = make_sample(*blood[0], get_card("blood-unet"))
    assert sample.classes.max() <= 9 and (sample.classes > 0).mean() > 0.1
    assert sample.distance.max() == pytest.approx(1.0)
    with pytest.warns(UserWarning):
        nets = load_training_pairs(None, shared_data / "net_fluorescence" / "coco.json")
    samples = [make_sample(image, ann, get_card("net-centernet")) for image, ann in nets]
    assert sorted(len(s.boxes) for s in samples) == [16, 27]


def test_napari_layers_become_training_samples(tmp_path):
    """Corrected napari layers (Labels with class features) train like files do."""
    from napari_cellquant._layers import annotation_to_layer_data, layer_data_to_annotation

    image, truth = synthetic_blood_smear((64, 64), seed=4, rbc_radius=9)
    layers = annotation_to_layer_data(truth)
    (annotation,) = layer_data_to_annotation(layers)
    card = ModelCard.load(dense_card(tmp_path, "blood3", 3, name="coarse"))
    sample = make_sample(image, annotation, card)
    rbc = np.isin(truth.class_map(), [BLOOD10.id_of("healthy_rbc"), BLOOD10.id_of("infected_rbc")])
    assert np.array_equal(sample.classes == BLOOD3.id_of("rbc"), rbc)


def test_training_images_that_do_not_fit_their_labels_are_refused(tmp_path):
    from skimage.io import imsave

    masks, images = tmp_path / "masks", tmp_path / "images"
    masks.mkdir()
    images.mkdir()
    labels = np.zeros((32, 40), np.uint16)
    labels[4:12, 5:15] = 1
    tifffile.imwrite(masks / "cells_instances.tif", labels)
    tifffile.imwrite(masks / "cells_classes.tif", (labels > 0).astype(np.uint8))
    imsave(images / "cells.png", np.zeros((32, 48, 3), np.uint8), check_contrast=False)
    with pytest.raises(
        InputError,
        match=r"label shape \(32, 40\) differs from image shape "
        r"\(32, 48\)",
    ):
        load_training_pairs(images, masks)

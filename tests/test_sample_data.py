"""Sample data opens through the manifest, as a user picks it from File > Open Sample."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_cellquant._sample_data import NET_BOXES, NET_IMAGE, SAMPLES_DIR
from napari_cellquant.core.classes import BLOOD10, NET4
from napari_cellquant.core.synthetic import synthetic_blood_smear

PLUGIN = "napari-cellquant"


def test_net_sample_gives_image_and_class_coloured_boxes(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "net_fluorescence")
    assert [(layer.name, layer._type_string) for layer in viewer.layers] == [
        ("K.Fiok3_1Per2h006_scale", "image"),
        ("K.Fiok3_1Per2h006_scale boxes", "shapes"),
    ]
    image, boxes = viewer.layers
    assert image.data.shape == (768, 1024, 3) and image.rgb
    assert len(boxes.data) == 16
    names = list(boxes.features["class_name"])
    counts = {n: names.count(n) for n in set(names)}
    assert counts == {"NET": 12, "unstimulated": 2, "decondensed": 2}
    corners = np.concatenate(boxes.data)
    assert corners.min() > -1 and corners[:, 0].max() < 768 and corners[:, 1].max() < 1024
    for name, colour in zip(names, boxes.edge_color, strict=True):
        np.testing.assert_allclose(colour[:3], np.array(NET4.color_of(NET4.id_of(name))) / 255)
    # the DNA stain (green channel) is brighter inside the boxes than outside them
    green = image.data[..., 1].astype(float)
    inside = np.zeros(green.shape, bool)
    for rect in boxes.data:
        (r0, c0), (r1, c1) = rect.min(axis=0).astype(int) + 1, rect.max(axis=0).astype(int)
        inside[r0:r1, c0:c1] = True
    assert green[inside].mean() > 2 * green[~inside].mean()


def test_net_sample_ships_its_licence_and_real_coordinates():
    notice = (SAMPLES_DIR / "LICENSE-NET.txt").read_text()
    assert "MIT License" in notice and "Copyright (c) 2019 krzysztoffiok" in notice
    record = json.loads(NET_BOXES.read_text())
    assert record["images"] == [
        {"id": 1, "file_name": NET_IMAGE.name, "width": 1024, "height": 768}
    ]


@pytest.mark.shared_data
def test_net_sample_boxes_are_the_originals(shared_data):
    original = shared_data / "net_fluorescence" / "coco.json"
    source = json.loads(original.read_text())
    (image,) = [i for i in source["images"] if i["file_name"] == NET_IMAGE.name]
    expected = [a["bbox"] for a in source["annotations"] if a["image_id"] == image["id"]]
    ours = [a["bbox"] for a in json.loads(NET_BOXES.read_text())["annotations"]]
    # the original declares 1920 x 1440 but its boxes are in the 1024 x 768 grid already
    np.testing.assert_allclose(ours, expected)
    assert (shared_data / "net_fluorescence" / "images" / NET_IMAGE.name).read_bytes() == (
        NET_IMAGE.read_bytes()
    )


def test_synthetic_sample_gives_image_and_its_truth(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "synthetic_blood_smear")
    assert [(layer.name, layer._type_string) for layer in viewer.layers] == [
        ("synthetic_blood_smear", "image"),
        ("synthetic_blood_smear instances", "labels"),
    ]
    image, labels = viewer.layers
    expected_image, truth = synthetic_blood_smear(shape=(512, 512), seed=0)
    np.testing.assert_array_equal(image.data, expected_image)
    np.testing.assert_array_equal(labels.data, truth.labels)
    for label, class_name in zip(
        labels.features["index"], labels.features["class_name"], strict=True
    ):
        assert BLOOD10.id_of(class_name) == truth.classes[int(label)]


def test_smear_photo_sample_gives_the_photograph_and_its_boxes(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "blood_smear_photo")
    assert [(layer.name, layer._type_string) for layer in viewer.layers] == [
        ("BloodImage_00000", "image"),
        ("BloodImage_00000 boxes", "shapes"),
    ]
    image, boxes = viewer.layers
    assert image.data.shape == (480, 640, 3) and image.rgb
    assert list(boxes.features["class_name"]).count("rbc") == 19
    assert list(boxes.features["class_name"]).count("wbc") == 1

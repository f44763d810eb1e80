"""The napari reader: what it claims, and the layers it gives for COCO, VOC and masks."""

from __future__ import annotations

import json
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile

from napari_cellquant._reader import annotation_kind, napari_get_reader
from napari_cellquant.core.annotation import Annotation, Boxes
from napari_cellquant.core.classes import BLOOD10, NET4
from napari_cellquant.core.errors import InputError
from napari_cellquant.core.io import read_annotations, write_annotations
from napari_cellquant.core.synthetic import synthetic_blood_smear

PLUGIN = "napari-cellquant"


@pytest.fixture(scope="module")
def smear() -> tuple[np.ndarray, Annotation]:
    image, ann = synthetic_blood_smear(shape=(96, 128), seed=2, n_wbc=1, n_platelets=2)
    ann.image_name = "smear.png"
    return image, ann


@pytest.fixture
def smear_dir(tmp_path, smear) -> Path:
    image, _ = smear
    (tmp_path / "smear.png").write_bytes(imagecodecs.png_encode(image))
    return tmp_path


def _by_type(layers, layer_type):
    return [layer for layer in layers if layer._type_string == layer_type]


def _rgba(class_set, class_id):
    return np.array([*class_set.color_of(class_id), 255]) / 255


def _assert_labels_match(layer, ann):
    np.testing.assert_array_equal(np.asarray(layer.data), ann.labels)
    features = layer.features
    labels = features["index"].to_numpy()
    np.testing.assert_array_equal(np.sort(labels), ann.instance_ids())
    for label, class_name in zip(labels, features["class_name"], strict=True):
        class_id = ann.classes[int(label)]
        assert class_name == ann.class_set.name_of(class_id)
        np.testing.assert_allclose(layer.get_color(int(label)), _rgba(ann.class_set, class_id))


# --- what the reader claims ------------------------------------------------------------------
def test_files_that_are_not_annotations_are_left_to_napari(tmp_path, smear):
    image, _ = smear
    (tmp_path / "config.json").write_text(json.dumps({"not": "coco"}))
    (tmp_path / "drawing.xml").write_text("<svg></svg>")
    (tmp_path / "rgb_labels.png").write_bytes(imagecodecs.png_encode(image))
    tifffile.imwrite(tmp_path / "float_masks.tif", np.zeros((8, 8), np.float32))
    tifffile.imwrite(tmp_path / "plain.tif", np.zeros((8, 8), np.uint16))
    (tmp_path / "empty").mkdir()
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes(imagecodecs.png_encode(image))
    for name in (
        "config.json",
        "drawing.xml",
        "rgb_labels.png",
        "float_masks.tif",
        "plain.tif",
        "empty",
        "photos",
        "missing.json",
    ):
        assert napari_get_reader(str(tmp_path / name)) is None, name
    assert napari_get_reader([str(tmp_path / "a.json"), str(tmp_path / "b.json")]) is None


def test_annotation_files_are_claimed(smear_dir, smear):
    _, ann = smear
    coco = write_annotations([ann], smear_dir / "ann.json", to="coco")[0]
    voc = write_annotations([ann], smear_dir / "voc", to="voc")[0]
    write_annotations([ann], smear_dir / "masks", to="masks")
    assert annotation_kind(coco) == "coco"
    assert annotation_kind(voc) == "voc"
    assert annotation_kind(voc.parent) == "voc"
    assert annotation_kind(smear_dir / "masks") == "masks"
    assert annotation_kind(smear_dir / "masks" / "smear_instances.tif") == "label_image"
    assert callable(napari_get_reader(str(coco)))
    assert callable(napari_get_reader([str(coco)]))


# --- layers ------------------------------------------------------------------------------------
def test_coco_opens_as_image_labels_and_boxes(make_napari_viewer, smear_dir, smear):
    image, ann = smear
    boxed = ann.copy(boxes=Boxes([[3, 4, 20, 10], [60.5, 30, 8, 8.5]], [6, 7], [0.9, np.nan]))
    path = write_annotations([boxed], smear_dir / "ann.json", to="coco")[0]
    viewer = make_napari_viewer()
    layers = viewer.open(path, plugin=PLUGIN)
    assert [layer.name for layer in layers] == ["smear", "smear instances", "smear boxes"]
    np.testing.assert_array_equal(layers[0].data, image)
    _assert_labels_match(_by_type(layers, "labels")[0], ann)
    (shapes,) = _by_type(layers, "shapes")
    assert list(shapes.shape_type) == ["rectangle", "rectangle"]
    np.testing.assert_allclose(shapes.data[0], [[3.5, 2.5], [3.5, 22.5], [13.5, 22.5], [13.5, 2.5]])
    assert list(shapes.features["class_name"]) == ["platelet", "platelet_clump"]
    np.testing.assert_allclose(shapes.edge_color[1], _rgba(BLOOD10, 7))


def test_masks_folder_and_instances_file_open_with_classes(make_napari_viewer, smear_dir, smear):
    _, ann = smear
    write_annotations([ann], smear_dir / "masks", to="masks")
    viewer = make_napari_viewer()
    layers = viewer.open(smear_dir / "masks", plugin=PLUGIN)
    # the image lies in the folder above the masks and is found there
    assert [layer.name for layer in layers] == ["smear", "smear instances"]
    _assert_labels_match(layers[1], ann)
    (single,) = viewer.open(smear_dir / "masks" / "smear_instances.tif", plugin=PLUGIN)[1:]
    _assert_labels_match(single, ann)


def test_voc_opens_as_boxes(make_napari_viewer, tmp_path):
    ann = Annotation.empty(
        (60, 80),
        NET4,
        image_name="field.jpg",
        boxes=Boxes([[1, 2, 10, 12], [40, 30, 5, 6]], [1, 3]),
    )
    path = write_annotations([ann], tmp_path, to="voc")[0]
    viewer = make_napari_viewer()
    (shapes,) = viewer.open(path, plugin=PLUGIN)
    assert shapes.name == "field boxes"
    assert list(shapes.features["class_name"]) == ["NET", "unstimulated"]
    np.testing.assert_allclose(shapes.data[1][0], [29.5, 39.5])


def test_yolo_data_file_and_labels_folder_open_as_image_and_boxes(make_napari_viewer, tmp_path):
    from napari_cellquant.demo import BLOOD_PHOTO_BOXES

    write_annotations(read_annotations(BLOOD_PHOTO_BOXES), tmp_path / "yolo", to="yolo")
    for target in (tmp_path / "yolo" / "data.yaml", tmp_path / "yolo" / "labels"):
        assert annotation_kind(target) == "yolo"
        viewer = make_napari_viewer()
        image, shapes = viewer.open(target, plugin=PLUGIN)
        assert image.data.shape == (480, 640, 3)
        assert shapes.name == "BloodImage_00000 boxes"
        assert list(shapes.features["class_name"]).count("rbc") == 19
        assert list(shapes.features["class_name"]).count("wbc") == 1


def test_label_image_without_classes_opens_in_one_class(make_napari_viewer, tmp_path):
    labels = np.zeros((20, 30), np.uint16)
    labels[2:6, 2:6] = 5
    labels[10:15, 20:28] = 9
    path = tmp_path / "cells_labels.png"
    path.write_bytes(imagecodecs.png_encode(labels))
    viewer = make_napari_viewer()
    (layer,) = viewer.open(path, plugin=PLUGIN)
    assert layer.name == "cells instances"
    np.testing.assert_array_equal(layer.data, labels)
    assert list(layer.features["class_name"]) == ["cell", "cell"]


def test_broken_coco_is_an_input_error(make_napari_viewer, tmp_path):
    bad = {
        "images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 10}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [50, 50, 5, 5]}],
        "categories": [{"id": 1, "name": "cell"}],
    }
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    reader = napari_get_reader(str(path))
    assert reader is not None  # it is COCO, so ours to report on
    with pytest.raises(InputError, match=r"bad.json"):
        reader(str(path))
    viewer = make_napari_viewer()
    with pytest.raises(Exception, match="outside the 10x10 image") as caught:
        viewer.open(path, plugin=PLUGIN)
    # napari passes our error on (wrapped in ReaderPluginError when it chose the plugin)
    error = caught.value
    assert isinstance(error, InputError) or isinstance(error.__cause__, InputError)


@pytest.mark.shared_data
def test_real_net_annotations_open_in_the_image_grid(make_napari_viewer, shared_data):
    coco = shared_data / "net_fluorescence" / "coco.json"
    viewer = make_napari_viewer()
    layers = viewer.open(coco, plugin=PLUGIN)
    images = _by_type(layers, "image")
    shapes = _by_type(layers, "shapes")
    assert len(images) == 2 and len(shapes) == 2
    assert sum(len(s.data) for s in shapes) == 43
    for image, boxes in zip(images, shapes, strict=True):
        assert image.data.shape == (768, 1024, 3)
        # The file declares 1920 x 1440, but its boxes are in the JPEG's 1024 x 768 grid
        # already (they reach its edges): they must frame the stained cells, not be shrunk.
        corners = np.concatenate(boxes.data)
        assert corners[:, 0].max() > 700 and corners[:, 1].max() > 1000
        green = image.data[..., 1].astype(float)
        inside = _inside(boxes, green.shape)
        assert green[inside].mean() > 3 * green[~inside].mean()


def _inside(shapes, shape):
    mask = np.zeros(shape, bool)
    for rect in shapes.data:
        (r0, c0), (r1, c1) = np.ceil(rect.min(axis=0)).astype(int), rect.max(axis=0).astype(int)
        mask[max(r0, 0) : r1 + 1, max(c0, 0) : c1 + 1] = True
    return mask


# --- QuPath, Fiji and OME-TIFF -------------------------------------------------------------------
@pytest.mark.parametrize("to", ["geojson", "roiset"])
def test_qupath_and_fiji_files_open_as_image_and_labels(make_napari_viewer, smear_dir, smear, to):
    image, ann = smear
    (path,) = write_annotations([ann], smear_dir, to=to)
    assert annotation_kind(path) == to and annotation_kind(smear_dir) == to
    viewer = make_napari_viewer()
    layers = viewer.open(path, plugin=PLUGIN)
    assert [layer.name for layer in layers] == ["smear", "smear instances"]
    np.testing.assert_array_equal(layers[0].data, image)
    labels = layers[1]
    _assert_labels_match(labels, ann)
    # napari's features table shows the measurements, mean intensities from the image
    features = labels.features.set_index("index")
    first = int(ann.instance_ids()[0])
    assert features.at[first, "area_px"] == (ann.labels == first).sum()
    assert {"perimeter_px", "solidity", "eccentricity", "mean_intensity_2"} <= set(features)
    assert features.at[first, "mean_intensity_0"] == pytest.approx(
        image[..., 0][ann.labels == first].mean()
    )


def test_ome_tiff_opens_with_its_pixel_size_and_named_channels(make_napari_viewer, tmp_path):
    path = tmp_path / "field.ome.tif"
    pixels = np.random.default_rng(0).integers(0, 4000, (2, 48, 64), dtype=np.uint16)
    tifffile.imwrite(
        path,
        pixels,
        ome=True,
        metadata={
            "axes": "CYX",
            "PhysicalSizeX": 0.65,
            "PhysicalSizeY": 0.65,
            "PhysicalSizeXUnit": "µm",
            "PhysicalSizeYUnit": "µm",
            "Channel": {"Name": ["DNA", "Histone"]},
        },
    )
    assert annotation_kind(path) == "ome_image"
    viewer = make_napari_viewer()
    layers = viewer.open(path, plugin=PLUGIN)
    assert [layer.name for layer in layers] == ["field DNA", "field Histone"]
    for layer, channel in zip(layers, pixels, strict=True):
        np.testing.assert_array_equal(layer.data, channel)
        np.testing.assert_allclose(layer.scale, [0.65, 0.65])
        assert all(str(u) == "micrometer" for u in layer.units)
    from napari_cellquant._layers import layer_pixel_size_um

    assert layer_pixel_size_um(layers[0]) == pytest.approx((0.65, 0.65))


def test_imagej_tiff_opened_by_napari_still_gives_its_pixel_size(make_napari_viewer, tmp_path):
    """napari's own reader drops the calibration; Segment and Count read it from the file."""
    from napari_cellquant._layers import layer_pixel_size_um

    path = tmp_path / "cells.tif"
    tifffile.imwrite(
        path,
        np.zeros((32, 32), np.uint16),
        imagej=True,
        resolution=(4.0, 4.0),
        metadata={"unit": "micron"},
    )
    assert napari_get_reader(str(path)) is None  # left to napari
    viewer = make_napari_viewer()
    (layer,) = viewer.open(path, plugin="napari")
    assert layer_pixel_size_um(layer) == pytest.approx((0.25, 0.25))

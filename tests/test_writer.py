"""napari writers: layers saved through the manifest, read back by core and by the reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_cellquant._layers import annotation_to_layer_data
from napari_cellquant.core.annotation import Annotation, Boxes
from napari_cellquant.core.classes import BLOOD10
from napari_cellquant.core.errors import CellquantError, InputError
from napari_cellquant.core.io import read_annotations
from napari_cellquant.core.io.counts import read_counts_csv
from napari_cellquant.core.synthetic import synthetic_blood_smear

PLUGIN = "napari-cellquant"


@pytest.fixture(scope="module")
def smear() -> tuple[np.ndarray, Annotation]:
    image, ann = synthetic_blood_smear(shape=(96, 128), seed=4, n_wbc=1, n_platelets=2)
    ann = ann.copy(
        image_name="smear.png",
        scores={1: 0.5},
        boxes=Boxes([[3, 4, 20, 10], [60.5, 30, 8, 8.5]], [6, 7], [0.9, np.nan]),
    )
    return image, ann


@pytest.fixture
def viewer(make_napari_viewer, smear):
    image, ann = smear
    viewer = make_napari_viewer()
    # a copy: napari paints into the array it is given, and ``smear`` is shared by the module
    for data, kwargs, layer_type in annotation_to_layer_data(ann.copy(), image=image):
        getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    return viewer


def _select(viewer, *names):
    viewer.layers.selection = {viewer.layers[n] for n in names}


def test_all_layers_save_as_coco_and_read_back_exactly(viewer, smear, tmp_path):
    _, ann = smear
    written = viewer.layers.save(str(tmp_path / "out.json"), plugin=PLUGIN)
    assert written == [str(tmp_path / "out.json")]
    (back,) = read_annotations(tmp_path / "out.json")
    np.testing.assert_array_equal(back.labels, ann.labels)
    assert back.classes == ann.classes and back.scores == ann.scores
    np.testing.assert_allclose(back.boxes.xywh, ann.boxes.xywh)
    np.testing.assert_array_equal(back.boxes.class_ids, ann.boxes.class_ids)
    assert back.image_name == "smear.png"


@pytest.mark.parametrize("name", ["smear.geojson", "smear_RoiSet.zip"])
def test_layers_save_for_qupath_and_fiji_and_read_back_exactly(viewer, smear, tmp_path, name):
    import warnings

    _, ann = smear
    written = viewer.layers.save(str(tmp_path / name), plugin=PLUGIN)
    assert written == [str(tmp_path / name)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the image is not beside the file: size from extent
        (back,) = read_annotations(tmp_path / name, images_dir=None, class_set=BLOOD10)
    rows, cols = ann.shape
    np.testing.assert_array_equal(
        back.labels[:rows, :cols], ann.labels[: back.shape[0], : back.shape[1]]
    )
    assert back.classes == ann.classes and back.scores == ann.scores
    np.testing.assert_allclose(back.boxes.xywh, ann.boxes.xywh)


def test_round_trip_layers_file_layers(viewer, tmp_path):
    before = {layer.name: layer for layer in viewer.layers}
    path = tmp_path / "smear.json"
    viewer.layers.save(str(path), plugin=PLUGIN)
    # no image beside the file, so only the objects come back (renamed "... [1]" by napari)
    reopened = {layer.name: layer for layer in viewer.open(path, plugin=PLUGIN)}
    assert len(reopened) == 2
    labels_before = before["smear instances"]
    labels_after = next(layer for layer in reopened.values() if layer._type_string == "labels")
    np.testing.assert_array_equal(labels_after.data, labels_before.data)
    for column in ("index", "class", "class_name", "score"):
        a, b = labels_before.features[column], labels_after.features[column]
        np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())
    for label in labels_before.features["index"]:
        np.testing.assert_allclose(labels_after.get_color(label), labels_before.get_color(label))
    shapes_after = next(layer for layer in reopened.values() if layer._type_string == "shapes")
    for a, b in zip(before["smear boxes"].data, shapes_after.data, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_array_equal(
        before["smear boxes"].features["class_name"], shapes_after.features["class_name"]
    )


def test_corrections_in_the_features_table_are_saved(viewer, tmp_path):
    labels = viewer.layers["smear instances"]
    features = labels.features.copy()
    row = int(np.flatnonzero(features["class_name"] == "healthy_rbc")[0])
    label = int(features["index"][row])
    features.loc[row, "class_name"] = "infected_rbc"
    labels.features = features
    labels.data[labels.data == 1] = 0  # erase instance 1
    _select(viewer, "smear instances")
    viewer.layers.save(str(tmp_path / "fixed.json"), selected=True, plugin=PLUGIN)
    (back,) = read_annotations(tmp_path / "fixed.json")
    assert back.classes[label] == BLOOD10.id_of("infected_rbc")
    assert 1 not in back.classes and len(back.boxes) == 0


def test_boxes_save_as_voc_at_the_chosen_path(viewer, smear, tmp_path):
    _, ann = smear
    _select(viewer, "smear boxes")
    written = viewer.layers.save(str(tmp_path / "boxes.xml"), selected=True, plugin=PLUGIN)
    assert written == [str(tmp_path / "boxes.xml")]
    (back,) = read_annotations(tmp_path / "boxes.xml", kind="voc", class_set=BLOOD10)
    np.testing.assert_allclose(back.boxes.xywh, ann.boxes.xywh)
    assert back.image_name == "smear.png"


def test_labels_save_as_a_tiff_pair_the_reader_opens(viewer, smear, tmp_path):
    _, ann = smear
    _select(viewer, "smear instances")
    written = viewer.layers.save(str(tmp_path / "cells.tif"), selected=True, plugin=PLUGIN)
    assert [Path(p).name for p in written][:2] == ["cells_instances.tif", "cells_classes.tif"]
    labels = viewer.open(tmp_path / "cells_instances.tif", plugin=PLUGIN)[-1]
    np.testing.assert_array_equal(labels.data, ann.labels)
    for label, class_name in zip(
        labels.features["index"], labels.features["class_name"], strict=True
    ):
        assert BLOOD10.id_of(class_name) == ann.classes[int(label)]


def test_counts_csv_lists_every_class(viewer, smear, tmp_path):
    _, ann = smear
    viewer.layers.save(str(tmp_path / "counts.csv"), plugin=PLUGIN)
    rows = read_counts_csv(tmp_path / "counts.csv")
    assert {r["class"]: r["count"] for r in rows} == ann.counts()
    assert {r["image"] for r in rows} == {"smear.png"}


def test_saving_again_replaces_the_file(viewer, tmp_path):
    """napari's save dialog asks before replacing; the writer then does replace."""
    path = tmp_path / "counts.csv"
    path.write_text("old")
    viewer.layers.save(str(path), plugin=PLUGIN)
    assert path.read_text().startswith("image,class,count")


def test_unknown_class_is_refused_and_nothing_written(viewer, tmp_path):
    labels = viewer.layers["smear instances"]
    features = labels.features.copy()
    features["class_name"] = features["class_name"].astype(object)
    features.loc[0, "class_name"] = "ghost"
    labels.features = features
    _select(viewer, "smear instances")
    # not a ValueError, so napari does not mistake it for "writer does not apply" and hide it
    with pytest.raises(CellquantError, match="'ghost' is not in class set") as caught:
        viewer.layers.save(str(tmp_path / "bad.json"), selected=True, plugin=PLUGIN)
    assert not isinstance(caught.value, ValueError)
    assert isinstance(caught.value.__cause__, InputError)
    assert not (tmp_path / "bad.json").exists()

"""The Export widget through the manifest: every format reads back, overwrite asks, logs written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_cellquant._layers import META_CORRECTIONS, annotation_to_layer_data
from napari_cellquant.core.annotation import Boxes
from napari_cellquant.core.io import read_annotations
from napari_cellquant.core.synthetic import synthetic_blood_smear

PLUGIN = "napari-cellquant"
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def truth():
    image, annotation = synthetic_blood_smear(shape=(160, 160), seed=7)
    annotation.image_name = "smear.png"
    annotation.boxes = Boxes([[10, 12, 30, 20], [100.5, 90, 24, 40]], [2, 3], [0.9, 0.6])
    return image, annotation


@pytest.fixture
def export(make_napari_viewer, truth):
    image, annotation = truth
    viewer = make_napari_viewer()
    for data, kwargs, layer_type in annotation_to_layer_data(annotation.copy(), image=image):
        getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    labels = viewer.layers["smear instances"]
    # one object corrected by hand: its origin must reach the file
    features = labels.features.copy()
    features.loc[0, "origin"] = "edited"
    labels.features = features
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Export")
    return viewer, widget


def _export(qtbot, widget, fmt, destination, *, confirm=None):
    asked = []
    widget.confirm = lambda message: asked.append(message) or bool(confirm)
    widget.format.value = fmt
    widget.destination.value = destination
    worker = widget.run()
    assert worker is not None and widget.busy and not widget.export_button.enabled
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)  # a retry may follow the ask
    assert widget.export_button.enabled
    return asked


def test_both_layers_are_chosen_and_coco_reads_back_with_origins(qtbot, export, truth, tmp_path):
    viewer, widget = export
    _, annotation = truth
    assert [layer.name for layer in widget.layers.value] == ["smear instances", "smear boxes"]
    target = tmp_path / "smear.json"
    assert _export(qtbot, widget, "coco", target) == []  # nothing to overwrite: no question
    assert widget.written == [target]
    (back,) = read_annotations(target)
    np.testing.assert_array_equal(back.labels, annotation.labels)
    assert back.classes == annotation.classes
    np.testing.assert_allclose(back.boxes.xywh, annotation.boxes.xywh, atol=1e-6)
    np.testing.assert_array_equal(back.boxes.class_ids, annotation.boxes.class_ids)
    edited = int(viewer.layers["smear instances"].features.loc[0, "index"])
    assert back.origins[edited] == "edited"
    origins = {
        a["attributes"]["instance_id"]: a["attributes"]["origin"]
        for a in json.loads(target.read_text())["annotations"]
        if "instance_id" in a["attributes"]
    }
    assert origins[edited] == "edited"
    assert set(origins.values()) == {"edited", "file"}  # the rest came from the sample
    assert not (tmp_path / "smear_corrections.json").exists()  # no log in the layer


@pytest.mark.parametrize("fmt", ["masks", "voc", "class-masks", "csv"])
def test_other_formats_read_back(qtbot, export, truth, tmp_path, fmt):
    _, widget = export
    _, annotation = truth
    destination = tmp_path / ("counts.csv" if fmt == "csv" else "out")
    _export(qtbot, widget, fmt, destination)
    assert widget.written and all(p.exists() for p in widget.written)
    if fmt == "csv":
        text = destination.read_text()
        for name, count in annotation.counts().items():
            assert f"{name}" in text and str(count) in text
        return
    (back,) = read_annotations(destination, class_set=annotation.class_set)
    if fmt == "masks":
        np.testing.assert_array_equal(back.labels, annotation.labels)
        assert back.classes == annotation.classes
    elif fmt == "class-masks":  # one mask per class: the classes per pixel survive
        np.testing.assert_array_equal(back.class_map(), annotation.class_map())
    else:  # VOC: the boxes, then one box per instance
        assert len(back.boxes) == len(annotation.boxes) + len(annotation.instance_ids())
        np.testing.assert_array_equal(back.boxes.class_ids[:2], annotation.boxes.class_ids)


def test_overwriting_needs_confirmation(qtbot, export, tmp_path):
    viewer, widget = export
    target = tmp_path / "smear.json"
    target.write_text("precious")
    asked = _export(qtbot, widget, "coco", target, confirm=False)
    assert len(asked) == 1 and str(target) in asked[0]
    assert target.read_text() == "precious" and widget.written == []
    assert "nothing was overwritten" in widget.status.value
    asked = _export(qtbot, widget, "coco", target, confirm=True)
    assert len(asked) == 1 and widget.written == [target]
    (back,) = read_annotations(target)
    np.testing.assert_array_equal(back.labels, viewer.layers["smear instances"].data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smear.json"]  # no temporary left


def test_correction_log_is_written_beside_the_output(qtbot, export, tmp_path):
    viewer, widget = export
    log = [
        {"action": "merged", "ids": [np.int64(3), 7], "result_ids": [3]},
        {"action": "reclassed", "ids": [5], "classes": [2]},
    ]
    viewer.layers["smear instances"].metadata[META_CORRECTIONS] = log
    target = tmp_path / "smear.json"
    _export(qtbot, widget, "coco", target)
    log_path = tmp_path / "smear_corrections.json"
    assert widget.written == [target, log_path]
    record = json.loads(log_path.read_text())
    entries = record["layers"]["smear instances"]["corrections"]
    assert [e["action"] for e in entries] == ["merged", "reclassed"]
    assert entries[0]["ids"] == [3, 7]
    # an existing log counts as a file to overwrite: refused without confirmation
    log_path.write_text("old log")
    target.unlink()
    asked = _export(qtbot, widget, "coco", target, confirm=False)
    assert asked and str(log_path) in asked[0]
    assert log_path.read_text() == "old log" and not target.exists()


def test_problems_are_notifications(qtbot, export, tmp_path):
    from napari.utils.notifications import notification_manager

    viewer, widget = export
    widget.layers.value = []
    widget.destination.value = tmp_path / "x.json"
    assert widget.run() is None
    assert "choose at least one" in str(notification_manager.records[-1].message)
    # a class name outside the layer's class set: the writer's message, no file
    labels = viewer.layers["smear instances"]
    features = labels.features.copy()
    features.loc[1, "class_name"] = "unicorn"
    labels.features = features
    widget.layers.value = [labels]
    _export(qtbot, widget, "coco", tmp_path / "x.json")
    assert "unicorn" in str(notification_manager.records[-1].message)
    assert not (tmp_path / "x.json").exists()

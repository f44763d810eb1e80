"""The Count widget through the manifest: counts, derived figures, before/after, live, CSV."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cellquant._layers import annotation_to_layer_data
from napari_cellquant.core.annotation import Annotation, Boxes
from napari_cellquant.core.classes import BLOOD7, BLOOD10, NET4
from napari_cellquant.core.errors import OutputExistsError


def _blood() -> Annotation:
    """12 RBCs (3 infected) and 4 WBCs (3 neutrophils, 1 lymphocyte), 6x6 px each."""
    cs = BLOOD10
    labels = np.zeros((100, 100), dtype=np.int32)
    classes = {}
    names = ["infected_rbc"] * 3 + ["healthy_rbc"] * 9 + ["neutrophil"] * 3 + ["lymphocyte"]
    for k, name in enumerate(names):
        r, c = divmod(k, 8)
        labels[r * 10 + 2 : r * 10 + 8, c * 10 + 2 : c * 10 + 8] = k + 1
        classes[k + 1] = cs.id_of(name)
    return Annotation(labels, cs, classes, image_name="smear.png")


def _value(rows, group, name, column="after", image=None):
    (row,) = [
        r
        for r in rows
        if r["group"] == group and r["name"] == name and (image is None or r["image"] == image)
    ]
    return row[column]


@pytest.fixture
def viewer_with_count(make_napari_viewer):
    viewer = make_napari_viewer()
    ((data, kwargs, _),) = annotation_to_layer_data(_blood())
    kwargs["scale"] = (0.5, 0.5)
    kwargs["units"] = ("um", "um")
    layer = viewer.add_labels(data, **kwargs)
    _, widget = viewer.window.add_plugin_dock_widget("napari-cellquant", "Count")
    return viewer, layer, widget


def test_counts_parasitaemia_differential_and_density(viewer_with_count):
    _viewer, _layer, widget = viewer_with_count
    rows = widget.refresh()
    assert _value(rows, "count", "healthy_rbc") == 9
    assert _value(rows, "parasitaemia", "infected_rbc") == pytest.approx(25.0)
    assert _value(rows, "wbc_differential", "neutrophil") == pytest.approx(75.0)
    assert _value(rows, "count", "total", "before") == 16
    # 100 x 100 px of 0.5 um = 0.0025 mm^2
    assert _value(rows, "density", "total") == pytest.approx(16 / 0.0025)
    assert widget.table.rowCount() == len(rows)
    assert {b[0] for b in widget.chart.bars} >= {"healthy_rbc", "infected_rbc"}


def test_blood_detector_typed_wbcs_give_the_differential(make_napari_viewer):
    """blood-detector's blood7 (rbc, five WBC types, platelet): Count shows the differential."""
    labels = np.zeros((60, 60), dtype=np.int32)
    names = ["rbc"] * 6 + ["neutrophil"] * 2 + ["monocyte", "eosinophil", "platelet"]
    for k in range(len(names)):
        r, c = divmod(k, 5)
        labels[r * 12 + 2 : r * 12 + 10, c * 12 + 2 : c * 12 + 10] = k + 1
    classes = {k + 1: BLOOD7.id_of(n) for k, n in enumerate(names)}
    ((data, kwargs, _),) = annotation_to_layer_data(Annotation(labels, BLOOD7, classes))
    viewer = make_napari_viewer()
    viewer.add_labels(data, **kwargs)
    _, widget = viewer.window.add_plugin_dock_widget("napari-cellquant", "Count")
    rows = widget.refresh()
    assert _value(rows, "wbc_differential", "neutrophil") == pytest.approx(50.0)
    assert _value(rows, "wbc_differential", "monocyte") == pytest.approx(25.0)
    assert _value(rows, "wbc_differential", "basophil") == pytest.approx(0.0)
    assert _value(rows, "count", "rbc") == 6 and _value(rows, "count", "platelet") == 1
    shown = {widget.table.item(i, 2).text() for i in range(widget.table.rowCount())}
    assert {"neutrophil", "eosinophil"} <= shown


def test_after_follows_corrections_live_and_before_stays(viewer_with_count, qtbot):
    viewer, layer, widget = viewer_with_count
    _, correct = viewer.window.add_plugin_dock_widget("napari-cellquant", "Correct")
    correct.set_class("infected_rbc", label_id=4)  # a healthy RBC was infected
    correct.delete([16])  # the lymphocyte was not a cell
    qtbot.waitUntil(
        lambda: widget.rows and _value(widget.rows, "count", "infected_rbc") == 4, timeout=5000
    )
    qtbot.waitUntil(lambda: not widget.busy, timeout=5000)
    rows = widget.rows
    assert _value(rows, "parasitaemia", "infected_rbc") == pytest.approx(100 * 4 / 12)
    assert _value(rows, "parasitaemia", "infected_rbc", "before") == pytest.approx(25.0)
    assert _value(rows, "wbc_differential", "neutrophil") == pytest.approx(100.0)
    layer.paint((95, 95), 50)  # napari's own brush: a new object of the default class
    qtbot.waitUntil(lambda: _value(widget.rows, "count", "total") == 16, timeout=5000)
    qtbot.waitUntil(lambda: not widget.busy, timeout=5000)


def test_net_boxes_and_instances_of_one_image_are_one_group(make_napari_viewer):
    viewer = make_napari_viewer()
    labels = np.zeros((40, 40), dtype=np.int32)
    labels[2:6, 2:6] = 1
    ann = Annotation(
        labels,
        NET4,
        {1: NET4.id_of("dead")},
        image_name="net.jpg",
        boxes=Boxes(np.ones((3, 4)) * 5, [1, 1, 3], None),
    )
    for data, kwargs, kind in annotation_to_layer_data(ann):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    _, widget = viewer.window.add_plugin_dock_widget("napari-cellquant", "Count")
    rows = widget.refresh()
    assert {r["image"] for r in rows} == {"net"}  # "net instances" + "net boxes"
    assert _value(rows, "net_percent", "NET") == pytest.approx(50.0)
    assert _value(rows, "count", "total", "before") == 4
    assert not any(r["group"] == "density" for r in rows)  # pixels of unknown size


def test_copy_and_save_csv_without_silent_overwrite(viewer_with_count, tmp_path):
    _viewer, _layer, widget = viewer_with_count
    widget.refresh()
    text = widget.copy_to_clipboard()
    assert text.splitlines()[0] == "image\tgroup\tname\tbefore\tafter\tunit"
    from qtpy.QtWidgets import QApplication

    assert QApplication.clipboard().text() == text
    path = widget.save_csv(tmp_path / "counts.csv")
    lines = path.read_text().splitlines()
    assert "smear,parasitaemia,infected_rbc,25,25,% of RBC" in lines
    with pytest.raises(OutputExistsError):
        widget.save_csv(path)


def test_truth_and_prediction_are_counted_apart_and_hidden_layers_left_out(make_napari_viewer):
    """The NET sample's 16 expert boxes and a prediction of the same image: two named groups,
    never one sum (24 NETs, 72.7 %, before)."""
    viewer = make_napari_viewer()
    viewer.open_sample("napari-cellquant", "net_fluorescence")
    truth = viewer.layers["K.Fiok3_1Per2h006_scale boxes"]
    predicted = viewer.add_shapes(
        truth.data[:5],
        shape_type="rectangle",
        name="K.Fiok3_1Per2h006_scale net-classical boxes",
        features=truth.features.iloc[:5].reset_index(drop=True),
        metadata=dict(truth.metadata),
    )
    _, widget = viewer.window.add_plugin_dock_widget("napari-cellquant", "Count")
    rows = widget.refresh()
    totals = {
        r["image"]: r["after"] for r in rows if r["group"] == "count" and r["name"] == "total"
    }
    assert totals == {"K.Fiok3_1Per2h006_scale": 16, "K.Fiok3_1Per2h006_scale net-classical": 5}
    predicted.visible = False
    rows = widget.refresh()
    assert {r["image"] for r in rows} == {"K.Fiok3_1Per2h006_scale"}
    widget.include_hidden.setChecked(True)
    assert len({r["image"] for r in widget.refresh()}) == 2


def test_net_area_is_shown_and_follows_painting(make_napari_viewer, qtbot):
    """A net-area result: Count shows the pixels NET regions cover, their share of the field
    and um^2 with the layer's pixel size; painting more NET region raises them."""
    from napari_cellquant.core.classes import NET_AREA

    labels = np.zeros((100, 200), dtype=np.int32)
    labels[10:30, 10:60] = 1
    labels[50:60, 100:150] = 2
    viewer = make_napari_viewer()
    ((data, kwargs, _),) = annotation_to_layer_data(
        Annotation(labels, NET_AREA, {1: 1, 2: 1}, image_name="field.png")
    )
    kwargs["scale"] = (0.5, 0.5)
    kwargs["units"] = ("um", "um")
    layer = viewer.add_labels(data, **kwargs)
    _, widget = viewer.window.add_plugin_dock_widget("napari-cellquant", "Count")
    rows = widget.refresh()
    assert _value(rows, "net_area", "pixels") == 1500
    assert _value(rows, "net_area", "field_share") == pytest.approx(7.5)
    assert _value(rows, "net_area", "area") == pytest.approx(375.0)
    layer.paint((80, 20), 1, refresh=True)  # brush of the default size onto region 1
    qtbot.waitUntil(lambda: _value(widget.rows, "net_area", "pixels") > 1500, timeout=5000)


def test_objects_table_is_measured_after_corrections_and_saved(viewer_with_count, tmp_path):
    """Objects CSV: the chosen layer's objects as they are after a merge, µm² from the layer's
    scale, mean intensity from the image; the features table gets the same fresh columns."""
    import pandas as pd

    viewer, layer, widget = viewer_with_count
    image = np.zeros((100, 100), dtype=np.uint8)
    image[layer.data == 1] = 200
    viewer.add_image(image, name="smear", scale=(0.5, 0.5), units=("um", "um"))
    _, correct = viewer.window.add_plugin_dock_widget("napari-cellquant", "Correct")
    correct.merge([1, 2])  # two 6x6 RBCs, 4 px apart, become one object
    widget.refresh()
    rows = {r["id"]: r for r in widget.measure()}
    merged = next(i for i in rows if i in (1, 2))
    assert len(rows) == 15 and rows[merged]["area_px"] == 72
    assert rows[merged]["area_um2"] == pytest.approx(72 * 0.25)
    assert rows[merged]["solidity"] < 1  # the gap between the two squares
    other = next(r for i, r in rows.items() if i not in (1, 2))
    assert other["mean_intensity_0"] == 0 and other["area_px"] == 36
    features = layer.features.set_index("index")
    assert features.at[merged, "area_px"] == 72 and "solidity" in features
    path = widget.save_objects_csv(tmp_path / "objects.csv")
    table = pd.read_csv(path)
    assert len(table) == 15 and list(table.columns[:5]) == [
        "image",
        "id",
        "class",
        "score",
        "origin",
    ]
    with pytest.raises(OutputExistsError):
        widget.save_objects_csv(path)


def test_objects_button_measures_in_the_background_and_writes_the_file(
    viewer_with_count, tmp_path, qtbot, monkeypatch
):
    from qtpy.QtWidgets import QFileDialog, QPushButton

    _viewer, _layer, widget = viewer_with_count
    widget.refresh()
    target = tmp_path / "cells.csv"
    monkeypatch.setattr(
        QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (str(target), "CSV (*.csv)"))
    )
    (button,) = [b for b in widget.findChildren(QPushButton) if b.text() == "Objects CSV…"]
    button.click()
    qtbot.waitUntil(target.exists, timeout=10000)
    assert len(target.read_text().splitlines()) == 1 + 16

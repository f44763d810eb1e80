"""The Segment widget through the manifest: results as layers, replace/keep/undo, cancel, errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from napari_cellquant._layers import class_rgba
from napari_cellquant._widgets._models import user_models
from napari_cellquant.core.classes import BLOOD3, BLOOD10
from napari_cellquant.core.models.card import WeightsSource
from napari_cellquant.core.models.registry import builtin_cards
from napari_cellquant.core.synthetic import synthetic_blood_smear

PLUGIN = "napari-cellquant"
RBC_DIAMETER = 34.0  # synthetic_blood_smear's default red-cell radius is 17 px
WAIT_MS = 120_000  # generous: CI shares two cores between jobs


@pytest.fixture(scope="module")
def smear():
    return synthetic_blood_smear(shape=(256, 256), seed=3)


@pytest.fixture(scope="module")
def random_unet(tmp_path_factory):
    """A blood-unet card and untrained weights saved as a user would get them from training."""
    import torch

    from napari_cellquant.core.models.networks import build_network

    folder = tmp_path_factory.mktemp("model")
    card = dataclasses.replace(
        builtin_cards()["blood-unet"], name="test-unet", weights=WeightsSource(file="test-unet.pt")
    )
    torch.manual_seed(0)
    torch.save(build_network(card.architecture).state_dict(), folder / "test-unet.pt")
    card.save(folder / "test-unet.json")
    return folder / "test-unet.json"


@pytest.fixture
def segment(make_napari_viewer, smear):
    viewer = make_napari_viewer()
    image, _ = smear
    layer = viewer.add_image(
        image, name="smear", rgb=True, scale=(0.5, 0.5), translate=(10.0, -4.0)
    )
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    widget.image.value = layer
    widget.model.value = "blood-classical"
    widget.diameter.value = RBC_DIAMETER
    return viewer, widget


def _run(qtbot, widget):
    worker = widget.run()
    assert worker is not None
    assert not widget.run_button.enabled and widget.cancel_button.enabled
    with qtbot.waitSignal(worker.finished, timeout=WAIT_MS):
        pass
    assert widget.run_button.enabled and not widget.cancel_button.enabled
    return worker


def _labels_ids(layer):
    ids = np.unique(layer.data)
    return ids[ids != 0]


def test_classical_result_is_a_labels_layer_with_features_colours_and_placement(
    qtbot, segment, smear
):
    viewer, widget = segment
    _, truth = smear
    _run(qtbot, widget)
    layer = viewer.layers["smear blood-classical instances"]
    assert layer._type_string == "labels"
    ids = _labels_ids(layer)
    # a real segmentation of the smear: most of its cells found, not one blob
    assert 0.5 * len(truth.instance_ids()) <= len(ids) <= 2 * len(truth.instance_ids())
    features = layer.features.set_index("index")
    assert sorted(features.index) == ids.tolist()
    assert {"class", "class_name", "score", "origin"} <= set(features.columns)
    assert set(features["class_name"]) <= set(BLOOD3.names)
    assert (features["origin"] == "model").all()
    assert features["score"].between(0, 1).all()
    for label in ids[:5]:  # coloured by class
        expected = class_rgba(BLOOD3, int(features.loc[label, "class"]))
        np.testing.assert_allclose(layer.get_color(int(label)), expected, atol=1e-6)
    np.testing.assert_allclose(layer.scale, (0.5, 0.5))
    np.testing.assert_allclose(layer.translate, (10.0, -4.0))
    # no Shapes layer
    assert [lyr.name for lyr in viewer.layers] == ["smear", "smear blood-classical instances"]


def test_run_again_replaces_undoably_or_keeps_both(qtbot, segment):
    viewer, widget = segment
    _run(qtbot, widget)
    layer = viewer.layers["smear blood-classical instances"]
    first_pixels = layer.data.copy()
    first_features = layer.features.copy()
    # a stricter red-cell size threshold: a different result, in the same layer object
    widget.parameters["rbc_min_area"].value = 0.9
    refreshes = []  # each recomputes the outlines of the whole view on the GUI thread
    refresh = layer.refresh
    layer.refresh = lambda *args, **kwargs: (refreshes.append(1), refresh(*args, **kwargs))
    _run(qtbot, widget)
    assert len(refreshes) == 1, "pixels, colours and an unchanged placement: one refresh"
    assert [lyr.name for lyr in viewer.layers] == ["smear", "smear blood-classical instances"]
    assert viewer.layers["smear blood-classical instances"] is layer
    second_ids = _labels_ids(layer)
    assert len(second_ids) < len(np.unique(first_pixels)) - 1
    assert sorted(layer.features["index"]) == second_ids.tolist()
    # what napari shows is the new result (the pixels and colours share one refresh)
    np.testing.assert_array_equal(np.asarray(layer._slice.image.raw), layer.data)
    # napari's undo brings back the first result, its features table with it; redo again
    layer.undo()
    np.testing.assert_array_equal(layer.data, first_pixels)
    assert layer.features.equals(first_features)
    layer.redo()
    assert sorted(layer.features["index"]) == _labels_ids(layer).tolist() == second_ids.tolist()
    # "keep previous result": a new layer beside the old one
    widget.keep_previous.value = True
    widget.parameters["rbc_min_area"].value = 0.2
    _run(qtbot, widget)
    assert [lyr.name for lyr in viewer.layers] == [
        "smear",
        "smear blood-classical instances",
        "smear blood-classical instances [1]",
    ]
    assert _labels_ids(layer).tolist() == second_ids.tolist()


def test_the_new_result_is_sliced_in_the_worker_not_at_the_hand_over(qtbot, segment, monkeypatch):
    """napari outlines a Labels layer when it first slices it (an erosion and a dilation of
    the whole view): the worker does that, so adding the result to the viewer on the GUI
    thread does not."""
    import threading

    from napari.layers import Labels

    from napari_cellquant._widgets import segment as segment_module

    viewer, widget = segment
    calls = []  # (thread is the GUI thread, during the hand-over)
    handing_over = []
    contour = Labels._calculate_contour
    monkeypatch.setattr(
        Labels,
        "_calculate_contour",
        lambda self, *a, **k: (
            calls.append(
                (threading.current_thread() is threading.main_thread(), bool(handing_over))
            ),
            contour(self, *a, **k),
        )[1],
    )
    show = segment_module.show_layers
    monkeypatch.setattr(
        segment_module,
        "show_layers",
        lambda *a, **k: (handing_over.append(1), show(*a, **k), handing_over.clear())[1],
    )
    _run(qtbot, widget)
    layer = viewer.layers["smear blood-classical instances"]
    assert calls and calls[0] == (False, False), calls  # outlined first in the worker
    assert not [c for c in calls if c[1]], calls  # and not again while being added
    # what napari shows is the outline of each object, not its filled area
    shown = np.asarray(layer._slice.image.view)
    assert layer.contour > 0 and 0 < np.count_nonzero(shown) < 0.6 * np.count_nonzero(layer.data)


def test_loaded_model_appears_at_once_and_runs(qtbot, segment, random_unet):
    viewer, widget = segment
    widget.load_model.value = random_unet  # the "Load model..." file button
    assert widget.model.value == str(random_unet.resolve())
    assert "test-unet" in widget.model.current_choice
    # the fields now show the learned card's post-processing thresholds
    assert [f.name for f in widget.thresholds] == ["foreground_threshold"]
    assert [f.name for f in widget.parameters] == ["min_size", "max_hole", "min_distance"]
    assert widget.tile.enabled and widget.tile.value == 256
    widget.thresholds["foreground_threshold"].value = 0.99
    widget.diameter.value = 0.0
    _run(qtbot, widget)
    layer = viewer.layers["smear test-unet instances"]
    assert layer.data.shape == (256, 256)
    assert set(layer.features["class_name"]) <= set(BLOOD10.names)
    # Train registers its card the same way: the list follows without reopening the widget
    second = random_unet.with_name("copy-unet.json")
    card = builtin_cards()["blood-unet"]
    dataclasses.replace(card, name="copy-unet", weights=WeightsSource(file="test-unet.pt")).save(
        second, overwrite=True
    )
    user_models.register(second)
    assert widget.model.value == str(second.resolve())


def test_cancel_after_first_step_changes_no_layer(qtbot, make_napari_viewer, random_unet):
    viewer = make_napari_viewer()
    image, truth = synthetic_blood_smear(shape=(768, 768), seed=4)
    viewer.add_image(image, name="big", rgb=True)
    previous = viewer.add_labels(truth.labels.copy(), name="big instances")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    widget.load_model.value = random_unet
    widget.tile.value = 128  # many small steps, so the cancel lands mid-run
    steps = []
    worker = widget.run()
    worker.yielded.connect(lambda step: (steps.append(step), widget.cancel()))
    with qtbot.waitSignals([worker.aborted, worker.finished], timeout=WAIT_MS):
        pass
    assert steps and steps[0][1] > steps[-1][0]  # stopped before the last step
    assert [lyr.name for lyr in viewer.layers] == ["big", "big instances"]
    np.testing.assert_array_equal(previous.data, truth.labels)
    assert widget.run_button.enabled, widget.status.value
    assert "cancel" in widget.status.value, widget.status.value


def test_errors_are_notifications_and_add_no_layer(qtbot, segment, monkeypatch):
    from napari.utils.notifications import notification_manager

    from napari_cellquant.core.models import registry
    from napari_cellquant.core.models.card import WeightsSource

    viewer, widget = segment
    before = len(notification_manager.records)
    # a built-in card whose weights are not there (a card shared before training)
    cards = registry.builtin_cards()
    cards["fluo-resunet"].weights = WeightsSource()
    monkeypatch.setattr(registry, "builtin_cards", lambda: cards)
    widget.model.value = "fluo-resunet"
    worker = widget.run()
    with qtbot.waitSignal(worker.finished, timeout=WAIT_MS):
        pass
    messages = [str(n.message) for n in notification_manager.records[before:]]
    assert any("no trained weights" in m for m in messages), messages
    assert [lyr.name for lyr in viewer.layers] == ["smear"]
    # no image at all: refused at once, with a message saying what to do
    viewer.layers.clear()
    assert widget.run() is None
    assert "open an image" in str(notification_manager.records[-1].message)


def test_timer_keeps_ticking_while_a_network_runs(qtbot, make_napari_viewer, random_unet):
    """Freeze detector, not a speed test: inference must leave the GUI thread free.

    A blocked GUI thread would show one gap as long as the whole run; the bound is loose
    (1 s, against ~10 ms ticks) so a busy CI machine cannot trip it. The measured figure
    for the 4032 x 3024 case is in ``benchmarks/responsiveness.py``.
    """
    from qtpy.QtCore import QElapsedTimer, QTimer

    viewer = make_napari_viewer()
    image, _ = synthetic_blood_smear(shape=(512, 512), seed=5)
    viewer.add_image(image, name="smear", rgb=True)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    widget.load_model.value = random_unet
    widget.tile.value = 128
    clock, ticks = QElapsedTimer(), []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(clock.elapsed()))
    steps = []
    worker = widget.run()
    worker.yielded.connect(steps.append)
    clock.start()
    timer.start()
    with qtbot.waitSignal(worker.finished, timeout=WAIT_MS):
        pass
    timer.stop()
    gaps = np.diff(ticks)
    assert len(steps) >= 4
    assert len(ticks) >= 2 * len(steps)  # the GUI thread ran between the network's steps
    assert gaps.max() < 1000, f"GUI froze for {gaps.max()} ms"


def test_box_model_gives_a_shapes_layer_replaced_on_the_next_run(qtbot, segment, tmp_path):
    """A CenterNet card (random weights): boxes as ``<image> <model> boxes``, in the image's
    place."""
    import torch

    from napari_cellquant.core.classes import NET4
    from napari_cellquant.core.models.networks import build_network

    card = dataclasses.replace(
        builtin_cards()["net-centernet"],
        name="test-detector",
        weights=WeightsSource(file="test-detector.pt"),
    )
    torch.manual_seed(0)
    torch.save(build_network(card.architecture).state_dict(), tmp_path / "test-detector.pt")
    card.save(tmp_path / "test-detector.json")
    viewer, widget = segment
    widget.load_model.value = tmp_path / "test-detector.json"
    widget.diameter.value = 0.0
    widget.thresholds["threshold"].value = 0.0  # untrained: take the strongest peaks
    widget.parameters["max_detections"].value = 5
    _run(qtbot, widget)
    boxes = viewer.layers["smear test-detector boxes"]
    assert [lyr.name for lyr in viewer.layers] == ["smear", "smear test-detector boxes"]
    assert boxes.nshapes == 5 and set(boxes.shape_type) == {"rectangle"}
    assert len(boxes.features) == 5 and set(boxes.features["class_name"]) <= set(NET4.names)
    for colour, class_id in zip(boxes.edge_color, boxes.features["class"], strict=True):
        np.testing.assert_allclose(colour, class_rgba(NET4, int(class_id)))
    np.testing.assert_allclose(boxes.scale, (0.5, 0.5))
    np.testing.assert_allclose(boxes.translate, (10.0, -4.0))
    widget.parameters["max_detections"].value = 2
    _run(qtbot, widget)
    assert viewer.layers["smear test-detector boxes"] is boxes
    assert boxes.nshapes == 2 and len(boxes.features) == 2
    for colour, class_id in zip(boxes.edge_color, boxes.features["class"], strict=True):
        np.testing.assert_allclose(colour, class_rgba(NET4, int(class_id)))


def test_the_object_size_comes_from_a_layer_in_micrometres_and_is_shown(
    qtbot, make_napari_viewer, smear
):
    """A red cell is 7.5 um: a layer with a physical scale needs no diameter, and the status
    says what the run took it to be; without one, the estimate is shown."""
    image, truth = smear
    viewer = make_napari_viewer()
    sized = viewer.add_image(image, name="sized", rgb=True, scale=(0.25, 0.25), units=("um", "um"))
    plain = viewer.add_image(image, name="plain", rgb=True)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    widget.model.value = "blood-classical"
    widget.diameter.value = 0.0
    widget.image.value = sized
    _run(qtbot, widget)
    assert "(diameter 30.0 px, from the pixel size)" in widget.status.value, widget.status.value
    true_rbc = truth.counts()["healthy_rbc"] + truth.counts()["infected_rbc"]
    found = viewer.layers["sized blood-classical instances"].features
    assert abs((found["class_name"] == "rbc").sum() - true_rbc) <= 0.2 * true_rbc
    widget.image.value = plain
    _run(qtbot, widget)
    assert "px, estimated from the image)" in widget.status.value, widget.status.value


def test_the_viewer_objects_are_out_of_the_collector_only_while_a_run_lasts(qtbot, segment):
    import gc

    from qtpy.QtCore import Qt

    _, widget = segment
    assert gc.get_freeze_count() == 0
    frozen_during = []
    worker = widget.run()
    worker.yielded.connect(
        lambda _: frozen_during.append(gc.get_freeze_count()), Qt.ConnectionType.DirectConnection
    )
    with qtbot.waitSignal(worker.finished, timeout=WAIT_MS):
        pass
    assert frozen_during and min(frozen_during) > 0
    assert gc.get_freeze_count() == 0


def test_blood_detector_is_the_default_with_a_threshold_per_class(make_napari_viewer, qtbot):
    from napari_cellquant.core.io.images import read_image
    from napari_cellquant.demo import SAMPLES_DIR

    viewer = make_napari_viewer()
    layer = viewer.add_image(
        read_image(SAMPLES_DIR / "BloodImage_00000.jpg"), name="photo", rgb=True
    )
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    assert widget.model.value == "blood-detector"
    widget.image.value = layer
    fields = {field.label: field for field in widget.thresholds}
    assert {"threshold rbc", "threshold wbc", "threshold platelet"} <= set(fields)
    fields["threshold wbc"].value = 0.99  # no WBC is that certain: the WBC goes, RBCs stay
    assert widget.threshold_values()["threshold"][1] == 0.99
    _run(qtbot, widget)
    result = viewer.layers["photo blood-detector instances"]
    names = list(result.features["class_name"])
    wbc_types = {"neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"}
    assert not wbc_types & set(names) and names.count("rbc") >= 17
    assert all(0 < s <= 1 for s in result.features["score"])


def test_segment_never_replaces_the_truth_it_did_not_make(make_napari_viewer, qtbot):
    """The smear sample opens with its truth as "<image> instances"; Segment's result goes
    beside it, and only Segment's own result is replaced by the next run."""
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "synthetic_blood_smear")
    truth = viewer.layers["synthetic_blood_smear instances"]
    truth_pixels = truth.data.copy()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    widget.image.value = viewer.layers["synthetic_blood_smear"]
    widget.model.value = "blood-classical"
    widget.diameter.value = RBC_DIAMETER
    _run(qtbot, widget)
    names = [layer.name for layer in viewer.layers]
    assert names == [
        "synthetic_blood_smear",
        "synthetic_blood_smear instances",
        "synthetic_blood_smear blood-classical instances",
    ]
    np.testing.assert_array_equal(truth.data, truth_pixels)
    result = viewer.layers["synthetic_blood_smear blood-classical instances"]
    assert result.contour == 2 and truth.contour == 0  # results outlined: splits show
    _, correct = viewer.window.add_plugin_dock_widget(PLUGIN, "Correct")
    correct.layer_combo.value = result
    assert correct.toggle_outlines() is False and result.contour == 0  # Shift-O: filled
    assert correct.toggle_outlines() is True and result.contour == 2
    # a user's layer that happens to bear the result's name is not Segment's either
    viewer.layers.remove(result)
    mine = viewer.add_labels(
        truth_pixels.copy(), name="synthetic_blood_smear blood-classical instances"
    )
    _run(qtbot, widget)
    np.testing.assert_array_equal(mine.data, truth_pixels)
    assert "synthetic_blood_smear blood-classical instances [1]" in viewer.layers
    own = viewer.layers["synthetic_blood_smear blood-classical instances [1]"]
    widget.parameters["rbc_min_area"].value = 0.9
    _run(qtbot, widget)  # Segment's own result is replaced, the user's layer is not
    assert len(viewer.layers) == 4
    np.testing.assert_array_equal(mine.data, truth_pixels)
    assert own in viewer.layers


def test_biologists_settings_in_view_and_the_cards_internals_under_advanced(segment, qtbot):
    """In view: image, model, device, diameter and the score thresholds. The 24 internal
    parameters of blood-classical sit in a collapsed Advanced section, each labelled with
    its unit where it has one and explained in a tooltip."""
    _, widget = segment
    shown = [w.label for w in widget if not w.native.isHidden()]
    assert shown[:4] == ["image", "model", "device", "diameter (px)"]
    assert widget.advanced.native.isHidden() and not widget.show_advanced.value
    parameters = {f.name: f for f in widget.parameters}
    assert len(parameters) == 24 and not len(widget.thresholds)
    assert parameters["rbc_min_distance"].label == "rbc min distance (x diameter)"
    assert parameters["rbc_min_area"].label == "rbc min area (x object area)"
    assert "minimum distance between RBC seeds" in parameters["rbc_min_distance"].tooltip
    assert all(f.tooltip for f in parameters.values())
    widget.show_advanced.value = True
    assert not widget.advanced.native.isHidden() and not widget.tile.native.isHidden()
    widget.model.value = "blood-detector"  # a learned card: its thresholds stay in view
    assert [f.label for f in widget.thresholds] == [
        "threshold rbc",
        "threshold wbc",
        "threshold platelet",
    ]
    advanced = {f.label: f for f in widget.parameters}
    assert set(advanced) == {"max detections", "nested overlap"}
    assert (
        advanced["nested overlap"].value == 0.7
        and "duplicate" in advanced["nested overlap"].tooltip
    )
    # scores and shares are 0-1 (which also keeps their fields narrow); counts are not
    assert all(f.max == 1.0 for f in [*widget.thresholds, advanced["nested overlap"]])
    assert advanced["max detections"].max >= 200_000


def test_all_five_docks_at_1280_by_800_keep_the_window_on_screen(make_napari_viewer, qtbot):
    """Every widget docked at 1280 x 800: the docks are tabbed, the window does not grow
    past the size it was given (stacked, it grew to 2,315 px), the canvas keeps most of the
    width beside napari's own layer panels (measured: 692 of 1280 px; 591 before the drop-down
    lists could shrink and Segment's nested settings lost their empty label column), and
    Segment's first field lies below the dock's title bar, not under it."""
    from qtpy.QtCore import QPoint

    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1280, 800)
    opened = [
        viewer.window.add_plugin_dock_widget(PLUGIN, name)
        for name in ("Segment", "Correct", "Count", "Export", "Train")
    ]
    docks = [dock for dock, _ in opened]
    qtbot.wait(200)
    segment_dock, segment = opened[0]
    segment_dock.raise_()
    qtbot.wait(50)
    top = segment.image.native.mapTo(segment_dock, QPoint(0, 0)).y()
    assert top >= segment_dock.titleBarWidget().height(), top
    assert window.width() <= 1280 and window.height() <= 800
    canvas = window.centralWidget()  # the canvas and its layer controls
    assert canvas.width() > 0.5 * window.width(), (canvas.width(), window.width())
    assert all(len(window.tabifiedDockWidgets(dock)) == 4 for dock in docks)


def test_net_detector_on_the_net_sample_gives_classed_cells_and_count_shows_net_percent(
    make_napari_viewer, qtbot
):
    """Segment runs net-detector (fluo-resunet's nuclei, classed by rules) on the NET sample
    in a worker; the result is a Labels layer of net4 cells beside the expert's boxes, and
    Count gives its NET % next to the expert's (75 %: 12 of 16)."""
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "net_fluorescence")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    widget.image.value = viewer.layers["K.Fiok3_1Per2h006_scale"]
    widget.model.value = "net-detector"
    assert widget.parameters["cells_from"].value == "fluo-resunet"  # the nuclei model, editable
    _run(qtbot, widget)
    layer = viewer.layers["K.Fiok3_1Per2h006_scale net-detector instances"]
    assert layer._type_string == "labels"
    features = layer.features.set_index("index")
    assert sorted(features.index) == _labels_ids(layer).tolist()
    assert 12 <= len(features) <= 22 and set(features["class_name"]) <= {
        "NET",
        "dead",
        "unstimulated",
        "decondensed",
    }
    _, count = viewer.window.add_plugin_dock_widget(PLUGIN, "Count")
    shares = {
        r["image"]: r["after"]
        for r in count.refresh()
        if r["group"] == "net_percent" and r["name"] == "NET"
    }
    assert shares["K.Fiok3_1Per2h006_scale"] == pytest.approx(75.0)
    assert abs(shares["K.Fiok3_1Per2h006_scale net-detector"] - 75.0) <= 10


@pytest.fixture(scope="module")
def two_stain_model(tmp_path_factory):
    """A net-area card of two stains (DNA, histone) with untrained weights."""
    import torch

    from napari_cellquant.core.models.networks import build_network

    folder = tmp_path_factory.mktemp("two-stains")
    card = builtin_cards()["net-area"]
    card = dataclasses.replace(
        card,
        name="two-stains",
        input_channels=2,
        architecture={**card.architecture, "in_channels": 2},
        weights=WeightsSource(file="two-stains.pt"),
    )
    torch.manual_seed(0)
    torch.save(build_network(card.architecture).state_dict(), folder / "two-stains.pt")
    card.save(folder / "two-stains.json")
    return folder / "two-stains.json"


def test_a_two_stain_model_takes_a_second_layer_or_does_without(
    qtbot, make_napari_viewer, two_stain_model, monkeypatch
):
    """The second-stain list shows only for a model of two stains; the chosen layer reaches
    the network as the second channel, and without one the image goes alone (the model
    repeats it). A layer of another size or a colour layer is refused with a message."""
    from napari.utils.notifications import notification_manager

    from napari_cellquant.core import predict

    seen = []
    real = predict.iter_predict

    def recording(image, *args, **kwargs):
        seen.append(np.asarray(image))
        return (yield from real(image, *args, **kwargs))

    monkeypatch.setattr(predict, "iter_predict", recording)
    rng = np.random.default_rng(0)
    dna = (rng.random((96, 128)) * 255).astype(np.uint8)
    histone = (255 - dna).astype(np.uint8)
    viewer = make_napari_viewer()
    viewer.add_image(dna, name="dna")
    viewer.add_image(histone, name="histone")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    widget.model.value = "blood-classical"
    assert widget.second_stain.native.isHidden()
    widget.load_model.value = two_stain_model
    assert not widget.second_stain.native.isHidden() and widget.second_stain.value is None
    widget.image.value = viewer.layers["dna"]
    widget.diameter.value = 20.0
    _run(qtbot, widget)
    assert seen[-1].shape == (96, 128)
    widget.second_stain.value = viewer.layers["histone"]
    _run(qtbot, widget)
    assert seen[-1].shape == (96, 128, 2)
    np.testing.assert_array_equal(seen[-1][..., 1], histone)
    assert viewer.layers["dna two-stains instances"].data.shape == (96, 128)

    before = len(notification_manager.records)
    viewer.add_image(dna[:64], name="other field")
    widget.second_stain.value = viewer.layers["other field"]
    assert widget.run() is None
    viewer.add_image(np.stack([dna] * 3, axis=-1), name="colour", rgb=True)
    widget.second_stain.value = viewer.layers["colour"]
    assert widget.run() is None
    messages = [str(n.message) for n in notification_manager.records[before:]]
    assert any("same field" in m for m in messages), messages
    assert any("two grey layers" in m for m in messages), messages
    assert len(seen) == 2


def test_flip_views_under_advanced_start_at_the_cards_and_reach_the_run(
    qtbot, make_napari_viewer, monkeypatch
):
    """Flip views show, under Advanced, only for a segmentation network, set to its card's
    (fluo-resunet 4, blood-unet 1); the value chosen is the one the run uses, and the
    nuclei come out either way."""
    from skimage.draw import disk

    from napari_cellquant.core import predict

    used = []
    real = predict.iter_predict

    def recording(image, *args, **kwargs):
        used.append(kwargs["flip_views"])
        return (yield from real(image, *args, **kwargs))

    monkeypatch.setattr(predict, "iter_predict", recording)
    image = np.full((96, 96), 20, np.uint8)
    for center in [(25, 25), (25, 70), (70, 45)]:
        image[disk(center, 11, shape=image.shape)] = 200
    viewer = make_napari_viewer()
    viewer.add_image(image, name="nuclei")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    widget.show_advanced.value = True
    widget.model.value = "blood-detector"
    assert widget.flip_views.native.isHidden()
    widget.model.value = "blood-unet"
    assert not widget.flip_views.native.isHidden() and widget.flip_views.value == 1
    widget.model.value = "fluo-resunet"
    assert widget.flip_views.value == 4
    widget.image.value = viewer.layers["nuclei"]
    widget.diameter.value = 22.0
    _run(qtbot, widget)
    widget.flip_views.value = 1
    _run(qtbot, widget)
    assert used == [4, 1]
    assert len(_labels_ids(viewer.layers["nuclei fluo-resunet instances"])) == 3

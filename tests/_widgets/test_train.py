"""The Train widget through the manifest: trains on a corrected layer, saves, registers, cancels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_cellquant._layers import annotation_to_layer_data
from napari_cellquant._widgets._models import user_models
from napari_cellquant.core.annotation import Annotation
from napari_cellquant.core.classes import CELL
from napari_cellquant.core.models.card import ModelCard
from napari_cellquant.core.predict import load_model, predict
from napari_cellquant.core.synthetic import synthetic_blood_smear

PLUGIN = "napari-cellquant"
WAIT_MS = 180_000  # generous: CI shares two cores between jobs
BLOOD_NORM = {
    "mode": "meanstd",
    "mean": [233.9, 224.0, 233.2],
    "std": [40.6, 53.7, 40.4],
    "range": 255,
}


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_card(tmp_path_factory) -> str:
    """A two-level U-Net card without weights (trained from scratch), as a user may load."""
    folder = tmp_path_factory.mktemp("base")
    card = ModelCard(
        name="tiny-cells",
        kind="learned",
        task="instances",
        class_set="cell",
        normalization=BLOOD_NORM,
        tile=96,
        diameter_px={"rbc": 20.0},
        architecture={"widths": [8, 16], "n_classes": 1, "heads": ["classes", "distance"]},
        postprocess={"min_size": 10, "min_distance": 4},
    )
    card.save(folder / "tiny-cells.json")
    return user_models.key_of(user_models.register(folder / "tiny-cells.json"))


@pytest.fixture(scope="module")
def smear():
    image, truth = synthetic_blood_smear((96, 96), seed=1, rbc_radius=10)
    return image, Annotation.from_labels(truth.labels, CELL, image_name="smear.png")


@pytest.fixture
def train(make_napari_viewer, smear, tiny_card):
    """A viewer with the smear and its corrected cells, and the Train widget set to train."""
    viewer = make_napari_viewer()
    image, truth = smear
    for data, kwargs, layer_type in annotation_to_layer_data(truth.copy(), image=image):
        getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    widget.layers.value = [viewer.layers["smear instances"]]
    widget.base.value = tiny_card
    widget.epochs.value = 2
    widget.crop.value = 64
    widget.batch_size.value = 2
    widget.val_fraction.value = 0.0  # one image: validation on it (the result says so)
    widget.device.value = "cpu"
    return viewer, widget


def _wait(qtbot, worker):
    with qtbot.waitSignal(worker.finished, timeout=WAIT_MS):
        pass


def test_trains_saves_and_appears_in_segment(qtbot, train, tmp_path, smear):
    viewer, widget = train
    _, segment = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    widget.output.value = tmp_path / "my-cells.pt"
    worker = widget.run()
    assert worker is not None
    assert not widget.train_button.enabled and widget.cancel_button.enabled
    _wait(qtbot, worker)
    assert widget.train_button.enabled and not widget.cancel_button.enabled

    weights, card = tmp_path / "my-cells.pt", tmp_path / "my-cells.json"
    assert weights.is_file() and card.is_file()
    model = load_model(card, "cpu")
    assert model.card.name == "my-cells" and model.card.class_set == "cell"
    recorded = json.loads(card.read_text())
    assert recorded["training"]["images"] == ["smear.png"]
    assert recorded["training"]["settings"]["epochs"] == 2
    assert recorded["training"]["objects"]["cell"] == len(smear[1].instance_ids())
    # the new weights run through predict
    found = predict(smear[0], model)
    assert found.labels.shape == smear[1].labels.shape
    # every step's loss is on the curve: 96 x 96 px in 64 px crops of 2 -> 2 steps an epoch
    assert len(widget.loss_plot.losses) == 4
    assert all(np.isfinite(widget.loss_plot.losses))
    assert "no weights" in widget.scores.value
    # at once in Segment's model list, and selected there
    key = str(card.resolve())
    assert key in segment.model.choices
    assert segment.model.value == key
    # and offered as a base for the next round
    assert key in widget.base.choices
    # a built-in network without weights is a base to train, not a model to run yet
    assert "net-centernet" in widget.base.choices and "net-centernet" not in segment.model.choices
    assert "net-detector" in segment.model.choices  # a pipeline: nothing to train
    assert "net-detector" not in widget.base.choices


def test_fine_tuning_shows_base_and_new_scores(qtbot, train, tmp_path):
    from napari.utils.notifications import notification_manager

    _, widget = train
    widget.output.value = tmp_path / "first.pt"
    _wait(qtbot, widget.run())
    first = str((tmp_path / "first.json").resolve())
    widget.base.value = first
    widget.epochs.value = 1
    widget.output.value = tmp_path / "second.pt"
    before = len(notification_manager.records)
    _wait(qtbot, widget.run())
    result = widget.result
    assert result is not None and result.base_score is not None and result.score is not None
    assert f"base {result.base_score:.3f} -> new {result.score:.3f}" in widget.scores.value
    warned = [
        str(n.message) for n in notification_manager.records[before:] if "worse" in str(n.message)
    ]
    assert bool(warned) == (result.score < result.base_score)
    assert json.loads((tmp_path / "second.json").read_text())["training"]["fine_tuned"]


def _cancel_at(widget, worker, phase: str) -> None:
    """Cancel from the worker thread as the first ``phase`` event is yielded (no race)."""

    def on_event(event) -> None:
        if event.phase == phase:
            widget.cancel()

    worker.yielded.connect(on_event, Qt.ConnectionType.DirectConnection)


def test_cancel_mid_epoch_leaves_no_file(qtbot, train, tmp_path):
    _, widget = train
    output = tmp_path / "out" / "cancelled.pt"
    widget.output.value = output
    worker = widget.run()
    _cancel_at(widget, worker, "step")
    _wait(qtbot, worker)
    assert widget.result is None
    assert len(widget.loss_plot.losses) == 1  # stopped at the first step
    folder = output.parent
    assert not folder.exists() or list(folder.iterdir()) == []  # nothing, not even temp files
    assert "nothing was saved" in widget.status.value
    assert user_models.get(str(output.with_suffix(".json").resolve())) is None
    assert widget.train_button.enabled


def test_cancel_after_an_epoch_keeps_whole_files(qtbot, train, tmp_path):
    _, widget = train
    output = tmp_path / "partial.pt"
    widget.output.value = output
    worker = widget.run()
    _cancel_at(widget, worker, "epoch")
    _wait(qtbot, worker)
    assert len(widget.loss_plot.losses) == 2  # epoch 1 only
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["partial.json", "partial.pt", "partial.resume.pt"]  # no temp files
    card = json.loads((tmp_path / "partial.json").read_text())
    assert card["metrics"]["validation"]["epoch"] == 1
    assert load_model(tmp_path / "partial.json", "cpu").card.name == "partial"  # hash checked
    assert user_models.get(str((tmp_path / "partial.json").resolve())) is not None


def test_problems_are_notifications(qtbot, train, tmp_path):
    from napari.utils.notifications import notification_manager

    viewer, widget = train
    widget.output.value = None
    assert widget.run() is None
    assert "save weights as" in str(notification_manager.records[-1].message)
    widget.output.value = tmp_path / "x.pt"
    widget.layers.value = []
    assert widget.run() is None
    assert "at least one corrected layer" in str(notification_manager.records[-1].message)
    # a layer whose image is not in the viewer and none picked
    viewer.add_labels(np.zeros((32, 32), dtype=np.int32), name="orphan")
    widget.layers.value = [viewer.layers["orphan"]]
    widget.image.value = None
    assert widget.run() is None
    assert "no image found" in str(notification_manager.records[-1].message)
    # an existing output is refused by the training, without replacing it
    (tmp_path / "x.pt").write_bytes(b"keep me")
    widget.layers.value = [viewer.layers["smear instances"]]
    worker = widget.run()
    _wait(qtbot, worker)
    assert "already exists" in str(notification_manager.records[-1].message)
    assert Path(tmp_path / "x.pt").read_bytes() == b"keep me"


def test_layers_and_a_folder_of_annotated_images_train_together(qtbot, train, tmp_path, smear):
    from skimage.io import imsave

    from napari_cellquant.core.io import write_annotations

    _, widget = train
    image, truth = smear
    folder = tmp_path / "more"
    folder.mkdir()
    # a second annotated image on disk: the smear turned upside down, with its COCO file
    imsave(folder / "flipped.png", image[::-1].copy(), check_contrast=False)
    flipped = truth.copy(labels=truth.labels[::-1].copy(), image_name="flipped.png")
    write_annotations([flipped], folder / "cells.json", to="coco")
    widget.images_folder.value = folder
    widget.annotations_file.value = folder / "cells.json"
    widget.epochs.value = 1
    widget.output.value = tmp_path / "both.pt"
    _wait(qtbot, widget.run())
    training = json.loads((tmp_path / "both.json").read_text())["training"]
    assert sorted(training["images"]) == ["flipped.png", "smear.png"]
    assert training["objects"]["cell"] == 2 * len(truth.instance_ids())
    # 2 images of 96 x 96 px in 64 px crops of 2 -> 3 steps
    assert len(widget.loss_plot.losses) == 3


def test_boxes_in_a_shapes_layer_train_a_detector(qtbot, make_napari_viewer, tmp_path):
    from napari_cellquant.core.annotation import Boxes
    from napari_cellquant.core.classes import NET4

    # bright nuclei on a dark background, boxed as NETs, as in the fluorescence data
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:128, 0:128]
    signal = rng.normal(20, 4, (128, 128))
    rows = []
    for cy, cx in [(24, 26), (28, 92), (70, 54), (100, 22), (104, 100), (62, 108)]:
        signal += 180 * ((yy - cy) ** 2 + (xx - cx) ** 2 <= 64)
        rows.append((cx - 8, cy - 8, 16, 16))
    green = np.clip(signal, 0, 255).astype(np.uint8)
    image = np.stack([green * 0, green, green // 4], axis=-1)
    truth = Annotation.empty(
        (128, 128), NET4, boxes=Boxes(rows, [1] * len(rows)), image_name="nuclei.png"
    )
    card = ModelCard(
        name="tiny-det",
        kind="learned",
        task="boxes",
        class_set="net4",
        normalization={"mode": "percentile", "low": 1.0, "high": 99.8},
        tile=128,
        architecture={
            "widths": [8, 16, 32],
            "heads": [],
            "detector": {"n_classes": 4, "stride": 4, "head_width": 16},
        },
        postprocess={"threshold": 0.3, "max_detections": 50},
    )
    card.save(tmp_path / "tiny-det.json")
    base = user_models.key_of(user_models.register(tmp_path / "tiny-det.json"))

    viewer = make_napari_viewer()
    for data, kwargs, layer_type in annotation_to_layer_data(truth, image=image):
        getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    widget.layers.value = [viewer.layers["nuclei boxes"]]
    widget.base.value = base
    widget.epochs.value = 1
    widget.crop.value = 64
    widget.batch_size.value = 2
    widget.val_fraction.value = 0.0
    widget.device.value = "cpu"
    widget.output.value = tmp_path / "nets.pt"
    _wait(qtbot, widget.run())
    assert widget.result is not None and widget.result.score_name == "f1@0.5"
    model = load_model(tmp_path / "nets.json", "cpu")
    assert model.card.task == "boxes" and model.card.class_set == "net4"
    assert json.loads((tmp_path / "nets.json").read_text())["training"]["objects"] == {"NET": 6}

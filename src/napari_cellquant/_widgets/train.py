"""The Train dock widget: fine-tune a model on the corrections open in the viewer.

The widget gathers the corrected Labels/Shapes layers (as Annotations, through
:func:`napari_cellquant._layers.layer_data_to_annotation`), their images and optionally a
folder of annotated images, and hands them to :func:`napari_cellquant.core.training.iter_train`
inside a napari ``thread_worker``. Each step's event moves a napari progress bar and a live
loss curve; Cancel stops at the next step (the training writes its files atomically, once per
finished epoch, so nothing is ever half-written). The new weights and card are registered in
:data:`._models.user_models`, so they appear at once in Segment's model list, and the base
model's validation score is shown next to the new one, with a warning when the new model is
worse.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    PushButton,
    Select,
    SpinBox,
)
from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

from .._layers import META_IMAGE_NAME, layer_pixels, layers_to_annotations
from ..core.errors import InputError
from ..core.models.registry import builtin_cards
from ._docking import tab_with_plugin_docks
from ._models import UserModel, device_choices, user_models
from ._workers import Failed, RunsOneJob, WidgetJob, notify_error, notify_warning

if TYPE_CHECKING:
    import napari

    from ..core.annotation import Annotation
    from ..core.training import TrainingEvent, TrainingResult

log = logging.getLogger(__name__)


class LossPlot(QWidget):
    """A small live line plot of the training loss per step (QPainter; no plotting library)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.losses: list[float] = []
        self.setMinimumHeight(110)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("training loss per step")

    def clear(self) -> None:
        self.losses = []
        self.update()

    def add(self, loss: float) -> None:
        if np.isfinite(loss):
            self.losses.append(float(loss))
            self.update()

    def paintEvent(self, event: Any) -> None:  # Qt's name for the repaint handler
        painter = QPainter(self)
        try:
            self._draw(painter)
        finally:
            painter.end()

    def _draw(self, painter: QPainter) -> None:
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        margin = 6
        width, height = self.width() - 2 * margin, self.height() - 2 * margin - 14
        painter.setPen(QPen(Qt.GlobalColor.gray, 1))
        painter.drawRect(margin, margin, width, height)
        if not self.losses:
            painter.drawText(margin + 4, margin + 16, "loss")
            return
        values = np.asarray(self.losses)
        low, high = float(values.min()), float(values.max())
        span = high - low or 1.0
        x = margin + np.linspace(0, width, len(values)) if len(values) > 1 else [margin + width / 2]
        y = margin + height - (values - low) / span * height
        line = QPolygonF([QPointF(float(a), float(b)) for a, b in zip(x, y)])
        painter.setPen(QPen(QColor(30, 144, 255), 1.5))  # readable on light and dark themes
        painter.drawPolyline(line)
        painter.setPen(QPen(Qt.GlobalColor.gray, 1))
        painter.drawText(
            margin,
            self.height() - 4,
            f"loss {values[-1]:.4g} (min {low:.4g}, max {high:.4g}), {len(values)} steps",
        )


class TrainWidget(RunsOneJob, Container):
    """Pick corrected layers (and/or a folder), a base model and epochs; Train; Cancel.

    Parameters
    ----------
    viewer
        The napari viewer (napari passes it when the widget opens from the Plugins menu).
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        # not scrollable=True: napari docks a magicgui container's ``native`` (the inner
        # widget), orphaning its scroll area; the inner widget then kept the scroll area's
        # geometry, under the dock's title bar and wider than the dock. Tabbed docks make
        # the scrolling unnecessary.
        super().__init__()
        tab_with_plugin_docks(self.native)
        self._viewer = viewer
        self._builtin = {
            n: c
            for n, c in builtin_cards().items()
            if c.kind == "learned" and c.task != "classify"  # scripts/wbc_types.py trains those
        }
        self.result: TrainingResult | None = None  # of the last finished run
        self._last_event: TrainingEvent | None = None

        self.layers = Select(label="corrected layers", choices=self._layer_choices)
        self.image = ComboBox(
            label="image",
            choices=self._image_choices,
            nullable=True,
            tooltip="Image of layers whose own image is not found by name",
        )
        self.images_folder = FileEdit(
            label="images folder",
            mode="d",
            nullable=True,
            tooltip="Optional: more annotated images from disk",
        )
        self.annotations_file = FileEdit(
            label="annotations",
            mode="r",
            nullable=True,
            tooltip="COCO/VOC/label file for the images folder (empty: read the folder)",
        )
        self.base = ComboBox(label="base model", choices=self._base_choices)
        self.epochs = SpinBox(label="epochs", min=1, max=10_000, value=20)
        self.crop = SpinBox(label="crop (px)", min=32, max=2048, step=32, value=256)
        self.batch_size = SpinBox(label="batch size", min=1, max=256, value=4)
        self.val_fraction = FloatSpinBox(
            label="validation share", min=0.0, max=0.9, step=0.05, value=0.2
        )
        self.device = ComboBox(label="device", choices=device_choices())
        self.output = FileEdit(label="save weights as", mode="w", filter="*.pt", nullable=True)
        self.overwrite = CheckBox(text="replace existing files", value=False)
        self.train_button = PushButton(text="Train")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        self._job_runner = WidgetJob("Train", self.train_button, self.cancel_button, self.status)
        self.scores = Label(value="")
        self.loss_plot = LossPlot()
        self.extend(
            [
                self.layers,
                self.image,
                self.images_folder,
                self.annotations_file,
                self.base,
                self.epochs,
                self.crop,
                self.batch_size,
                self.val_fraction,
                self.device,
                self.output,
                self.overwrite,
                Container(
                    widgets=[self.train_button, self.cancel_button],
                    layout="horizontal",
                    labels=False,
                ),
                self.status,
                self.scores,
            ]
        )
        self.native.layout().addWidget(self.loss_plot)

        self.train_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        user_models.changed.connect(self._on_user_model)
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
            event.connect(self._refresh_layers)

    # --- choices ------------------------------------------------------------------------
    def _layer_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        from napari.layers import Labels, Shapes

        return [
            (layer.name, layer)
            for layer in self._viewer.layers
            if isinstance(layer, (Labels, Shapes))
        ]

    def _image_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        from napari.layers import Image

        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Image)]

    def _base_choices(self, _widget: Any = None) -> list[tuple[str, str]]:
        builtin = [
            (f"{name} ({card.task}, {card.class_set})", name)
            for name, card in self._builtin.items()
        ]
        return builtin + [
            (entry.label, entry.source)
            for entry in user_models
            if entry.source is not None and entry.card.kind == "learned"
        ]

    def _refresh_layers(self, event: Any = None) -> None:
        self.layers.reset_choices()
        self.image.reset_choices()

    def _on_user_model(self, entry: UserModel) -> None:
        try:
            self.base.reset_choices()
        except RuntimeError:  # this widget's Qt side was closed with its viewer
            user_models.changed.disconnect(self._on_user_model)

    # --- running ------------------------------------------------------------------------
    def run(self) -> Any:
        """Start training; returns the thread worker (None when the input is unusable).

        The worker starts on the next turn of the Qt event loop, so a caller can connect to
        its signals first. Problems with the input become notifications.
        """
        if self.busy:
            return self.worker
        try:
            job = self._job()
        except Exception as exc:
            self._job_runner.fail(str(exc))
            return None
        self.result = None
        self._last_event = None
        self.loss_plot.clear()
        self.scores.value = ""
        return self._job_runner.start(
            _train_job,
            job,
            on_step=self._on_event,
            on_result=self._on_returned,
            on_aborted=self._on_aborted,
            status=f"preparing {job['settings']['base']}...",
        )

    def _job(self) -> dict[str, Any]:
        output = _path_or_none(self.output.value)
        if output is None:
            raise InputError("choose where to save the new weights ('save weights as')")
        folder = _path_or_none(self.images_folder.value)
        layers = list(self.layers.value)
        if not layers and folder is None:
            raise InputError("choose at least one corrected layer or an images folder")
        annotations = layers_to_annotations(layers) if layers else []
        images = [self._image_of(annotation) for annotation in annotations]
        return {
            "images": images,
            "annotations": annotations,
            "folder": folder,
            "folder_annotations": _path_or_none(self.annotations_file.value),
            "settings": {
                "base": self.base.value,
                "output": output,
                "epochs": int(self.epochs.value),
                "crop": int(self.crop.value),
                "batch_size": int(self.batch_size.value),
                "val_fraction": float(self.val_fraction.value),
                "device": self.device.value,
                "overwrite": bool(self.overwrite.value),
            },
        }

    def _image_of(self, annotation: Annotation) -> tuple[Any, bool, bool]:
        """``(data, multiscale, rgb)`` of the Image layer an annotation belongs to."""
        from napari.layers import Image

        name = annotation.image_name
        stem = Path(name).stem
        candidates = [layer for layer in self._viewer.layers if isinstance(layer, Image)]
        for match in (
            lambda layer: layer.metadata.get(META_IMAGE_NAME) == name,
            lambda layer: layer.name in (name, stem),
            lambda layer: Path(str(getattr(layer.source, "path", "") or "")).name == name,
        ):
            found = [layer for layer in candidates if match(layer)]
            if found:
                layer = found[0]
                break
        else:
            layer = self.image.value
            if layer is None:
                raise InputError(f"no image found for the layers of {name!r}: pick it in 'image'")
        return layer.data, bool(layer.multiscale), bool(layer.rgb)

    # --- events from the worker ---------------------------------------------------------
    def _on_event(self, event: TrainingEvent) -> None:
        if event.phase == "step" and event.loss is not None:
            self.loss_plot.add(event.loss)
        self._last_event = event
        text = f"epoch {max(event.epoch, 1)}/{event.epochs}, step {event.step}/{event.total_steps}"
        if event.loss is not None:
            text += f", loss {event.loss:.4g}"
        if event.best_score is not None:
            text += f", best validation {event.best_score:.3f}"
        if event.phase == "start" and event.base_score is not None:
            text += f", base validation {event.base_score:.3f}"
        self._job_runner.set_status(text)
        self._job_runner.advance(event.step, event.total_steps)

    def _on_returned(self, result: TrainingResult) -> None:
        self.result = result
        if result.card is None:
            self._job_runner.set_status("no epoch finished: nothing was saved")
            return
        self._register(result.card)
        self.scores.value = _score_text(result.score_name, result.base_score, result.score)
        self._job_runner.set_status(
            f"saved {result.weights} (best epoch {result.best_epoch} of "
            f"{result.epochs_run}); it is in Segment's model list"
        )
        for message in result.warnings:
            notify_warning(f"Train: {message}")

    def _on_aborted(self) -> None:
        event = self._last_event
        if event is not None and event.checkpoint is not None:
            card = Path(event.checkpoint).with_suffix(".json")
            if card.is_file():
                self._register(card)
                self._job_runner.set_status(
                    f"cancelled: the best weights so far stay in "
                    f"{event.checkpoint} (added to the model list)"
                )
                return
        self._job_runner.set_status("cancelled before an epoch finished: nothing was saved")

    def _register(self, card: Path) -> None:
        try:
            user_models.register(card)
        except Exception as exc:  # a card we just wrote should load; say so if it does not
            notify_error(f"Train: the new model could not be added to the list: {exc}")


def _train_job(
    *,
    images: list[tuple[Any, bool, bool]],
    annotations: list[Annotation],
    folder: Path | None,
    folder_annotations: Path | None,
    settings: dict[str, Any],
):
    """Worker body: read the images (and the folder), then yield ``iter_train``'s events.

    Returns the :class:`TrainingResult`, or :class:`Failed` with the error.
    """
    from ..core.training import TrainingConfig, iter_train, load_training_pairs

    try:
        pixels = [layer_pixels(data, multiscale, rgb) for data, multiscale, rgb in images]
        annotations = list(annotations)
        if folder is not None:
            for image, annotation in load_training_pairs(folder, folder_annotations or folder):
                pixels.append(image)
                annotations.append(annotation)
        config = TrainingConfig(images=pixels, annotations=annotations, **settings)
        result = yield from iter_train(config)
    except Exception as exc:  # shown to the user; the traceback goes to the log
        log.debug("Train failed", exc_info=True)
        return Failed(exc)
    return result


def _path_or_none(value: Any) -> Path | None:
    if value is None or str(value) in ("", "."):
        return None
    return Path(value).expanduser()


def _score_text(name: str, base: float | None, new: float | None) -> str:
    new_text = "-" if new is None else f"{new:.3f}"
    if base is None:
        return f"validation {name}: new {new_text} (the base model had no weights)"
    verdict = ""
    if new is not None:
        verdict = ": better" if new > base else (": WORSE than the base" if new < base else "")
    return f"validation {name}: base {base:.3f} -> new {new_text}{verdict}"


__all__ = ["LossPlot", "TrainWidget"]

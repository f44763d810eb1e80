"""Count: objects per class, shares and derived figures per image, before and after correction.

The widget gathers the visible annotation layers (Labels and Shapes) of the viewer and counts
each source on its own: the layers of one file or one result (``<name> instances`` and
``<name> boxes``) form one group named ``<name>``, so an image's truth and a model's
prediction of it are two named groups side by side, never added up. Hidden layers are left
out unless asked. Each group is counted through :mod:`napari_cellquant.core.quantify` and shows
the tidy table, a bar chart, and buttons to copy it and save it as CSV. It follows edits live:
layer events restart a 200 ms single-shot timer, and the count itself (a ``bincount`` per
Labels layer) runs in a ``thread_worker`` so a 12-megapixel layer never blocks the GUI.

*Objects CSV…* measures every object of the layers in the chart
(:func:`napari_cellquant.core.measure.object_table`: centroid, area in px and µm², shape,
mean intensity of the image's channels), in a worker, saves the table QuPath users export
first, and refreshes the measurement columns of the Labels layer's ``features`` (so napari's
features table shows them as they are after the corrections).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import napari
import napari.layers
import numpy as np
from qtpy.QtCore import QRectF, Qt, QTimer
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .._layers import (
    BOXES_SUFFIX,
    INSTANCES_SUFFIX,
    META_CLASS_SET,
    META_DEFAULT_CLASS,
    META_IMAGE_SHAPE,
    META_INITIAL_COUNTS,
    as_table,
    class_set_from_metadata,
    classes_from_table,
    layer_pixel_size_um,
    layers_to_annotations,
    strip_suffix,
)
from ..core import quantify
from ..core.classes import CELL, ClassSet
from ..core.errors import CellquantError, OutputExistsError
from ._docking import tab_with_plugin_docks
from ._workers import notify_warning

logger = logging.getLogger(__name__)

#: Debounce of live updates, in milliseconds.
LIVE_DELAY_MS = 200


@dataclass
class _LayerCounts:
    """What one layer contributes to its image's counts, gathered on the GUI thread."""

    labels: np.ndarray | None = None
    row_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    row_classes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    default_class: int = 1
    box_classes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    initial: dict[str, int] | None = None


@dataclass
class ImageGroup:
    """The annotation layers of one image."""

    key: str
    image: str
    class_set: ClassSet
    parts: list[_LayerCounts] = field(default_factory=list)
    area_mm2: float | None = None


def _labels_2d(layer: Any) -> np.ndarray:
    data = layer.data[0] if layer.multiscale else layer.data
    array = np.asarray(data)
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise CellquantError(f"layer {layer.name!r}: only 2-D labels can be counted")
    return array


def gather_groups(layers: Any, *, include_hidden: bool = False) -> list[ImageGroup]:
    """Annotation layers grouped by source (the layer name without `` instances`` or
    `` boxes``), with what is needed to count them; hidden layers only with
    ``include_hidden``.

    Cheap (features tables and metadata only; arrays are referenced, not copied), so it runs
    on the GUI thread; :func:`count_groups` does the pixel work.
    """
    groups: dict[str, ImageGroup] = {}
    for layer in layers:
        if isinstance(layer, napari.layers.Labels):
            kind = "labels"
        elif isinstance(layer, napari.layers.Shapes):
            kind = "shapes"
        else:
            continue
        if not layer.visible and not include_hidden:
            continue
        suffix = INSTANCES_SUFFIX if kind == "labels" else BOXES_SUFFIX
        key = strip_suffix(layer.name, suffix)
        class_set = class_set_from_metadata(layer.metadata.get(META_CLASS_SET)) or CELL
        group = groups.get(key)
        if group is None:
            group = groups[key] = ImageGroup(key, key, class_set)
        elif group.class_set.names != class_set.names:
            raise CellquantError(
                f"layers of image {key!r} use different class sets "
                f"({group.class_set.name!r} and {class_set.name!r})"
            )
        default = int(layer.metadata.get(META_DEFAULT_CLASS, 1))
        table = as_table(layer.features)
        part = _LayerCounts(default_class=default, initial=layer.metadata.get(META_INITIAL_COUNTS))
        if kind == "labels":
            part.labels = _labels_2d(layer)
            n_rows = max((len(v) for v in table.values()), default=0)
            ids = table.get("index", table.get("label", np.arange(n_rows)))
            part.row_labels = np.asarray(ids, dtype=np.int64)
            part.row_classes = classes_from_table(table, n_rows, class_set, default, layer.name)
            if group.area_mm2 is None:
                size = layer_pixel_size_um(layer)
                shape = layer.metadata.get(META_IMAGE_SHAPE) or part.labels.shape
                if size is not None:
                    group.area_mm2 = quantify.image_area_mm2(shape, size)
        else:
            part.box_classes = classes_from_table(
                table, len(layer.data), class_set, default, layer.name
            )
        group.parts.append(part)
    return list(groups.values())


def count_groups(groups: list[ImageGroup]) -> list[quantify.Row]:
    """The count table of every group (pure numpy; safe in a worker thread)."""
    rows: list[quantify.Row] = []
    for group in groups:
        n = len(group.class_set)
        counts = np.zeros(n + 1, dtype=np.int64)
        measures_area = any(c in group.class_set.names for c in quantify.AREA_CLASSES)
        areas = np.zeros(n + 1, dtype=np.int64)
        field_px = None
        for part in group.parts:
            if part.labels is not None:
                objects, pixels = quantify.instance_class_totals(
                    part.labels,
                    part.row_labels,
                    part.row_classes,
                    n,
                    default_class=part.default_class,
                )
                counts += objects
                areas += pixels
                field_px = field_px or int(part.labels.size)
            counts += quantify.box_class_counts(part.box_classes, n)
        before: dict[str, int] | None = None
        if group.parts and all(p.initial is not None for p in group.parts):
            before = {}
            for part in group.parts:
                for name, value in (part.initial or {}).items():
                    before[name] = before.get(name, 0) + int(value)
        after = quantify.counts_by_name(group.class_set, counts)
        rows += quantify.count_table(
            group.image,
            group.class_set,
            after,
            before,
            area_mm2=group.area_mm2,
            areas_px=quantify.counts_by_name(group.class_set, areas) if measures_area else None,
            field_px=field_px,
        )
    return rows


class BarChart(QWidget):
    """Counts per class as bars in the class colours; a grey outline shows the count before."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumHeight(140)
        self.bars: list[tuple[str, float, float, tuple[int, int, int]]] = []

    def set_bars(self, bars: list[tuple[str, float, float, tuple[int, int, int]]]) -> None:
        """``(name, before, after, rgb)`` per class; NaN ``before`` draws no outline."""
        self.bars = bars
        self.update()

    def paintEvent(self, event: Any) -> None:
        painter = QPainter(self)
        try:
            width, height = self.width(), self.height()
            painter.fillRect(0, 0, width, height, QColor(38, 41, 48))
            if not self.bars:
                return
            top = max(max(a, 0 if math.isnan(b) else b) for _, b, a, _ in self.bars) or 1.0
            slot = width / len(self.bars)
            base = height - 16
            for k, (name, before, after, rgb) in enumerate(self.bars):
                x = k * slot + slot * 0.15
                w = slot * 0.7
                h = (base - 14) * after / top
                painter.fillRect(QRectF(x, base - h, w, h), QColor(*rgb))
                if not math.isnan(before):
                    painter.setPen(QPen(QColor(200, 200, 200), 1, Qt.DashLine))
                    hb = (base - 14) * before / top
                    painter.drawRect(QRectF(x, base - hb, w, hb))
                painter.setPen(QColor(230, 230, 230))
                label = painter.fontMetrics().elidedText(name, Qt.ElideRight, int(slot) - 2)
                painter.drawText(QRectF(k * slot, base, slot, 16), Qt.AlignCenter, label)
                painter.drawText(
                    QRectF(k * slot, base - h - 14, slot, 14), Qt.AlignCenter, f"{after:g}"
                )
        finally:
            painter.end()


#: the layer events after which Count recounts (those a layer lacks are skipped)
FOLLOWED_EVENTS = ("paint", "data", "features", "set_data", "labels_update", "visible", "name")


class CountWidget(QWidget):
    """Counts per class, shares, WBC differential, parasitaemia, NET % and density per mm^2
    for every image's annotation layers, before and after correction; follows edits live."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        tab_with_plugin_docks(self)
        self.viewer = viewer
        self.rows: list[quantify.Row] = []
        self._groups: list[ImageGroup] = []
        self._worker: Any = None
        self._stale = False
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(LIVE_DELAY_MS)
        self._timer.timeout.connect(self._refresh_in_background)

        self.count_button = QPushButton("Count")
        self.count_button.setToolTip("Count every Labels and Shapes layer now")
        self.live = QCheckBox("live")
        self.live.setChecked(True)
        self.live.setToolTip("Recount 200 ms after each edit, in the background")
        self.include_hidden = QCheckBox("hidden layers")
        self.include_hidden.setToolTip("Count hidden annotation layers too")
        copy_button = QPushButton("Copy")
        copy_button.setToolTip("Copy the table to the clipboard (tab-separated)")
        save_button = QPushButton("Save CSV…")
        objects_button = QPushButton("Objects CSV…")
        objects_button.setToolTip(
            "Measure every object of the layers in the chart (centroid, area, shape, mean "
            "intensity) and save one row per object; the Labels layer's features get the "
            "same columns"
        )
        self.objects: list[dict[str, Any]] = []
        self._measuring: Any = None
        self.table = QTableWidget(0, len(quantify.COLUMNS))
        self.table.setHorizontalHeaderLabels(list(quantify.COLUMNS))
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        self.table.setMinimumHeight(220)
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("Layers (a file or a result) shown in the bar chart")
        self.chart = BarChart()
        self.status = QLabel("")

        self.status.setWordWrap(True)
        layout = QVBoxLayout(self)
        # two short rows, so the dock stays narrow beside the canvas
        for row in (
            (self.count_button, self.live, self.include_hidden),
            (copy_button, save_button, objects_button),
        ):
            buttons = QHBoxLayout()
            for w in row:
                buttons.addWidget(w)
            layout.addLayout(buttons)
        layout.addWidget(self.table, 3)
        layout.addWidget(self.image_combo)
        layout.addWidget(self.chart, 1)
        layout.addWidget(self.status)

        # ~80 ms per 12-megapixel layer: the button counts in the background too
        self.count_button.clicked.connect(self._refresh_in_background)
        self.include_hidden.toggled.connect(self.schedule)
        copy_button.clicked.connect(self.copy_to_clipboard)
        save_button.clicked.connect(self._save_dialog)
        objects_button.clicked.connect(self._save_objects_dialog)
        self.image_combo.currentTextChanged.connect(self._draw_chart)
        viewer.layers.events.inserted.connect(self._on_layers_changed)
        viewer.layers.events.removed.connect(self._on_layers_changed)
        for layer in viewer.layers:
            self._follow(layer)
        self.refresh()

    # --- following the layers ---------------------------------------------------------------
    def _follow(self, layer: Any) -> None:
        if not isinstance(layer, napari.layers.Labels | napari.layers.Shapes):
            return
        for name in FOLLOWED_EVENTS:
            emitter = getattr(layer.events, name, None)
            if emitter is not None:
                emitter.connect(self.schedule)

    def _on_layers_changed(self, event: Any) -> None:
        if event.type == "inserted":
            self._follow(event.value)
        else:
            for name in FOLLOWED_EVENTS:
                emitter = getattr(event.value.events, name, None)
                if emitter is not None:
                    emitter.disconnect(self.schedule)
        self.schedule()

    def schedule(self, event: Any = None) -> None:
        """Recount after :data:`LIVE_DELAY_MS` without further edits (when live)."""
        if self.live.isChecked():
            self._timer.start()

    # --- counting ----------------------------------------------------------------------------
    def refresh(self) -> list[quantify.Row]:
        """Count now, on the calling thread, and show the table; returns its rows."""
        try:
            self._groups = gather_groups(
                self.viewer.layers, include_hidden=self.include_hidden.isChecked()
            )
            self._show(count_groups(self._groups))
        except CellquantError as exc:
            self._warn(str(exc))
        return self.rows

    def _refresh_in_background(self) -> None:
        if self._worker is not None:  # one count at a time; recount when it is done
            self._stale = True
            return
        from napari.qt.threading import create_worker

        try:
            self._groups = gather_groups(
                self.viewer.layers, include_hidden=self.include_hidden.isChecked()
            )
        except CellquantError as exc:
            self._warn(str(exc))
            return
        self._worker = create_worker(count_groups, self._groups)
        self._worker.returned.connect(self._show)
        self._worker.finished.connect(self._on_worker_done)
        self._worker.start()

    def _on_worker_done(self) -> None:
        self._worker = None
        if self._stale:
            self._stale = False
            self._timer.start()

    @property
    def busy(self) -> bool:
        """Whether a background count is running."""
        return self._worker is not None

    def _show(self, rows: list[quantify.Row]) -> None:
        self.rows = rows
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, column in enumerate(quantify.COLUMNS):
                value = row[column]
                text = (
                    ""
                    if isinstance(value, float) and math.isnan(value)
                    else (f"{value:.4g}" if isinstance(value, float) else str(value))
                )
                self.table.setItem(r, c, QTableWidgetItem(text))
        images = list(dict.fromkeys(str(row["image"]) for row in rows))
        current = self.image_combo.currentText()
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(images)
        if current in images:
            self.image_combo.setCurrentText(current)
        self.image_combo.blockSignals(False)
        self._draw_chart()
        self.status.setText(f"{len(images)} image(s) counted")

    def _draw_chart(self, *_: Any) -> None:
        image = self.image_combo.currentText()
        group = next((g for g in self._groups if g.image == image), None)
        if group is None:
            self.chart.set_bars([])
            return
        colours = dict(zip(group.class_set.names, group.class_set.colors, strict=True))
        self.chart.set_bars(
            [
                (
                    str(r["name"]),
                    float(r["before"]),
                    float(r["after"]),
                    colours.get(str(r["name"]), (160, 160, 160)),
                )
                for r in self.rows
                if r["image"] == image and r["group"] == "count" and r["name"] != "total"
            ]
        )

    # --- output ------------------------------------------------------------------------------
    def copy_to_clipboard(self) -> str:
        """Put the table on the clipboard, tab-separated; returns the text."""
        text = quantify.table_to_tsv(self.rows)
        QApplication.clipboard().setText(text)
        self.status.setText("table copied")
        return text

    def save_csv(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the table as CSV (atomically; an existing file only with ``overwrite``)."""
        target = quantify.write_count_table(self.rows, path, overwrite=overwrite)
        self.status.setText(f"saved {target}")
        return target

    def _save_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self,
            "Save counts",
            "counts.csv",
            "CSV (*.csv)",
            options=QFileDialog.DontConfirmOverwrite,  # we ask ourselves, below
        )
        if not path:
            return
        try:
            self.save_csv(path, overwrite=Path(path).exists() and self._confirm(path))
        except OutputExistsError:
            self.status.setText("not saved: the file exists")
        except CellquantError as exc:
            self._warn(str(exc))

    # --- per-object measurements -----------------------------------------------------------
    def _measure_job(self, key: str | None = None) -> dict[str, Any]:
        """What measuring the group ``key`` (default: the one in the chart) needs, gathered
        on the GUI thread: its annotation (pixels copied), its image, its pixel size."""
        key = key or self.image_combo.currentText()
        layers = {layer.name: layer for layer in self.viewer.layers}
        mine = [
            layers[n]
            for n in (key + INSTANCES_SUFFIX, key + BOXES_SUFFIX, key)
            if n in layers and isinstance(layers[n], napari.layers.Labels | napari.layers.Shapes)
        ]
        if not mine:
            raise CellquantError(f"no annotation layers named {key!r} to measure")
        (annotation,) = layers_to_annotations(mine)
        image = _image_layer_of(self.viewer.layers, key, annotation.shape)
        size = next(
            (
                s
                for s in (layer_pixel_size_um(x) for x in [*mine, image] if x is not None)
                if s is not None
            ),
            None,
        )
        pixels = (
            None if image is None else np.asarray(image.data[0] if image.multiscale else image.data)
        )
        return {
            "annotation": annotation,
            "image": pixels,
            "pixel_size_um": size,
            "labels_layer": next((x for x in mine if isinstance(x, napari.layers.Labels)), None),
        }

    def measure(self, key: str | None = None) -> list[dict[str, Any]]:
        """Measure now, on the calling thread (scripts, tests); returns the rows."""
        job = self._measure_job(key)
        from ..core.measure import measure_objects

        columns = measure_objects(
            job["annotation"], job["image"], pixel_size_um=job["pixel_size_um"]
        )
        self._measured(job, columns)
        return self.objects

    def _measured(self, job: dict[str, Any], columns: dict[str, np.ndarray]) -> None:
        from ..core.measure import object_rows

        self.objects = object_rows(columns)
        layer = job["labels_layer"]
        if layer is not None:
            _refresh_measured_features(layer, columns)
        self.status.setText(f"{len(self.objects)} object(s) measured")

    def save_objects_csv(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the last measured table (one row per object) as CSV, atomically."""
        from ..core.io.counts import write_rows_csv
        from ..core.measure import object_columns

        target = write_rows_csv(
            object_columns(self.objects), self.objects, path, overwrite=overwrite
        )
        self.status.setText(f"saved {target}")
        return target

    def _save_objects_dialog(self) -> None:
        if self._measuring is not None:
            return
        try:
            job = self._measure_job()
        except CellquantError as exc:
            self._warn(str(exc))
            return
        path, _ = QFileDialog.getSaveFileName(
            self,
            "Save objects",
            "objects.csv",
            "CSV (*.csv)",
            options=QFileDialog.DontConfirmOverwrite,
        )
        if not path:
            return
        overwrite = Path(path).exists() and self._confirm(path)
        if Path(path).exists() and not overwrite:
            self.status.setText("not saved: the file exists")
            return
        from napari.qt.threading import create_worker

        from ..core.measure import measure_objects

        self.status.setText("measuring…")
        self._measuring = create_worker(
            measure_objects, job["annotation"], job["image"], pixel_size_um=job["pixel_size_um"]
        )

        def done(columns: dict[str, np.ndarray]) -> None:
            self._measured(job, columns)
            try:
                self.save_objects_csv(path, overwrite=overwrite)
            except CellquantError as exc:
                self._warn(str(exc))

        self._measuring.returned.connect(done)
        self._measuring.errored.connect(lambda exc: self._warn(f"measuring failed: {exc}"))
        self._measuring.finished.connect(lambda: setattr(self, "_measuring", None))
        self._measuring.start()

    def _confirm(self, path: str) -> bool:
        answer = QMessageBox.question(self, "Replace file?", f"{path} exists. Replace it?")
        return answer == QMessageBox.Yes

    def _warn(self, text: str) -> None:
        self.status.setText(text)
        notify_warning(text)


def _image_layer_of(layers: Any, key: str, shape: tuple[int, int]) -> Any:
    """The Image layer an annotation group belongs to: named like it (a result is named
    ``<image> <model>``) and of its size; the longest such name wins."""
    found = [
        layer
        for layer in layers
        if isinstance(layer, napari.layers.Image)
        and (key == layer.name or key.startswith(layer.name + " "))
        and tuple(np.shape(layer.data[0] if layer.multiscale else layer.data)[:2]) == tuple(shape)
    ]
    return max(found, key=lambda layer: len(layer.name), default=None)


def _refresh_measured_features(layer: Any, columns: dict[str, np.ndarray]) -> None:
    """Put fresh measurement columns into a Labels layer's features, row by label id."""
    import pandas as pd

    table = pd.DataFrame(layer.features)
    if "index" not in table or not len(table):
        return
    n_instances = int((np.asarray(columns["origin"]) != "box").sum())
    ids = np.asarray(columns["id"])[:n_instances]
    from ..core.measure import measurements

    for name, values in measurements(columns).items():
        table[name] = table["index"].map(pd.Series(np.asarray(values)[:n_instances], index=ids))
    layer.features = table

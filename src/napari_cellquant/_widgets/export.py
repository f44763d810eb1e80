"""The Export dock widget: chosen Labels/Shapes layers to COCO, VOC, masks or CSV.

Layers become Annotations through :func:`napari_cellquant._layers.layer_data_to_annotation`
and are written by :func:`napari_cellquant.core.io.write_annotations`, the same path as
``cellquant convert``, so a file exported here reads back anywhere. Each object's origin
travels with it (COCO ``attributes.origin``), and a Labels layer's correction log (metadata
key :data:`CORRECTIONS_KEY`, kept by the Correct widget) is written beside the output as
``<destination stem>_corrections.json``.

Nothing is overwritten without asking: a first attempt refuses existing files (the writers
check every target before writing any), and only when the user agrees is it repeated with
``overwrite=True``. Writing runs in a ``thread_worker``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton, Select

from .._layers import META_CORRECTIONS, META_IMAGE_NAME, layer_data_to_annotation
from ..core.errors import OutputExistsError
from ..core.io import FORMATS
from ._docking import tab_with_plugin_docks
from ._workers import Failed, notify_error, start_soon

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

#: Labels layer metadata key of the correction log (a list of dicts), written by Correct
CORRECTIONS_KEY = META_CORRECTIONS
#: formats that write one file; the others write a folder of files
FILE_FORMATS = {"coco": "*.json", "csv": "*.csv"}


def ask_overwrite(message: str, parent: Any = None) -> bool:
    """Ask with a Qt message box whether to replace existing files (No is the default)."""
    from qtpy.QtWidgets import QMessageBox

    answer = QMessageBox.question(
        parent,
        "Replace existing files?",
        message,
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        QMessageBox.StandardButton.No,
    )
    return answer == QMessageBox.StandardButton.Yes


class ExportWidget(Container):
    """Pick layers, a format and a destination; Export writes them (asking before replacing).

    Attributes
    ----------
    confirm
        ``confirm(message) -> bool``, asked before anything is overwritten; a Qt question
        box by default (scripts and tests may replace it).
    worker
        The last thread worker started, for scripts and tests to wait on.
    written
        The files the last export wrote (empty until one succeeds).
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        tab_with_plugin_docks(self.native)
        self._viewer = viewer
        self.confirm: Callable[[str], bool] = lambda message: ask_overwrite(message, self.native)
        self.worker: Any = None
        self.written: list[Path] = []
        self._busy = False

        self.layers = Select(label="layers", choices=self._layer_choices)
        self.format = ComboBox(label="format", choices=list(FORMATS), value="coco")
        self.destination = FileEdit(label="save to", mode="w", filter=FILE_FORMATS["coco"])
        self.export_button = PushButton(text="Export")
        self.status = Label(value="")
        self.extend([self.layers, self.format, self.destination, self.export_button, self.status])
        self.format.changed.connect(self._on_format)
        self.export_button.changed.connect(self.run)
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
            event.connect(self._refresh_layers)
        self._refresh_layers()

    @property
    def busy(self) -> bool:
        """Whether an export is being written."""
        return self._busy

    def _layer_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        from napari.layers import Labels, Shapes

        return [
            (layer.name, layer)
            for layer in self._viewer.layers
            if isinstance(layer, Labels | Shapes)
        ]

    def _refresh_layers(self, event: Any = None) -> None:
        """Keep the choice when layers come and go; a new layer is chosen at once, and all of
        them at first."""
        chosen = list(self.layers.value)
        self.layers.reset_choices()
        if event is not None and event.type == "inserted":
            chosen.append(event.value)
        available = [layer for _, layer in self._layer_choices()]
        self.layers.value = [
            layer for layer in available if any(layer is c for c in chosen)
        ] or available

    def _on_format(self, fmt: str) -> None:
        if fmt in FILE_FORMATS:
            self.destination.mode = "w"
            self.destination.filter = FILE_FORMATS[fmt]
        else:
            self.destination.mode = "d"
            self.destination.filter = None

    # --- exporting ----------------------------------------------------------------------
    def run(self, *, overwrite: bool = False) -> Any:
        """Export the chosen layers; returns the thread worker (None when nothing can start).

        The worker starts on the next turn of the Qt event loop, so a caller can connect to
        its signals first (``with qtbot.waitSignal(widget.run().finished)``); when the
        export must ask before overwriting, a second worker follows and :attr:`busy` stays
        true until it ends.

        Existing files are only replaced with ``overwrite=True`` or when :attr:`confirm`
        agrees, which is asked when the first attempt finds them.
        """
        if self.busy:
            return self.worker
        layers = list(self.layers.value)
        destination = Path(self.destination.value or "")
        if not layers:
            return self._fail("choose at least one Labels or Shapes layer")
        if str(destination) in ("", "."):
            return self._fail("choose where to save")
        fmt = self.format.value
        job = {
            "layer_data": _layer_data(layers, self._viewer),
            "destination": destination,
            "fmt": fmt,
            "corrections": _corrections(layers),
            "overwrite": overwrite,
        }
        return self._start(job)

    def _start(self, job: dict[str, Any]) -> Any:
        from napari.qt.threading import create_worker

        worker = create_worker(_export, _start_thread=False, **job)
        worker.returned.connect(lambda result: self._on_returned(result, job))
        worker.finished.connect(lambda: self._on_finished(worker))
        self.worker = worker
        self.written = []
        self._busy = True
        self.export_button.enabled = False
        self.status.value = f"writing {job['fmt']} to {job['destination']}..."
        start_soon(worker)
        return worker

    def _on_returned(self, result: list[Path] | Failed, job: dict[str, Any]) -> None:
        if isinstance(result, Failed) and not isinstance(result.error, OutputExistsError):
            self._fail(f"Export failed: {result.message}")
            return
        if isinstance(result, Failed):
            exists = result.error
            question = (
                f"{exists.path} already exists. Replace it (and any other file of "
                "this export with the same name)?"
            )
            if not job["overwrite"] and self.confirm(question):
                self._start({**job, "overwrite": True})
            else:
                self.status.value = "not exported: nothing was overwritten"
            return
        self.written = list(result)
        names = ", ".join(p.name for p in self.written[:4])
        more = f" and {len(self.written) - 4} more" if len(self.written) > 4 else ""
        self.status.value = f"wrote {names}{more}"
        log.info("Export wrote %s", [str(p) for p in self.written])

    def _on_finished(self, worker: Any) -> None:
        if worker is not self.worker:  # a first attempt whose retry is now running
            return
        self._busy = False
        self.export_button.enabled = True

    def _fail(self, message: str) -> None:
        self.status.value = message
        notify_error(message)


def _layer_data(layers: Sequence[Any], viewer: Any) -> list[tuple[Any, dict[str, Any], str]]:
    """``(data, meta, type)`` of the chosen layers, Labels pixels copied (the user may paint on
    while the export runs), plus the viewer's Image layers, which size box-only images."""
    from napari.layers import Image, Labels

    tuples = []
    for layer in layers:
        data, meta, layer_type = layer.as_layer_data_tuple()
        if isinstance(layer, Labels) and isinstance(data, np.ndarray):
            data = data.copy()
        tuples.append((data, meta, layer_type))
    for layer in viewer.layers:
        if isinstance(layer, Image):
            tuples.append(layer.as_layer_data_tuple())
    return tuples


def _corrections(layers: Sequence[Any]) -> dict[str, Any]:
    """The correction logs of the chosen layers, by layer name (layers without one left out)."""
    logs = {}
    for layer in layers:
        entries = layer.metadata.get(CORRECTIONS_KEY)
        if entries:
            logs[layer.name] = {
                "image": layer.metadata.get(META_IMAGE_NAME, ""),
                "corrections": [dict(entry) for entry in entries],
            }
    return logs


def corrections_path(destination: Path) -> Path:
    """Where the correction log of an export to ``destination`` goes (beside it)."""
    return destination.with_name(f"{destination.stem or destination.name}_corrections.json")


def _export(
    *,
    layer_data: list[tuple[Any, dict[str, Any], str]],
    destination: Path,
    fmt: str,
    corrections: dict[str, Any],
    overwrite: bool,
) -> list[Path] | Failed:
    """Worker body: write the annotations and the correction log.

    Problems come back as :class:`Failed` (not raised): an existing target
    (``OutputExistsError``) so the GUI can ask before trying again, anything else to be shown
    as a notification.
    """
    from ..core.io import write_annotations
    from ..core.io.atomic import write_text_atomic

    log_path = corrections_path(destination) if corrections else None
    try:
        annotations = layer_data_to_annotation(layer_data)
        if log_path is not None and log_path.exists() and not overwrite:
            raise OutputExistsError(log_path)
        written = write_annotations(annotations, destination, to=fmt, overwrite=overwrite)
        if log_path is not None:
            record = {
                "format": "cellquant-corrections",
                "version": 1,
                "written_with": [str(p) for p in written],
                "layers": corrections,
            }
            text = json.dumps(record, indent=1, default=_json_default)
            written.append(write_text_atomic(log_path, text, overwrite=overwrite))
    except Exception as exc:  # shown to the user; the traceback goes to the log
        log.debug("Export failed", exc_info=True)
        return Failed(exc)
    return written


def _json_default(value: Any) -> Any:
    """numpy scalars and arrays in correction entries as plain JSON values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


__all__ = ["CORRECTIONS_KEY", "ExportWidget", "ask_overwrite", "corrections_path"]

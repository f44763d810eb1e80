"""Correct: fix a model's instances in a Labels layer, each edit undoable with Ctrl+Z.

The widget is a thin door (buttons, shortcuts, the class list) into
:mod:`napari_cellquant.core.editing`; :class:`._labels_editor.LabelsEditor` keeps the layer's
``features`` (one row per id: class, class_name, score, origin), its colours and its correction
log (``metadata["cellquant_corrections"]``) true to the pixels, and makes every edit one step
of napari's own undo history.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import napari
import napari.layers
import numpy as np
from magicgui.widgets import ComboBox, Container, Label, LineEdit, PushButton, SpinBox

from .._layers import (
    META_DEFAULT_CLASS,
)
from ..core import editing
from ..core.classes import CELL
from ..core.errors import CellquantError
from ._docking import tab_with_plugin_docks
from ._labels_editor import LabelsEditor
from ._results import OUTLINE_WIDTH
from ._workers import notify_warning

logger = logging.getLogger(__name__)

#: Keyboard shortcuts bound on the edited Labels layer: (key, widget method, what it does).
SHORTCUTS: tuple[tuple[str, str, str], ...] = (
    ("Shift-C", "set_class", "set the class of the object under the cursor"),
    ("Shift-M", "merge", "merge the selected label with the one under the cursor"),
    ("Shift-S", "split", "split the object under the cursor (seeds or distance watershed)"),
    ("Shift-D", "delete", "delete the object under the cursor"),
    ("Shift-R", "remove_small", "remove objects smaller than the minimum size"),
    ("Shift-H", "fill_holes", "fill holes in every object"),
    ("Shift-L", "relabel", "relabel ids 1..n"),
    ("Shift-N", "draw_new", "paint a new object with the next free id and the chosen class"),
    ("Shift-O", "toggle_outlines", "show objects as outlines (to judge splits) or filled"),
)


def _parse_ids(text: str) -> list[int]:
    """Ids typed as ``4, 9 12``."""
    parts = text.replace(",", " ").split()
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise CellquantError(f"label ids must be whole numbers, got {text!r}") from None


class CorrectWidget(Container):
    """Correct instances in the chosen Labels layer; every edit is one napari undo step.

    Shortcuts on the layer: Shift-C class, Shift-M merge, Shift-S split, Shift-D delete,
    Shift-R remove small, Shift-H fill holes, Shift-L relabel, Shift-N draw new; Ctrl+Z undo.
    "Under the cursor" is the label at the mouse position; when there is none, the selected
    label is used.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.viewer = viewer
        self.editor: LabelsEditor | None = None
        self.layer_combo = ComboBox(label="labels layer", choices=self._layer_choices)
        self.class_combo = ComboBox(label="class", choices=self._class_choices)
        self.ids_edit = LineEdit(
            label="ids",
            tooltip="Ids to merge or delete, e.g. '4, 9'. Empty: the selected "
            "label and the label under the cursor.",
        )
        self.rule_combo = ComboBox(
            label="merged class", choices=["majority", "first"], value="majority"
        )
        self.seeds_combo = ComboBox(
            label="seeds",
            nullable=True,
            choices=lambda _: [ly for ly in viewer.layers if isinstance(ly, napari.layers.Points)],
            tooltip="Points layer whose points inside the object seed the split; "
            "none: split by distance watershed",
        )
        self.min_distance_spin = SpinBox(label="seed spacing", value=7, min=1, max=500)
        self.min_size_spin = SpinBox(label="min size (px)", value=30, min=1, max=10_000_000)
        self.status_label = Label(value="")
        buttons = []
        for key, method, what in SHORTCUTS:
            button = PushButton(text=f"{method.replace('_', ' ').capitalize()}  [{key}]")
            button.tooltip = f"{what} ({key})"
            button.changed.connect(lambda _=None, m=method: self._run_safely(getattr(self, m)))
            buttons.append(button)
        super().__init__(
            widgets=[
                self.layer_combo,
                self.class_combo,
                buttons[0],
                self.ids_edit,
                self.rule_combo,
                buttons[1],
                self.seeds_combo,
                self.min_distance_spin,
                buttons[2],
                buttons[3],
                self.min_size_spin,
                buttons[4],
                *buttons[5:],
                self.status_label,
            ]
        )
        tab_with_plugin_docks(self.native)
        self.tooltip = "\n".join(f"{k}: {w}" for k, _, w in SHORTCUTS) + "\nCtrl+Z: undo"
        self.layer_combo.changed.connect(self._on_layer_chosen)
        self.class_combo.changed.connect(self._on_class_chosen)
        viewer.layers.events.inserted.connect(self.reset_choices)
        viewer.layers.events.removed.connect(self.reset_choices)
        if isinstance(viewer.layers.selection.active, napari.layers.Labels):
            self.layer_combo.value = viewer.layers.selection.active
        self._on_layer_chosen(self.layer_combo.value)

    # --- choices --------------------------------------------------------------------------
    def _layer_choices(self, _widget: Any = None) -> list[Any]:
        return [ly for ly in self.viewer.layers if isinstance(ly, napari.layers.Labels)]

    def _class_choices(self, _widget: Any = None) -> list[str]:
        return list(self.editor.class_set.names) if self.editor is not None else list(CELL.names)

    def _on_layer_chosen(self, layer: Any) -> None:
        if self.editor is not None and self.editor.layer is layer:
            return
        if self.editor is not None:
            self.editor.detach()
            for key, _, _ in SHORTCUTS:
                self.editor.layer.bind_key(key, None)
        self.editor = None
        if layer is None:
            return
        try:
            self.editor = LabelsEditor(layer, self.chosen_class_id)
        except CellquantError as exc:  # e.g. a class name outside the layer's class set
            self._warn(str(exc))
            return
        self.class_combo.reset_choices()
        default = int(layer.metadata.get(META_DEFAULT_CLASS, 1))
        if 1 <= default <= len(self.editor.class_set):
            self.class_combo.value = self.editor.class_set.name_of(default)
        for key, method, _ in SHORTCUTS:
            layer.bind_key(key, self._shortcut(method), overwrite=True)

    def _shortcut(self, method: str) -> Callable[[Any], None]:
        def on_key(_layer: Any) -> None:
            self._run_safely(getattr(self, method))

        on_key.__doc__ = dict((m, w) for _, m, w in SHORTCUTS)[method]
        return on_key

    def _on_class_chosen(self, name: str | None) -> None:
        if self.editor is not None and name:
            self.editor.layer.metadata[META_DEFAULT_CLASS] = self.chosen_class_id()
            self.editor.sync_colormap()  # painting shows the chosen class's colour

    def chosen_class_id(self) -> int:
        """Class id chosen in the combo (what new objects get)."""
        name = self.class_combo.value
        cs = self.editor.class_set if self.editor is not None else CELL
        return cs.id_of(name) if name else 1

    def _run_safely(self, action: Callable[[], Any]) -> None:
        """Run an edit from a button or shortcut; problems become a napari warning."""
        try:
            action()
        except CellquantError as exc:
            self._warn(str(exc))

    def _warn(self, text: str) -> None:
        self.status_label.value = text
        notify_warning(text)

    # --- helpers --------------------------------------------------------------------------
    def _editor(self) -> LabelsEditor:
        if self.editor is None:
            raise CellquantError("choose a Labels layer to correct")
        return self.editor

    def label_under_cursor(self) -> int:
        """Label at the mouse position, else the layer's selected label (0 when none)."""
        editor = self._editor()
        point = np.round(editor.layer.world_to_data(self.viewer.cursor.position)).astype(int)
        labels = editor.labels
        inside = point.size >= 2 and all(
            0 <= p < n for p, n in zip(point[-2:], labels.shape, strict=True)
        )
        if inside:
            value = int(labels[point[-2], point[-1]])
            if value:
                return value
        selected = int(editor.layer.selected_label)
        return selected if editor.exists(selected) else 0

    def _target(self, label_id: int | None) -> int:
        label_id = self.label_under_cursor() if label_id is None else int(label_id)
        if not label_id:
            raise CellquantError("no object under the cursor and no selected label")
        return label_id

    def _report(self, text: str) -> None:
        self.status_label.value = text
        logger.info(text)

    # --- edits (public: the buttons, shortcuts and tests call these) ------------------------
    def toggle_outlines(self) -> bool:
        """Outlines <-> filled objects on the chosen layer; returns whether outlines show."""
        layer = self._editor().layer
        layer.contour = 0 if layer.contour else OUTLINE_WIDTH
        self._report("outlines" if layer.contour else "filled objects")
        return bool(layer.contour)

    def set_class(self, class_name: str | None = None, label_id: int | None = None) -> int:
        """Give the object (under the cursor / selected) a class; returns its id afterwards."""
        editor = self._editor()
        if class_name is not None:
            self.class_combo.value = class_name
        label_id = self._target(label_id)
        new_id = editor.reclass(label_id, self.chosen_class_id())
        editor.layer.selected_label = new_id
        self._report(f"label {label_id} is now {self.class_combo.value} (id {new_id})")
        return new_id

    def merge(self, ids: Sequence[int] | None = None) -> editing.LabelEdit:
        """Merge ``ids`` (default: the typed ids, else the selected label and the label under
        the cursor) into the smallest id."""
        editor = self._editor()
        if ids is None:
            ids = _parse_ids(self.ids_edit.value) or [
                int(editor.layer.selected_label),
                self.label_under_cursor(),
            ]
        edit = editing.merge(
            editor.labels,
            ids,
            editor.classes(),
            index=editor.index,
            class_rule=self.rule_combo.value,
        )
        editor.apply(edit)
        editor.layer.selected_label = edit.event.result_ids[0]
        self._report(f"merged {edit.event.ids} into {edit.event.result_ids[0]}")
        return edit

    def split(
        self, label_id: int | None = None, seeds: np.ndarray | None = None
    ) -> editing.LabelEdit:
        """Split an object at the seeds (``(n, 2)`` data coordinates, else the seeds layer),
        or by distance watershed when there are none."""
        editor = self._editor()
        if seeds is None and self.seeds_combo.value is not None:
            points = self.seeds_combo.value
            seeds = np.array(
                [editor.layer.world_to_data(points.data_to_world(p))[-2:] for p in points.data]
            ).reshape(-1, 2)
        if label_id is None and seeds is not None and len(seeds):
            inside = [
                editor.labels[tuple(np.round(s).astype(int))]
                for s in seeds
                if np.all((np.round(s) >= 0) & (np.round(s) < editor.labels.shape))
            ]
            label_id = next((int(v) for v in inside if v), None)
        edit = editing.split(
            editor.labels,
            self._target(label_id),
            editor.classes(),
            seeds=seeds,
            min_distance=self.min_distance_spin.value,
            index=editor.index,
        )
        editor.apply(edit)
        self._report(f"split {edit.event.ids[0]} into {edit.event.result_ids}")
        return edit

    def delete(self, ids: Sequence[int] | None = None) -> editing.LabelEdit:
        """Delete objects (default: typed ids, else the one under the cursor)."""
        editor = self._editor()
        if ids is None:
            ids = _parse_ids(self.ids_edit.value) or [self._target(None)]
        edit = editing.delete(editor.labels, ids, editor.classes(), index=editor.index)
        editor.apply(edit)
        self._report(f"deleted {edit.event.ids}")
        return edit

    def remove_small(self, min_size: int | None = None) -> editing.LabelEdit:
        """Delete every object smaller than ``min_size`` pixels (default: the spin box)."""
        editor = self._editor()
        if min_size is not None:
            self.min_size_spin.value = int(min_size)
        edit = editing.remove_small(editor.labels, self.min_size_spin.value, editor.classes())
        editor.apply(edit)
        self._report(f"removed {len(edit.removed)} objects under {self.min_size_spin.value} px")
        return edit

    def fill_holes(self, ids: Sequence[int] | None = None) -> editing.LabelEdit:
        """Fill the holes of every object (or of ``ids``)."""
        editor = self._editor()
        edit = editing.fill_holes(editor.labels, ids, index=editor.index)
        editor.apply(edit)
        self._report(f"filled {edit.n_pixels} px of holes in {len(edit.event.ids)} objects")
        return edit

    def relabel(self) -> editing.LabelEdit:
        """Renumber the ids 1..n (features follow)."""
        editor = self._editor()
        edit = editing.relabel(editor.labels, editor.classes())
        editor.apply(edit)
        self._report(f"relabelled {len(edit.event.ids)} ids")
        return edit

    def draw_new(self) -> int:
        """Select the next free id and switch to paint mode; the painted object gets the
        chosen class (origin ``drawn``)."""
        editor = self._editor()
        new_id = editing.next_free_id(editor.labels, editor.index)
        editor.layer.selected_label = new_id
        editor.layer.mode = "paint"
        self._report(f"paint object {new_id} ({self.class_combo.value})")
        return new_id

    def undo(self) -> None:
        """Undo the last edit (napari's own Labels undo; features follow)."""
        self._editor().layer.undo()

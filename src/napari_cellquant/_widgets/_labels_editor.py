"""The layer side of Correct: a Labels layer's features, colours and correction log kept
true to its pixels, after the widget's edits and after napari's own paint, fill, erase, undo
and redo.

Undo: every pixel change goes through ``Labels.data_setitem`` inside ``block_history``, so
one edit is one step of napari's own undo history. napari records pixels only, so a change of
class is made a pixel change too: the object gets a fresh id with the new class, and Ctrl+Z
brings the old id back, whose row the editor remembers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._layers import (
    META_CLASS_SET,
    META_CORRECTIONS,
    META_DEFAULT_CLASS,
    as_table,
    class_rgba,
    class_set_from_metadata,
    classes_from_table,
)
from ..core import editing
from ..core.classes import CELL, ClassSet
from ..core.errors import CellquantError

if TYPE_CHECKING:
    import napari.layers

logger = logging.getLogger(__name__)

#: the features columns the editor keeps first, in order
COLUMNS = ("index", "label", "class", "class_name", "score", "origin")


class LabelsEditor:
    """Applies edits to one Labels layer and keeps its features, colours and log consistent.

    Parameters
    ----------
    layer
        The Labels layer (2-D).
    chosen_class
        Callable giving the class id new (drawn) objects get.
    """

    def __init__(self, layer: napari.layers.Labels, chosen_class: Callable[[], int]) -> None:
        self.layer = layer
        self.chosen_class = chosen_class
        self.class_set: ClassSet = (
            class_set_from_metadata(layer.metadata.get(META_CLASS_SET)) or CELL
        )
        self.index = editing.ObjectIndex(np.asarray(layer.data))
        # rows of ids that vanished (deleted, merged away, undone), restored if they come back
        self._memory: dict[int, dict[str, Any]] = {}
        # rows of other ids changed by the edit that removed an id, restored with it (merge)
        self._companions: dict[int, dict[int, dict[str, Any]]] = {}
        self._busy = False
        # footprints of napari history items whose pixels have not landed yet
        self._pending: list[tuple[editing.Region, set[int], set[int]]] = []
        self.layer.features = self._normalised_features()
        self.layer.events.paint.connect(self._on_paint)
        self.layer.events.labels_update.connect(self._flush_pending)
        self.layer.events.set_data.connect(self._on_set_data)
        self.layer.events.data.connect(self._on_data)

    def detach(self) -> None:
        """Stop following the layer."""
        for emitter, callback in (
            (self.layer.events.paint, self._on_paint),
            (self.layer.events.labels_update, self._flush_pending),
            (self.layer.events.set_data, self._on_set_data),
            (self.layer.events.data, self._on_data),
        ):
            emitter.disconnect(callback)

    # --- the features table -------------------------------------------------------------------
    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.layer.data)

    def _normalised_features(self) -> pd.DataFrame:
        table = pd.DataFrame(self.layer.features).copy()
        if "index" not in table:
            table["index"] = table["label"] if "label" in table else np.arange(len(table))
        table["index"] = table["index"].astype(np.int64)
        table["label"] = table["index"]
        # as the writers read it: a class_name (what users see and edit) wins over class
        default = int(self.layer.metadata.get(META_DEFAULT_CLASS, 1))
        table["class"] = classes_from_table(
            as_table(table), len(table), self.class_set, default, self.layer.name
        ).astype(np.int32)
        table["class_name"] = pd.Series(
            [self._name(c) for c in table["class"]], index=table.index, dtype=object
        )
        table["score"] = table["score"].astype(np.float64) if "score" in table else np.nan
        table["origin"] = table["origin"].astype(object) if "origin" in table else "file"
        table["origin"] = table["origin"].astype(object)
        table = table[list(COLUMNS) + [c for c in table.columns if c not in COLUMNS]]
        self._table = table.set_index("index", drop=False)
        self._table.index.name = None
        self._reconcile_all(set_features=False)
        return self._table.reset_index(drop=True)

    def _name(self, class_id: int) -> str:
        if 0 < int(class_id) <= len(self.class_set):
            return self.class_set.name_of(int(class_id))
        return ""

    def rows(self) -> pd.DataFrame:
        """The features table indexed by label id."""
        return self._table

    def class_of(self, label_id: int) -> int:
        return int(self._table.at[label_id, "class"]) if label_id in self._table.index else 0

    def classes(self) -> dict[int, int]:
        return dict(zip(self._table.index.tolist(), self._table["class"].tolist(), strict=True))

    def _new_row(self, label_id: int, class_id: int, origin: str) -> dict[str, Any]:
        return {
            "index": label_id,
            "label": label_id,
            "class": int(class_id),
            "class_name": self._name(class_id),
            "score": np.nan,
            "origin": origin,
        }

    def _set_row(self, label_id: int, row: dict[str, Any]) -> None:
        self._table.loc[label_id] = pd.Series(row).reindex(self._table.columns)

    def _tidy(self) -> None:
        table = self._table.sort_index()
        table["index"] = table["label"] = table.index.to_numpy(dtype=np.int64)
        table["class"] = table["class"].fillna(0).astype(np.int32)
        table["score"] = table["score"].astype(np.float64)
        self._table = table

    def _commit_table(self) -> None:
        self._tidy()
        self._busy = True
        try:
            self.layer.features = self._table.reset_index(drop=True)
        finally:
            self._busy = False
        self.sync_colormap()

    def sync_colormap(self) -> None:
        """Colour every id by its class; rebuild the colormap only when a colour is wrong.

        A rebuild makes napari re-map the whole image, so ids whose class colour equals the
        default (``None``: the chosen class) are left to the default: a new or reclassed
        object of the chosen class costs no rebuild.
        """
        current = getattr(self.layer.colormap, "color_dict", None)
        if current is None:
            return  # the user chose a random colormap: leave it
        n = len(self.class_set)
        palette = np.array([class_rgba(self.class_set, c) for c in range(n + 1)])
        ids = self._table.index.to_numpy(dtype=np.int64)
        classes = self._table["class"].to_numpy(dtype=np.int64)
        wanted = palette[np.where((classes < 0) | (classes > n), 0, classes)]
        fallback = np.asarray(class_rgba(self.class_set, self.chosen_class()))
        default = np.asarray(current.get(None, fallback))
        have = np.array([current.get(i, default) for i in ids.tolist()]).reshape(-1, 4)
        if np.allclose(have, wanted, atol=1e-3) and np.allclose(default, fallback, atol=1e-3):
            return
        self._busy = True  # the refresh this causes is not an edit
        try:
            self.layer.colormap = {
                None: tuple(fallback),
                0: (0.0, 0.0, 0.0, 0.0),
                **{i: tuple(c) for i, c in zip(ids.tolist(), wanted, strict=True)},
            }
        finally:
            self._busy = False

    def _log(self, event: editing.CorrectionEvent) -> None:
        self.layer.metadata.setdefault(META_CORRECTIONS, []).append(event.to_dict())

    def _remember(self, ids: Sequence[int], companions: dict[int, dict[str, Any]]) -> None:
        for i in ids:
            if i in self._table.index:
                self._memory[int(i)] = self._table.loc[i].to_dict()
                self._companions[int(i)] = companions

    # --- edits from the widget ----------------------------------------------------------------
    def _fit_ids(self, largest: int) -> None:
        """Widen the layer's pixels when an edit needs an id their type cannot hold.

        Results arrive as uint16 where their ids fit (napari draws those without a colour
        lookup); edits give objects new ids, so a long session may outgrow them.
        """
        data = self.layer.data
        if np.issubdtype(data.dtype, np.integer) and largest > np.iinfo(data.dtype).max:
            logger.info(
                "layer %r: ids above %d, pixels widened to int32",
                self.layer.name,
                np.iinfo(data.dtype).max,
            )
            self._busy = True
            try:
                self.layer.data = data.astype(np.int32)
            finally:
                self._busy = False

    def apply(self, edit: editing.LabelEdit, *, origin_of_new: str = "edited") -> None:
        """Write ``edit`` through ``data_setitem`` (one undo step) and update the features."""
        touched = set(edit.classes) | set(edit.origins) | set(edit.removed)
        before = {int(i): self._table.loc[i].to_dict() for i in touched if i in self._table.index}
        if edit.n_pixels:
            self._fit_ids(int(np.max(edit.values, initial=0)))
            self._busy = True
            try:
                with self.layer.block_history():
                    self.layer.data_setitem(edit.indices, edit.values)
            finally:
                self._busy = False
            self.index.update(edit.indices, edit.values)
        if edit.id_map is not None:
            # napari's undo brings the old ids back: remember every old row, restored together
            old_rows = {int(i): self._table.loc[i].to_dict() for i in self._table.index}
            self._remember(list(old_rows), old_rows)
            mapped = self._table.index.to_numpy()
            inside = mapped < len(edit.id_map)
            mapped = np.where(inside, edit.id_map[np.minimum(mapped, len(edit.id_map) - 1)], 0)
            self._table = self._table[mapped > 0].copy()
            self._table.index = mapped[mapped > 0]
            self._table["index"] = self._table["label"] = self._table.index
            self.index.rebuild(self.labels)
        self._remember(edit.removed, before)
        self._table = self._table.drop(index=[i for i in edit.removed if i in self._table.index])
        for label_id, class_id in edit.classes.items():
            if label_id in self._table.index:
                self._table.loc[label_id, "class"] = class_id
                self._table.loc[label_id, "class_name"] = self._name(class_id)
            else:
                origin = edit.origins.get(label_id, origin_of_new)
                self._set_row(label_id, self._new_row(label_id, class_id, origin))
        for label_id, origin in edit.origins.items():
            if label_id in self._table.index and origin in ("edited", "drawn"):
                if self._table.at[label_id, "origin"] != "drawn":
                    self._table.loc[label_id, "origin"] = origin
        self._commit_table()
        self._log(edit.event)

    def reclass(self, label_id: int, class_id: int) -> int:
        """Give an object a class; it moves to a fresh id so napari's undo can revert it.

        Returns the object's new id.
        """
        edit = editing.set_class(self.classes(), [label_id], class_id)
        region = self.index.region([label_id])
        if region is None or label_id not in self._table.index:
            raise CellquantError(f"label {label_id} is not in the layer")
        new_id = editing.next_free_id(self.labels, self.index)
        rows, cols = np.nonzero(self.labels[region] == label_id)
        row = self._table.loc[label_id].to_dict()
        moved = editing.LabelEdit(
            (rows + region[0].start, cols + region[1].start),
            np.full(rows.size, new_id, dtype=np.int64),  # may outgrow the layer: _fit_ids
            {new_id: class_id},
            {},
            (label_id,),
            edit.event,
        )
        edit.event.result_ids = [new_id]
        edit.event.pixels = rows.size
        self.apply(moved)
        # the object keeps its score; a hand-drawn object stays "drawn", others are "edited"
        self._table.loc[new_id, "score"] = row["score"]
        if row["origin"] == "drawn":
            self._table.loc[new_id, "origin"] = "drawn"
        self._commit_table()
        return new_id

    # --- following napari's own paint, fill, erase, undo, redo ---------------------------------
    def _on_paint(self, event: Any) -> None:
        """A napari history item was recorded: by a finished stroke (pixels written) or by a
        single paint, fill or ``data_setitem`` (pixels written just after this event)."""
        if self._busy:
            return
        region, old_ids, new_ids = _history_item_footprint(event.value, self.labels.ndim)
        if region is None:
            return
        self._pending.append((region, old_ids, new_ids))
        if _item_applied(event.value, self.labels):
            self._flush_pending()
        else:  # labels_update or set_data will flush; the timer catches refresh=False writes
            from qtpy.QtCore import QTimer

            QTimer.singleShot(0, self._flush_pending)

    def _flush_pending(self, event: Any = None) -> None:
        pending, self._pending = self._pending, []
        for region, old_ids, new_ids in pending:
            self.index.update_region(self.labels, region)
            self._reconcile_ids(old_ids | new_ids)

    def _on_set_data(self, event: Any = None) -> None:
        if self._busy:  # our own refreshes are already accounted for
            return
        if self._pending:  # the refresh of a paint whose footprint we now reconcile
            self._flush_pending()
        else:  # undo, redo, or a change made behind napari's history
            self._reconcile_all()

    def _on_data(self, event: Any = None) -> None:
        if not self._busy:
            self.index.rebuild(self.labels)
            self._reconcile_all()

    def exists(self, label_id: int) -> bool:
        region = self.index.region([label_id])
        return region is not None and bool(np.any(self.labels[region] == label_id))

    def _reconcile_ids(self, ids: set[int]) -> None:
        """Rows for ``ids`` after a paint: new ids drawn, vanished ids dropped, others edited."""
        ids.discard(0)
        present = {i for i in ids if self.exists(i)}
        added = sorted(i for i in present if i not in self._table.index)
        gone = sorted(i for i in ids - present if i in self._table.index)
        edited = sorted(i for i in present if i in self._table.index)
        self._restore_or_add(added, from_memory=False)  # painted by hand: a new object
        self._remember(gone, {})
        self._table = self._table.drop(index=gone)
        for i in edited:
            if self._table.at[i, "origin"] in ("model", "file"):
                self._table.loc[i, "origin"] = "edited"
        self._commit_table()
        if added:
            self._log(
                editing.CorrectionEvent(
                    "added", result_ids=added, classes=[self.class_of(i) for i in added]
                )
            )
        if gone:
            self._log(editing.CorrectionEvent("deleted", ids=gone))
        if edited:
            self._log(editing.CorrectionEvent("edited", ids=edited, result_ids=edited))

    def _restore_or_add(self, added: Sequence[int], *, from_memory: bool = True) -> None:
        for i in added:
            if from_memory and i in self._memory:
                self._set_row(i, self._memory.pop(i))
                for j, row in self._companions.pop(i, {}).items():
                    if j != i and j in self._table.index:
                        self._set_row(j, row)
            else:
                self._set_row(i, self._new_row(i, self.chosen_class(), "drawn"))

    def _reconcile_all(self, *, set_features: bool = True) -> None:
        """Rows == ids present, by one ``bincount`` over the image (after undo or redo)."""
        flat = self.labels.ravel()
        present = np.flatnonzero(np.bincount(flat)) if flat.size else np.zeros(0, dtype=np.int64)
        present = present[present != 0]
        rows = self._table.index.to_numpy()
        added = np.setdiff1d(present, rows).tolist()
        gone = np.setdiff1d(rows, present).tolist()
        if not added and not gone:
            return
        if any(self.index.region([i]) is None for i in added):
            self.index.rebuild(self.labels)  # pixels came from outside napari's history
        self._remember(gone, {})
        self._table = self._table.drop(index=gone)
        self._restore_or_add(added)
        if set_features:
            self._commit_table()
            self._log(editing.CorrectionEvent("reverted", ids=gone, result_ids=added))
        else:
            self._tidy()


def _item_applied(item: Sequence[Any], labels: np.ndarray) -> bool:
    """Whether the last atom of a napari history item is already in ``labels``."""
    if not len(item):
        return True
    atom = item[-1]
    if len(atom) == 4:
        slice_key, mask, _, new_value = atom
        window = labels[slice_key]
        return bool(np.all((window if mask is None else window[mask]) == new_value))
    indices, _, new_values = atom
    return bool(np.all(labels[indices] == new_values))


def _history_item_footprint(
    item: Sequence[Any], ndim: int
) -> tuple[editing.Region | None, set[int], set[int]]:
    """Region, overwritten ids and written ids of one napari Labels history item.

    An item is a list of atoms: ``(indices, old_values, new_values)`` from ``data_setitem``, or
    ``(slice_key, mask, old_values, new_label)`` from the brush, fill and polygon.
    """
    lows: list[np.ndarray] = []
    highs: list[np.ndarray] = []
    old: set[int] = set()
    new: set[int] = set()
    for atom in item:
        if len(atom) == 4:
            slice_key, _, old_values, new_value = atom
            lows.append(np.array([s.start for s in slice_key[-2:]]))
            highs.append(np.array([s.stop for s in slice_key[-2:]]))
        else:
            indices, old_values, new_value = atom
            coords = [np.asarray(a).ravel() for a in indices[-2:]]
            if not coords[0].size:
                continue
            lows.append(np.array([c.min() for c in coords]))
            highs.append(np.array([c.max() + 1 for c in coords]))
        old.update(np.unique(np.asarray(old_values)).tolist())
        new.update(np.unique(np.asarray(new_value)).tolist())
    if not lows or ndim != 2:
        return None, old, new
    low, high = np.min(lows, axis=0), np.max(highs, axis=0)
    return (slice(int(low[0]), int(high[0])), slice(int(low[1]), int(high[1]))), old, new


__all__ = ["COLUMNS", "LabelsEditor"]

"""Put a model's result into the viewer: new layers, or the old result layers replaced undoably.

Replacing keeps the layer objects (their place in the layer list, the user's opacity and
blending, the Count widget watching them). A Labels layer is replaced through napari's own
edit history (``Labels.data_setitem`` records the changed pixels, the only undo napari 0.9
has), so Ctrl+Z on the layer brings the previous result's pixels back. napari's history
holds pixels only, not the ``features`` table nor the colours, so each replacement also
remembers the tables before and after, and :class:`_FollowUndo` swaps them whenever the
layer's pixels show which of the two results it holds (one probe pixel that differs between
them: an O(1) test on each refresh). Shapes layers have no undo in napari 0.9: replaced
boxes cannot come back (tick "keep previous result" to keep both).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .._layers import LayerDataTuple

log = logging.getLogger(__name__)

#: what a Labels layer shows beside its pixels, saved and restored together
_LABELS_STATE = ("features", "colormap", "metadata")
#: replacements remembered per layer (napari's Labels keep 100 history items)
_HISTORY_LIMIT = 100
#: outline width in screen pixels when objects are shown as outlines (napari's ``contour``):
#: results start so, so touching cells of one class stay apart; Correct's Shift-O toggles it
OUTLINE_WIDTH = 2


def show_layers(
    viewer: Any,
    layer_data: Sequence[LayerDataTuple],
    *,
    replace: bool,
    prebuilt: Sequence[Any] | None = None,
    previous: Callable[[str], Any] | None = None,
) -> list[Any]:
    """Add ``layer_data`` to ``viewer``; with ``replace``, reuse the layer of that type that
    ``previous(name)`` finds (default: the layer of that name).

    Otherwise a name already in use gets napari's unique suffix (``name [1]``).
    ``prebuilt`` holds the same layers already made from ``layer_data`` (by a worker, see
    :func:`build_layers`): a layer that is added new is taken from there instead of being
    made here. Returns the layers shown, in order.
    """
    from napari.layers import Layer

    shown = []
    for index, (data, kwargs, layer_type) in enumerate(layer_data):
        name = kwargs.get("name")
        existing = None
        if replace:
            found = (
                previous(name)
                if previous is not None
                else (viewer.layers[name] if name in viewer.layers else None)
            )
            existing = None if found is None else _unwrapped(found)
        if existing is not None and _layer_type(existing) == layer_type:
            if layer_type == "labels":
                replace_labels(existing, data, kwargs)
            else:
                replace_shapes(existing, data, kwargs)
            shown.append(existing)
        else:
            layer = prebuilt[index] if prebuilt is not None else None
            if layer is None:
                layer = Layer.create(data, dict(kwargs), layer_type)
            shown.append(viewer.add_layer(layer))
    return shown


def build_layers(layer_data: Sequence[LayerDataTuple]) -> list[Any]:
    """napari layers made from ``layer_data``, outside any viewer.

    Run in a worker: making a 12-megapixel Labels layer (its features table, colours and
    first texture) takes about 0.4 s that the GUI thread then need not spend. napari layers
    hold no Qt objects until a viewer shows them, so they may be made off the GUI thread.
    """
    from napari.layers import Layer

    return [Layer.create(data, dict(kwargs), layer_type) for data, kwargs, layer_type in layer_data]


def slice_like_viewer(layers: Sequence[Any], dims: Any) -> None:
    """Slice prebuilt ``layers`` for the viewer's ``dims`` (a copy taken on the GUI thread).

    Run in the worker. napari slices a layer it adds on the GUI thread unless the layer
    already holds the slice of the viewer's dims. For a Labels layer with outlines that slice
    is napari's contour, an erosion and a dilation of the whole view: 0.2-0.4 s of the
    hand-over on a few megapixels. napari has no public call for it; ``Layer._slice_dims`` is
    what the viewer itself calls. If it is gone or fails, or the dims change before the layer
    is added, napari slices on the GUI thread as before.
    """
    for layer in layers:
        try:
            layer._slice_dims(dims)
        except Exception:  # an internal napari call: never let it cost the result
            log.debug("could not slice %r in the worker", layer.name, exc_info=True)


def replace_labels(layer: Any, labels: np.ndarray, kwargs: dict[str, Any]) -> None:
    """Replace a Labels layer's pixels (undoably where possible), features and colours."""
    old = layer.data
    undoable = (
        isinstance(old, np.ndarray)
        and old.shape == labels.shape
        and np.can_cast(np.min_scalar_type(int(labels.max(initial=0))), old.dtype)
    )
    before = {key: _copied(getattr(layer, key)) for key in _LABELS_STATE}
    if undoable:
        changed = old != labels
        if changed.any():
            indices = np.nonzero(changed)
            probe = tuple(int(axis[0]) for axis in indices)
            record = _Replacement(probe, int(old[probe]), int(labels[probe]), before, {})
            # one refresh for pixels and colours together: each refresh recomputes napari's
            # outlines over the whole view (two of them held the GUI 0.5 s on 5 megapixels)
            layer.data_setitem(indices, labels[indices], refresh=False)
            _apply(layer, kwargs)
            if "colormap" not in kwargs:  # setting a colormap refreshes the layer itself
                layer.refresh()
            record.after = {key: _copied(getattr(layer, key)) for key in _LABELS_STATE}
            _FollowUndo.of(layer).push(record)
            return
    else:
        log.info("layer %r: result replaced without undo (shape or dtype differs)", layer.name)
        layer.data = labels
    _apply(layer, kwargs)


def _apply(layer: Any, kwargs: dict[str, Any]) -> None:
    _placement(layer, kwargs)
    for key in _LABELS_STATE:
        if key in kwargs:
            setattr(layer, key, kwargs[key])


def replace_shapes(layer: Any, rectangles: list[np.ndarray], kwargs: dict[str, Any]) -> None:
    """Replace a Shapes layer's rectangles and their features, colours and text."""
    layer.selected_data = set()
    layer.data = []  # drop the old shapes first so features are not resized against them
    _placement(layer, kwargs)
    if rectangles:
        layer.add_rectangles(
            rectangles, edge_color=kwargs.get("edge_color"), face_color="transparent"
        )
    layer.features = kwargs.get("features", {})
    if "text" in kwargs:
        layer.text = kwargs["text"]
    if "metadata" in kwargs:
        layer.metadata = kwargs["metadata"]


def _placement(layer: Any, kwargs: dict[str, Any]) -> None:
    # only what changed: napari refreshes the layer (its outlines over the whole view) at
    # every assignment, even of the same scale
    for key in ("scale", "translate", "units"):
        if key in kwargs and not _same(getattr(layer, key), kwargs[key]):
            setattr(layer, key, kwargs[key])


def _same(current: Any, new: Any) -> bool:
    """Whether a layer's scale, translate or units already are ``new``."""
    try:
        return np.array_equal(np.asarray(current, dtype=float), np.asarray(new, dtype=float))
    except (TypeError, ValueError):  # units
        return [str(v) for v in current] == [str(v) for v in new]


def _copied(value: Any) -> Any:
    if hasattr(value, "model_copy"):
        # a colormap: neither napari nor our editors change one in place (they assign a new
        # one), so the object itself is the snapshot; a deep copy of 20,000 colours took
        # 0.2 s on the GUI thread at each replacement
        return value
    if hasattr(value, "copy"):
        return value.copy()
    return value


@dataclass
class _Replacement:
    """One replacement: a pixel that tells the two results apart, and their tables."""

    probe: tuple[int, ...]
    old_value: int
    new_value: int
    before: dict[str, Any]
    after: dict[str, Any]


class _FollowUndo:
    """Keeps a Labels layer's tables in step with undo/redo of replaced results."""

    _attached: ClassVar[weakref.WeakKeyDictionary[Any, _FollowUndo]] = weakref.WeakKeyDictionary()

    def __init__(self, layer: Any) -> None:
        self._layer = weakref.ref(layer)
        self.records: list[_Replacement] = []
        self.showing: dict[str, Any] | None = None
        self._busy = False
        layer.events.set_data.connect(self._on_set_data)

    @classmethod
    def of(cls, layer: Any) -> _FollowUndo:
        follower = cls._attached.get(layer)
        if follower is None:
            follower = cls._attached[layer] = cls(layer)
        return follower

    def push(self, record: _Replacement) -> None:
        self.records.append(record)
        del self.records[:-_HISTORY_LIMIT]  # napari's history forgets older edits too
        self.showing = record.after

    def _on_set_data(self, event: Any = None) -> None:
        layer = self._layer()
        if self._busy or not self.records or layer is None:
            return
        data = layer.data
        wanted = self.showing
        for record in reversed(self.records):  # newest first; older ones only if undone too
            value = int(data[record.probe])
            if value == record.new_value:
                wanted = record.after
                break
            if value == record.old_value:
                wanted = record.before
        if wanted is not self.showing and wanted is not None:
            self._busy = True
            try:
                for key in _LABELS_STATE:
                    setattr(layer, key, _copied(wanted[key]))
            finally:
                self._busy = False
            self.showing = wanted


def _unwrapped(layer: Any) -> Any:
    """The layer itself: napari hands plugin widgets a ``PublicOnlyProxy`` viewer, whose layers
    are new proxies at each access (so they cannot key the undo followers)."""
    return getattr(layer, "__wrapped__", layer)


def _layer_type(layer: Any) -> str:
    """``labels``, ``shapes``, ... as in layer data tuples."""
    return type(layer).__name__.lower()

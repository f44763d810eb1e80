"""The Segment dock widget: run a model on an image layer, off the GUI thread.

The widget only gathers choices and forwards them to :func:`napari_cellquant.core.predict`:
the model is loaded and run inside a napari ``thread_worker`` driving the
``iter_predict`` generator, whose ``(done, total)`` steps feed a napari progress bar and
give the Cancel button a place to stop. The result becomes layers through
:func:`napari_cellquant._layers.annotation_to_layer_data` and
:func:`._results.show_layers` (which replaces Segment's own previous result undoably, and
never a layer it did not make, such as the truth a sample or a file opened with).
"""

from __future__ import annotations

import dataclasses
import logging
import math
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
    LineEdit,
    PushButton,
    SpinBox,
    Widget,
)

from .._layers import (
    META_IMAGE_NAME,
    annotation_to_layer_data,
    layer_pixel_size_um,
    layer_pixels,
)
from ..core.classical import param_help
from ..core.errors import InputError
from ..core.models.card import ModelCard
from ..core.models.registry import builtin_cards, weights_status
from ..core.predict import flip_views_of, takes_flip_views
from ._docking import tab_with_plugin_docks
from ._models import UserModel, device_choices, user_models
from ._results import OUTLINE_WIDTH, build_layers, show_layers, slice_like_viewer
from ._workers import Failed, RunsOneJob, WidgetJob, notify_error

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

#: first choice of the model list
DEFAULT_MODEL = "blood-detector"


class SegmentWidget(RunsOneJob, Container):
    """Pick an image layer and a model, set its thresholds, Run; Cancel stops the run.

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
        _warm_layer_code()
        self._viewer = viewer
        # a crop classifier (wbc-types) runs inside the model that finds the cells; a model
        # without weights cannot run yet (Train offers it as a base)
        self._builtin = {
            n: c
            for n, c in builtin_cards().items()
            if c.task != "classify" and weights_status(c) != "missing"
        }

        self.image = ComboBox(label="image", choices=self._image_choices, nullable=False)
        # a model of two stains (net-area: DNA, then histone) takes the image as its first;
        # without a second layer the first stands in for it, as in training
        self.second_stain = ComboBox(
            label="second stain",
            choices=self._image_choices,
            nullable=True,
            value=None,
            tooltip="The model's second stain (net-area: histone), a layer of the same size "
            "as the image; leave empty if you have none",
        )
        self.model = ComboBox(label="model", choices=self._model_choices)
        self.load_model = FileEdit(
            label="load model...", mode="r", filter="Model card or weights (*.json *.pt *.pth)"
        )
        self.device = ComboBox(label="device", choices=device_choices())
        self.tile = SpinBox(label="tile size", min=64, max=8192, step=32, value=256)
        self.flip_views = ComboBox(
            label="flip views",
            choices=[1, 2, 4],
            value=1,
            tooltip="Mirror images of each tile the network averages its maps over: more "
            "is steadier and slower (4 = four network passes); the model's own choice is "
            "set when you pick it",
        )
        self.diameter = FloatSpinBox(
            label="diameter (px)",
            min=0.0,
            max=10_000.0,
            step=1.0,
            value=0.0,
            tooltip="Typical object diameter (a red cell, a nucleus) in pixels; "
            "0 = estimate it from the image",
        )
        # the card's settings, rebuilt when the model changes: its score thresholds in view,
        # every other parameter in the collapsed Advanced section
        self.thresholds = Container(
            label="", labels=True, tooltip="How sure the model must be to keep an object"
        )
        self.parameters = Container(label="", labels=True)
        self.show_advanced = CheckBox(
            text="advanced settings",
            value=False,
            tooltip="Tile size, a model file, and the model's "
            "internal parameters (with their units)",
        )
        self.advanced = Container(
            widgets=[self.load_model, self.tile, self.flip_views, self.parameters],
            label="",
            labels=True,
        )
        self.keep_previous = CheckBox(text="keep previous result", value=False)
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        self._job_runner = WidgetJob("Segment", self.run_button, self.cancel_button, self.status)
        self.extend(
            [
                self.image,
                self.second_stain,
                self.model,
                self.device,
                self.diameter,
                self.thresholds,
                self.keep_previous,
                Container(
                    widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False
                ),
                self.status,
                self.show_advanced,
                self.advanced,
            ]
        )
        for nested in (self.thresholds, self.advanced):
            _full_row(nested)
        self.show_advanced.changed.connect(self._toggle_advanced)
        self.advanced.native.hide()  # collapsed; hidden once in the layout, so it adds no size

        self.model.changed.connect(self._show_card)
        self.load_model.changed.connect(self._register_file)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        user_models.changed.connect(self._on_user_model)
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
            event.connect(self._refresh_images)
        self.model.value = DEFAULT_MODEL
        self._show_card()

    # --- choices ------------------------------------------------------------------------
    def _image_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        from napari.layers import Image

        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Image)]

    def _model_choices(self, _widget: Any = None) -> list[tuple[str, str]]:
        builtin = [(f"{name} ({card.kind})", name) for name, card in self._builtin.items()]
        return builtin + [(entry.label, user_models.key_of(entry)) for entry in user_models]

    def _refresh_images(self, event: Any = None) -> None:
        self.image.reset_choices()

    def _on_user_model(self, entry: UserModel) -> None:
        try:
            self.model.reset_choices()
            self.model.value = user_models.key_of(entry)
        except RuntimeError:  # this widget's Qt side was closed with its viewer
            user_models.changed.disconnect(self._on_user_model)

    def _register_file(self, path: Path) -> None:
        if not path or not Path(path).is_file():
            return
        try:
            user_models.register(path)  # selects it through _on_user_model
        except Exception as exc:  # a bad card: say which file and why, keep the widget usable
            notify_error(f"Could not load model {path}: {exc}")

    # --- the model card's settings ------------------------------------------------------
    def selected_card(self) -> ModelCard:
        """The card of the model chosen in the list."""
        value = self.model.value
        entry = user_models.get(value)
        return entry.card if entry is not None else self._builtin[value]

    def _show_card(self, *_: Any) -> None:
        card = self.selected_card()
        self.second_stain.visible = self._second_stain_wanted(card)
        self.tile.value = int(card.tile)
        self.tile.enabled = card.kind == "learned"
        # not read back from .visible: that is False while any parent is hidden
        self.flip_views.visible = takes_flip_views(card)
        if takes_flip_views(card):
            self.flip_views.value = flip_views_of(card, None)
        settings = card.postprocess if card.kind == "learned" else card.params
        help_of = LEARNED_HELP if card.kind == "learned" else param_help(card.pipeline or "")
        fractions = FRACTIONS if card.kind == "learned" else frozenset()
        self.thresholds.clear()
        self.parameters.clear()
        for name, value in settings.items():
            if name == "diameter":  # the diameter field sets it
                continue
            home = self.thresholds if name in SCORE_SETTINGS else self.parameters
            unit, text = help_of.get(name, ("", ""))
            if _is_per_class(value, card):  # one field per class: "threshold rbc" ...
                for class_name, v in zip(card.classes.names, value, strict=True):
                    field = _field_for(
                        f"{name}{PER_CLASS}{class_name}", float(v), fraction=name in fractions
                    )
                    if field is not None:
                        field.label = f"{name.replace('_', ' ')} {class_name}"
                        field.tooltip = f"{text} ({class_name})" if text else None
                        home.append(field)
                continue
            field = _field_for(name, value, fraction=name in fractions)
            if field is not None:
                if unit:
                    field.label = f"{field.label} ({unit})"
                field.tooltip = f"{text} [{unit}]" if unit else text or None
                home.append(field)
        # the description is the model list's tooltip: as a label it would widen the dock
        self.model.tooltip = card.description
        self.status.value = ""

    def _second_stain_wanted(self, card: ModelCard) -> bool:
        return card.kind == "learned" and card.input_channels == 2

    def _toggle_advanced(self, shown: bool) -> None:
        self.advanced.visible = bool(shown)

    def threshold_values(self) -> dict[str, Any]:
        """The card settings as the user set them (``postprocess`` or ``params``); per-class
        values come back as one list in class order."""
        values: dict[str, Any] = {}
        for field in [*self.thresholds, *self.parameters]:
            name, _, _ = field.name.partition(PER_CLASS)
            if PER_CLASS in field.name:
                values.setdefault(name, []).append(field.value)
            else:
                values[name] = field.value
        return values

    # --- running ------------------------------------------------------------------------
    def run(self) -> Any:
        """Start segmenting the chosen image; returns the thread worker (None on bad input).

        The worker starts on the next turn of the Qt event loop, so a caller can connect to
        its signals first (``with qtbot.waitSignal(widget.run().finished)``). The result
        layers appear when it returns; errors become notifications.
        """
        if self.busy:
            return self.worker
        try:
            job = self._job()
        except Exception as exc:
            self._job_runner.fail(str(exc))
            return None
        return self._job_runner.start(
            _segment,
            job,
            on_step=self._on_progress,
            on_result=self._show_result,
            on_aborted=lambda: self._job_runner.set_status("cancelled: no layer changed"),
            status=f"running {job['card'].name} on {job['layer_name']}...",
        )

    def _job(self) -> dict[str, Any]:
        layer = self.image.value
        if layer is None:
            raise InputError("open an image first (no Image layer in the viewer)")
        card = self.selected_card()
        kind_key = "postprocess" if card.kind == "learned" else "params"
        settings = {**getattr(card, kind_key), **self.threshold_values()}
        card = dataclasses.replace(card, **{kind_key: settings})
        entry = user_models.get(self.model.value)
        second = self.second_stain.value if self._second_stain_wanted(card) else None
        if second is not None and (layer.rgb or second.rgb):
            raise InputError("two stains are two grey layers: split a colour image first")
        if second is not None and second.data.shape[-2:] != layer.data.shape[-2:]:
            raise InputError(
                f"second stain {second.name!r} is {second.data.shape[-2:]} pixels but the "
                f"image {layer.name!r} is {layer.data.shape[-2:]}: choose a layer of the same "
                "field"
            )
        job: dict[str, Any] = {
            "image": layer.data,
            "second_stain": None
            if second is None
            else (second.data, second.multiscale, second.rgb, second.name),
            "multiscale": layer.multiscale,
            "rgb": layer.rgb,
            "layer_name": layer.name,
            "card": card,
            "source": entry.source if entry is not None else card.name,
            "loaded": entry.model if entry is not None else None,
            "device": self.device.value,
            "tile": int(self.tile.value),
            "flip_views": int(self.flip_views.value) if takes_flip_views(card) else None,
            "diameter": float(self.diameter.value) or None,
            "pixel_size_um": layer_pixel_size_um(layer),
            # the worker slices the result as the viewer will (off the GUI thread)
            "dims": self._viewer.dims.model_copy(deep=True),
        }
        # where the result goes, so the worker can build the layer data off the GUI thread
        # named after the image and the model, so a truth layer of the image keeps its name
        job["placement"] = {
            "name": f"{layer.name} {card.name}",
            "image_name": _image_name(layer),
            "scale": tuple(layer.scale[-2:]),
            "translate": tuple(layer.translate[-2:]),
            "units": tuple(str(u) for u in layer.units[-2:]),
        }
        return job

    def _on_progress(self, step: tuple[int, int]) -> None:
        done, total = step
        self._job_runner.set_status(f"step {done} of {total}")
        self._job_runner.advance(done, total)

    def _show_result(self, result: tuple[Any, list[Any], list[Any]]) -> None:
        annotation, layer_data, prebuilt = result
        layers = show_layers(
            self._viewer,
            layer_data,
            replace=not self.keep_previous.value,
            prebuilt=prebuilt,
            previous=self._previous_result,
        )
        n = len(annotation.instance_ids()) + len(annotation.boxes)
        self._job_runner.set_status(
            f"{n} objects -> {', '.join(layer.name for layer in layers)}"
            f"{_scale_text(annotation.meta)}"
        )

    def _previous_result(self, name: str) -> Any:
        """Segment's own earlier result meant to be called ``name`` (napari may have
        suffixed it), never a layer Segment did not make."""
        return next(
            (layer for layer in self._viewer.layers if layer.metadata.get(META_RESULT_OF) == name),
            None,
        )


def _segment(
    *,
    image: Any,
    multiscale: bool,
    rgb: bool,
    layer_name: str,
    second_stain: tuple[Any, bool, bool, str] | None,
    card: ModelCard,
    source: str | None,
    loaded: Any,
    device: str,
    tile: int,
    flip_views: int | None,
    diameter: float | None,
    pixel_size_um: tuple[float, float] | None,
    placement: dict[str, Any],
    dims: Any,
):
    """Worker body: load the model, yield ``iter_predict``'s steps, build the layer data.

    Returns ``(annotation, layer data tuples, the same as napari layers)``, or
    :class:`Failed` with the error (shown as a notification). The layer data (features
    table, class colours) and the layers are built here, not on the GUI thread: for tens of
    thousands of objects it takes seconds.
    """
    from ..core.predict import Model, iter_predict, load_model

    try:
        pixels = layer_pixels(image, multiscale, rgb, layer_name)
        stains = pixels
        if second_stain is not None:
            stains = np.stack([pixels, layer_pixels(*second_stain)], axis=-1)
        if loaded is not None:
            model = Model(card=card, network=loaded.network, device=loaded.device)
        else:
            model = load_model(source, device)
            model = Model(card=card, network=model.network, device=model.device)
        annotation = yield from iter_predict(
            stains,
            model,
            tile=tile,
            diameter=diameter,
            pixel_size_um=None if pixel_size_um is None else pixel_size_um[1],
            flip_views=flip_views,
        )
        annotation.image_name = placement["image_name"]
        if pixel_size_um is not None:
            annotation.meta["pixel_size_um"] = pixel_size_um
        layer_data = [
            _owned(_ready_for_napari(item))
            for item in annotation_to_layer_data(
                annotation,
                name=placement["name"],
                scale=placement["scale"],
                translate=placement["translate"],
                units=placement["units"],
                intensity_image=pixels,
            )
        ]
        prebuilt = build_layers(layer_data)
        for layer, (_, _, kind) in zip(prebuilt, layer_data, strict=True):
            if kind == "labels":  # napari takes no contour when it makes a Labels layer
                layer.contour = OUTLINE_WIDTH
        slice_like_viewer(prebuilt, dims)
    except Exception as exc:  # shown to the user; the traceback goes to the log
        log.debug("Segment failed", exc_info=True)
        return Failed(exc)
    return annotation, layer_data, prebuilt


def _scale_text(meta: dict[str, Any]) -> str:
    from ..core.scale import describe_scale

    described = describe_scale(meta)
    return f" ({described})" if described else ""


_WARM = False


def _warm_layer_code() -> None:
    """Make one tiny result layer, once per process, while the widget opens.

    The first result layer imports pandas and napari's colormap and layer code: done in the
    worker, that held the GUI thread up for 0.1-0.3 s (imports hold the interpreter lock).
    """
    global _WARM
    if _WARM:
        return
    from ..core.annotation import Annotation
    from ..core.classes import CELL

    tiny = Annotation(np.ones((2, 2), np.int32), CELL, classes={1: 1})
    build_layers([_ready_for_napari(item) for item in annotation_to_layer_data(tiny)])
    _WARM = True


#: layer metadata key of Segment's results: the name the result was given (image, model and
#: layer type); the next run replaces that layer, and only that one
META_RESULT_OF = "cellquant_segment_result"


def _owned(item: tuple[Any, dict[str, Any], str]) -> tuple[Any, dict[str, Any], str]:
    data, kwargs, layer_type = item
    metadata = {**kwargs.get("metadata", {}), META_RESULT_OF: kwargs["name"]}
    return data, {**kwargs, "metadata": metadata}, layer_type


def _ready_for_napari(item: tuple[Any, dict[str, Any], str]) -> tuple[Any, dict[str, Any], str]:
    """A Labels tuple ready for napari: uint16 pixels where the ids fit, colours as a
    ``DirectLabelColormap``, features as a DataFrame.

    napari checks every colour of a dict one by one (~40 us each) and builds the features
    table (importing pandas the first time) when a layer takes them; doing both here, in the
    worker, keeps them off the GUI thread.
    """
    data, kwargs, layer_type = item
    if layer_type != "labels":
        return item
    import pandas as pd
    from napari.utils.colormaps import DirectLabelColormap

    kwargs = dict(kwargs)
    if data.dtype.itemsize > 2 and int(data.max(initial=0)) <= np.iinfo(np.uint16).max:
        # napari draws uint8/uint16 labels as they are, but maps wider ones through the
        # colormap into a new texture at every refresh (0.1 s a time on 12 megapixels)
        data = data.astype(np.uint16)
    if isinstance(kwargs.get("colormap"), dict):
        kwargs["colormap"] = DirectLabelColormap(color_dict=kwargs["colormap"])
    if isinstance(kwargs.get("features"), dict):
        kwargs["features"] = pd.DataFrame(kwargs["features"])
    return data, kwargs, layer_type


def _full_row(nested: Container) -> None:
    """Give a nested container its whole row. magicgui labels every child of a labelled
    container, an empty label too, and that empty column beside the thresholds (87 px) made
    Segment the widest of the tabbed docks, which sets their common width."""
    # magicgui keeps no public handle on that label: if its private one goes, the empty
    # column comes back and nothing else changes
    row = getattr(nested, "_labeled_widget", lambda: None)()
    label = getattr(row, "_label_widget", None)
    if label is not None:
        label.hide()


def _image_name(layer: Any) -> str:
    """The file name the result annotates (COCO ``file_name``)."""
    if layer.metadata.get(META_IMAGE_NAME):
        return str(layer.metadata[META_IMAGE_NAME])
    path = getattr(layer.source, "path", None)
    return Path(path).name if path else layer.name


def _field_for(name: str, value: Any, *, fraction: bool = False) -> Widget | None:
    """An input for one card setting, typed by its default value; a ``fraction`` (a score
    or a share) is bounded by 1, which also keeps its field narrow."""
    label = name.replace("_", " ")
    if isinstance(value, bool):
        return CheckBox(name=name, label=label, value=value)
    if isinstance(value, int):
        return SpinBox(name=name, label=label, value=value, min=0, max=max(1_000_000, value))
    if isinstance(value, float):
        return FloatSpinBox(
            name=name,
            label=label,
            value=value,
            min=min(0.0, value),
            max=1.0 if fraction and value <= 1 else max(1e6, value),
            step=_step_for(value),
        )
    if isinstance(value, str):
        return LineEdit(name=name, label=label, value=value)
    return None  # lists and tables stay as the card has them


#: joins a setting's name and a class name in the field of a per-class setting
PER_CLASS = "__"
#: the settings a biologist sets (shown); the rest go to the Advanced section
SCORE_SETTINGS = frozenset({"threshold", "foreground_threshold"})
#: learned cards' settings that are scores or shares, 0-1
FRACTIONS = SCORE_SETTINGS | {"seed_threshold", "nested_overlap"}
#: unit and meaning of a learned card's post-processing settings (at the model's scale)
LEARNED_HELP: dict[str, tuple[str, str]] = {
    "threshold": ("", "minimum detection score, 0-1: higher keeps fewer, surer objects"),
    "foreground_threshold": ("", "minimum probability, 0-1, that a pixel belongs to an object"),
    "min_size": ("px", "objects smaller than this are dropped"),
    "max_hole": ("px", "holes up to this size inside an object are filled"),
    "min_distance": (
        "px",
        "two object centres are at least this far apart (splits touching cells)",
    ),
    "max_detections": ("", "at most this many objects per image"),
    "nested_overlap": (
        "",
        "0-1: a box more than this share inside a surer box of its class is dropped as a "
        "duplicate of that cell",
    ),
    "split": ("", "split touching objects (off: every connected region is one object)"),
}


def _is_per_class(value: Any, card: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == len(card.classes)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    )


def _step_for(value: float) -> float:
    """A spin step a tenth of the value's magnitude, so small thresholds keep their digits."""
    if value == 0:
        return 0.01
    return min(1.0, max(1e-4, 10.0 ** (math.floor(math.log10(abs(value))) - 1)))


__all__ = ["SegmentWidget"]

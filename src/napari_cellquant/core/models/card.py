"""Model cards: what a model is, what it expects and where its weights are, as plain JSON."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..classes import ClassSet, get_class_set
from ..errors import InputError
from ..io.atomic import write_text_atomic

#: ``learned`` models run a network through tiled inference; ``classical`` ones run a
#: scikit-image pipeline and need no weights.
KINDS = ("learned", "classical")
TASKS = ("instances", "boxes", "classify")


@dataclass
class WeightsSource:
    """Where a learned model's weights come from: a file (relative to the card) or a URL."""

    file: str | None = None
    url: str | None = None
    sha256: str | None = None

    @property
    def known(self) -> bool:
        return bool(self.file or self.url)


@dataclass
class ModelCard:
    """Everything needed to run a model and to judge whether it suits an image.

    Attributes
    ----------
    name
        Registry name (``blood-unet``) or a user's name for a trained model.
    kind, task
        See :data:`KINDS` and :data:`TASKS`.
    class_set
        Name of the class set of the model's outputs.
    description
        One line for model lists.
    input_channels
        Channels the network or pipeline takes; images are converted to this.
    normalization
        ``{"mode": "meanstd", "mean": [...], "std": [...]}`` on 0-255 values, or
        ``{"mode": "percentile", "low": 1, "high": 99.8}``.
    pixel_size_um
        Pixel size of the training data, when known.
    diameter_px
        Typical object diameter in the training data per class group (``{"rbc": 40}``).
    tile, overlap
        Default tiling for learned models.
    architecture
        The ``build_network`` configuration of a learned model.
    pipeline, params
        The classical pipeline's name and its parameters. A learned model's ``params`` say
        how ``predict`` runs it: ``scale_from`` (the detector that measures its scale),
        ``wbc_types`` (the classifier that names the WBCs it finds), ``edge_border`` (a
        neutral frame, in cell diameters), ``refine_scale`` (run again at its own objects'
        size) and ``class_logit_bias`` (class name -> logit added to that class, a prior
        calibrated for these weights).
    postprocess
        Thresholds and size filters turning network maps into objects.
    weights
        Where the weights are.
    training, metrics
        Provenance and held-out figures, written by training.
    """

    name: str
    kind: str
    task: str
    class_set: str
    description: str = ""
    input_channels: int = 3
    normalization: dict[str, Any] = field(
        default_factory=lambda: {"mode": "percentile", "low": 1.0, "high": 99.8}
    )
    pixel_size_um: float | None = None
    diameter_px: dict[str, float] = field(default_factory=dict)
    tile: int = 256
    overlap: float = 0.25
    architecture: dict[str, Any] = field(default_factory=dict)
    pipeline: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    postprocess: dict[str, Any] = field(default_factory=dict)
    weights: WeightsSource = field(default_factory=WeightsSource)
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    #: folder the card was read from; relative weight files resolve against it
    location: Path | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = self.location or self.name
        if self.kind not in KINDS:
            raise InputError(f"model card kind {self.kind!r} is not one of {KINDS}", source=where)
        if self.task not in TASKS:
            raise InputError(f"model card task {self.task!r} is not one of {TASKS}", source=where)
        get_class_set(self.class_set)  # fails clearly on an unknown set
        if self.kind == "classical" and not self.pipeline:
            raise InputError("a classical model card must name its pipeline", source=where)
        if self.kind == "learned" and not self.architecture:
            raise InputError("a learned model card must give its architecture", source=where)
        if isinstance(self.weights, dict):
            self.weights = WeightsSource(**self.weights)

    @property
    def classes(self) -> ClassSet:
        return get_class_set(self.class_set)

    @property
    def typical_diameter(self) -> float | None:
        """The main object diameter in pixels (first entry of ``diameter_px``)."""
        return next(iter(self.diameter_px.values()), None)

    # --- (de)serialisation --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("location")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, location: Path | None = None) -> ModelCard:
        if not isinstance(data, dict):
            raise InputError("a model card must be a JSON object", source=location)
        known = set(cls.__dataclass_fields__) - {"location"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown model card field(s): {', '.join(unknown)}", source=location)
        missing = [k for k in ("name", "kind", "task", "class_set") if k not in data]
        if missing:
            raise InputError(f"model card lacks {', '.join(missing)}", source=location)
        fields = dict(data)
        fields["weights"] = WeightsSource(**(fields.get("weights") or {}))
        try:
            return cls(**fields, location=location)
        except TypeError as exc:
            raise InputError(f"malformed model card ({exc})", source=location) from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ModelCard:
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError("model card not found", source=p) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"model card is not valid JSON ({exc})", source=p) from None
        return cls.from_dict(data, location=p.parent)

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"
        return write_text_atomic(path, text, overwrite=overwrite)

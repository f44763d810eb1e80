"""The one in-memory form of one image's objects, spoken by every reader, writer, model and
widget."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .classes import ClassSet
from .errors import InputError

#: Where an object came from; carried into napari features and COCO ``attributes``.
ORIGINS = ("model", "file", "edited", "drawn")


@dataclass(eq=False)
class Boxes:
    """Axis-aligned boxes, one row each: ``xywh`` in pixels (x = column, y = row), class, score.

    Scores are NaN where the box has none (ground truth).
    """

    xywh: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), dtype=np.float64))
    class_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))

    def __post_init__(self) -> None:
        self.xywh = np.asarray(self.xywh, dtype=np.float64).reshape(-1, 4)
        self.class_ids = np.asarray(self.class_ids, dtype=np.int32).reshape(-1)
        n = len(self.xywh)
        if self.scores is None or np.size(self.scores) == 0:
            self.scores = np.full(n, np.nan)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        if not (len(self.class_ids) == n == len(self.scores)):
            raise InputError(
                f"boxes: {n} boxes, {len(self.class_ids)} classes and {len(self.scores)} scores"
            )

    def __len__(self) -> int:
        return len(self.xywh)

    def select(self, keep: np.ndarray) -> Boxes:
        """The boxes where the boolean or integer index ``keep`` selects."""
        return Boxes(self.xywh[keep], self.class_ids[keep], self.scores[keep])

    def scaled(self, sx: float, sy: float) -> Boxes:
        """Boxes in a grid scaled by ``sx`` along x and ``sy`` along y."""
        return Boxes(self.xywh * np.array([sx, sy, sx, sy]), self.class_ids, self.scores)


@dataclass(eq=False)
class Annotation:
    """One image's objects.

    Attributes
    ----------
    labels
        ``(H, W)`` int32 instance image, 0 background, one id per object.
    class_set
        The classes the ids in ``classes`` and ``boxes`` refer to.
    classes
        Instance id -> class id (1-based in ``class_set``).
    scores
        Instance id -> confidence, for predictions; absent ids have no score.
    origins
        Instance id -> one of :data:`ORIGINS`; absent ids count as ``"file"``.
    boxes
        Box-only objects (e.g. the NET annotations), in the same pixel grid as ``labels``.
    semantic
        Optional ``(H, W)`` class id per pixel.
    image_name
        File name of the image these objects belong to (COCO ``file_name``).
    image_path
        Where that image was found, when known.
    meta
        Anything else a reader wants to keep (e.g. the size a file declared).
    """

    labels: np.ndarray
    class_set: ClassSet
    classes: dict[int, int] = field(default_factory=dict)
    scores: dict[int, float] = field(default_factory=dict)
    origins: dict[int, str] = field(default_factory=dict)
    boxes: Boxes = field(default_factory=Boxes)
    semantic: np.ndarray | None = None
    image_name: str = ""
    image_path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels)
        if labels.ndim != 2:
            raise InputError(
                f"labels must be 2-D, got shape {labels.shape}", source=self.image_name or None
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise InputError(
                f"labels must be integers, got {labels.dtype}", source=self.image_name or None
            )
        if labels.size and labels.min() < 0:
            raise InputError("labels must not be negative", source=self.image_name or None)
        self.labels = labels.astype(np.int32, copy=False)
        if self.semantic is not None and np.shape(self.semantic) != self.labels.shape:
            raise InputError(
                f"semantic map shape {np.shape(self.semantic)} differs from labels "
                f"{self.labels.shape}",
                source=self.image_name or None,
            )
        self.classes = {int(k): int(v) for k, v in self.classes.items()}
        bad = [c for c in self.classes.values() if not 1 <= c <= len(self.class_set)]
        bad += [int(c) for c in self.boxes.class_ids if not 1 <= c <= len(self.class_set)]
        if bad:
            raise InputError(
                f"class id {bad[0]} is not in class set {self.class_set.name!r} "
                f"(ids 1..{len(self.class_set)})",
                source=self.image_name or None,
            )

    # --- construction -------------------------------------------------------------------
    @classmethod
    def empty(cls, shape: tuple[int, int], class_set: ClassSet, **kwargs: Any) -> Annotation:
        """An annotation with no objects on an image of ``shape`` (rows, columns)."""
        return cls(labels=np.zeros(shape, dtype=np.int32), class_set=class_set, **kwargs)

    @classmethod
    def from_labels(
        cls, labels: np.ndarray, class_set: ClassSet, class_id: int = 1, **kwargs: Any
    ) -> Annotation:
        """Every instance of ``labels`` in one class (``class_id``) unless ``classes`` is given."""
        ann = cls(labels=labels, class_set=class_set, **kwargs)
        if not ann.classes:
            ann.classes = {int(i): class_id for i in ann.instance_ids()}
        return ann

    # --- queries ------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.labels.shape[0]), int(self.labels.shape[1]))

    def instance_ids(self) -> np.ndarray:
        """Sorted ids of the instances present in ``labels``."""
        ids = np.unique(self.labels)
        return ids[ids != 0]

    def class_of(self, instance_id: int) -> int:
        """Class id of an instance; 0 when it has none."""
        return self.classes.get(int(instance_id), 0)

    def counts(self) -> dict[str, int]:
        """Objects per class name, every class listed (instances present plus boxes)."""
        totals = np.zeros(len(self.class_set) + 1, dtype=np.int64)
        ids = self.instance_ids()
        np.add.at(totals, [self.classes.get(int(i), 0) for i in ids], 1)
        np.add.at(totals, self.boxes.class_ids, 1)
        return {name: int(totals[i + 1]) for i, name in enumerate(self.class_set.names)}

    def features(self) -> dict[str, np.ndarray]:
        """Per-instance table (napari Labels ``features``): label, class, class_name, score,
        origin."""
        ids = self.instance_ids()
        class_ids = np.array([self.classes.get(int(i), 0) for i in ids], dtype=np.int32)
        names = np.array([self.class_set.name_of(c) if c else "" for c in class_ids], dtype=object)
        scores = np.array([self.scores.get(int(i), np.nan) for i in ids], dtype=np.float64)
        origins = np.array([self.origins.get(int(i), "file") for i in ids], dtype=object)
        return {
            "label": ids.astype(np.int32),
            "class": class_ids,
            "class_name": names,
            "score": scores,
            "origin": origins,
        }

    # --- transformations ----------------------------------------------------------------
    def copy(self, **changes: Any) -> Annotation:
        """A copy with arrays and dicts duplicated and ``changes`` applied."""
        base = replace(
            self,
            labels=self.labels.copy(),
            classes=dict(self.classes),
            scores=dict(self.scores),
            origins=dict(self.origins),
            boxes=Boxes(
                self.boxes.xywh.copy(), self.boxes.class_ids.copy(), self.boxes.scores.copy()
            ),
            semantic=None if self.semantic is None else self.semantic.copy(),
            meta=dict(self.meta),
        )
        return replace(base, **changes) if changes else base

    def mapped_to(self, class_set: ClassSet, *, strict: bool = False) -> Annotation:
        """The same objects in another class set, mapped by name (``blood10`` -> ``blood3``:
        the five WBC types are ``wbc``, platelets and clumps ``platelet``, both RBC kinds
        ``rbc``). Objects whose class has no counterpart are left out, or with ``strict``
        an InputError names their classes."""
        from .training.datasets import IGNORE, class_lookup

        if class_set.name == self.class_set.name and class_set.names == self.class_set.names:
            return self
        used = sorted(set(self.classes.values()) | set(self.boxes.class_ids.tolist()))
        lookup = class_lookup(
            self.class_set, class_set, where=self.image_name or None, used=used if strict else None
        )
        classes = {i: int(lookup[c]) for i, c in self.classes.items() if lookup[c] != IGNORE}
        gone = [i for i in self.classes if i not in classes]
        labels = self.labels
        if gone:
            labels = np.where(np.isin(labels, gone), 0, labels).astype(np.int32)
        keep = lookup[self.boxes.class_ids] != IGNORE
        boxes = self.boxes.select(keep)
        boxes = Boxes(boxes.xywh, lookup[boxes.class_ids], boxes.scores)
        return self.copy(
            labels=labels,
            class_set=class_set,
            classes=classes,
            scores={i: v for i, v in self.scores.items() if i in classes},
            boxes=boxes,
            semantic=None,
        )

    def class_map(self) -> np.ndarray:
        """Class id per pixel from the instances (0 background and unclassed instances)."""
        lookup = np.zeros(int(self.labels.max(initial=0)) + 1, dtype=np.int32)
        for instance_id, class_id in self.classes.items():
            if instance_id < len(lookup):
                lookup[instance_id] = class_id
        return lookup[self.labels]

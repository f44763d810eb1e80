"""Training samples from Annotations: class mapping, normalisation, dense and box targets.

An :class:`~napari_cellquant.core.annotation.Annotation` (read by ``core.io`` from COCO, VOC,
label images, colour-coded maps, mask folders, or converted from napari layers) and its image
become one :class:`TrainingSample`: the image normalised exactly as inference normalises it
(``core.normalization.make_normalizer`` with the model card's settings), and targets in the
model's class set:

- ``classes``: class id per pixel (0 background, ``IGNORE`` where nothing is known),
- ``distance``: distance to the object's border, normalised to [0, 1] per object (the
  ``distance`` head), and ``boundary``: inner object borders (the ``boundary`` head),
- ``boxes``: boxes in the model's class ids (the CenterNet head; instances give their
  bounding boxes).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ..annotation import Annotation, Boxes
from ..classes import BLOOD10_TO_BLOOD3, ClassSet, canonical_name
from ..errors import InputError
from ..models.card import ModelCard

log = logging.getLogger(__name__)

#: class-map value for pixels that carry no label (padding, unclassed objects)
IGNORE = -1


@dataclass
class TrainingSample:
    """One image ready for training: normalised pixels and targets in the model's classes.

    Attributes
    ----------
    name
        The image's name (for logs, the card and validation reports).
    pixels
        ``(H, W, C)`` float32, normalised as inference does.
    classes
        ``(H, W)`` int64 class ids (0 background, :data:`IGNORE` unknown) or None (boxes only).
    distance
        ``(H, W)`` float32 per-object normalised distance to the border, or None.
    boundary
        ``(H, W)`` float32 1 on inner object borders, or None.
    boxes
        Boxes in the model's class ids (instances contribute their bounding boxes).
    """

    name: str
    pixels: np.ndarray
    classes: np.ndarray | None
    distance: np.ndarray | None
    boundary: np.ndarray | None
    boxes: Boxes

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.pixels.shape[0]), int(self.pixels.shape[1]))


# --- reading ----------------------------------------------------------------------------------
def load_training_pairs(
    images: str | os.PathLike[str] | None,
    annotations: str | os.PathLike[str],
    *,
    class_set: ClassSet | str | None = None,
) -> list[tuple[np.ndarray, Annotation]]:
    """Read annotations (any kind ``core.io.read_annotations`` knows) and find their images.

    Parameters
    ----------
    images
        Folder holding the images (``None``: where the annotation file says, or beside it).
    annotations
        COCO JSON, VOC XML (file or folder), label image(s), colour-coded map(s) (name
        ``class_set``) or a masks folder.
    class_set
        Class set for colour-coded maps and per-class mask folders.

    Returns
    -------
    list of (image, Annotation)
        Images as read by ``core.io.images.read_image``.

    Raises
    ------
    InputError
        No annotations, an image that cannot be found, or an image whose size differs from
        its annotation's.
    """
    from ..io import read_annotations
    from ..io.images import find_image, read_image
    from ..io.masks import check_shape_matches

    found = read_annotations(annotations, class_set=class_set, images_dir=images)
    if not found:
        raise InputError("holds no annotated images", source=annotations)
    search = [Path(images)] if images is not None else []
    search.append(Path(annotations) if Path(annotations).is_dir() else Path(annotations).parent)
    pairs = []
    for annotation in found:
        path = annotation.image_path
        if path is None or not Path(path).is_file():
            path = find_image(annotation.image_name, search)
        if path is None:
            where = ", ".join(str(d) for d in search)
            raise InputError(
                f"image {annotation.image_name!r} not found in {where} (pass --images DIR)",
                source=annotations,
            )
        image = read_image(path)
        check_shape_matches(annotation, image.shape, annotation.meta.get("source", annotations))
        annotation.image_path = Path(path)
        pairs.append((image, annotation))
    return pairs


# --- class mapping ----------------------------------------------------------------------------
def class_lookup(
    source: ClassSet,
    target: ClassSet,
    *,
    where: str | None = None,
    used: Sequence[int] | None = None,
) -> np.ndarray:
    """``lookup[source_id] = target_id`` mapping classes by name (blood10 -> blood3 too).

    Index 0 (background / no class) maps to 0. Classes of ``source`` that have no counterpart
    in ``target`` map to :data:`IGNORE`; when any of the ids in ``used`` is such a class, an
    InputError names them and the model's classes.
    """
    target_ids = {canonical_name(name): i for i, name in enumerate(target.names, start=1)}
    coarse = (
        {canonical_name(k): v for k, v in BLOOD10_TO_BLOOD3.items()}
        if target.name == "blood3"
        else {}
    )
    lookup = np.full(len(source) + 1, IGNORE, dtype=np.int64)
    lookup[0] = 0
    for class_id, name in enumerate(source.names, start=1):
        key = canonical_name(name)
        key = key if key in target_ids else coarse.get(key, key)
        if key in target_ids:
            lookup[class_id] = target_ids[key]
    if len(target) == 1 and len(source) == 1:
        lookup[1] = 1  # one class onto one class: the names need not agree
    missing = sorted({int(c) for c in (used or []) if c > 0 and lookup[int(c)] == IGNORE})
    if missing:
        names = ", ".join(source.names[c - 1] for c in missing)
        raise InputError(
            f"class(es) {names} do not map onto the model's class set "
            f"{target.name!r} ({', '.join(target.names)}); train a model with "
            "these classes or relabel them",
            source=where,
        )
    return lookup


# --- targets ----------------------------------------------------------------------------------
def distance_targets(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-object normalised distance to the border (0..1) and the inner-border mask.

    Touching objects are kept apart by their shared border, so each object's distance peaks
    at its own centre: the property the ``distance`` head uses to split touching cells.
    """
    from skimage.segmentation import find_boundaries

    labels = np.asarray(labels)
    border = find_boundaries(labels, mode="inner") & (labels > 0)
    inside = (labels > 0) & ~border
    dist = ndi.distance_transform_edt(inside).astype(np.float32) + (labels > 0)
    n = int(labels.max(initial=0))
    peak = np.zeros(n + 1, dtype=np.float32)
    if n:
        peak[1:] = ndi.maximum(dist, labels, index=np.arange(1, n + 1))
    peak[peak == 0] = 1.0
    return (dist / peak[labels]).astype(np.float32), border.astype(np.float32)


def make_sample(image: np.ndarray, annotation: Annotation, card: ModelCard) -> TrainingSample:
    """A :class:`TrainingSample` for one image and its annotation, in ``card``'s classes.

    Raises
    ------
    InputError
        Image and annotation sizes differ, classes that do not map onto the card's class set,
        or box-only annotations for a model with dense heads.
    """
    from ..normalization import channel_last_view, make_normalizer

    name = annotation.image_name or "image"
    image = np.asarray(image)
    if image.ndim not in (2, 3) or tuple(image.shape[:2]) != annotation.shape:
        raise InputError(
            f"image shape {image.shape} does not fit its annotation {annotation.shape}", source=name
        )
    target_set = card.classes
    pixels = channel_last_view(image)
    normalize = make_normalizer(pixels, card.normalization, card.input_channels)
    normalised = np.ascontiguousarray(normalize(pixels), dtype=np.float32)

    used = sorted(set(annotation.classes.values()) | set(annotation.boxes.class_ids.tolist()))
    lookup = class_lookup(annotation.class_set, target_set, where=name, used=used)
    labels = annotation.labels
    has_instances = bool(labels.any())
    heads = set(card.architecture.get("heads", ["classes"]))
    detector = card.architecture.get("detector")

    classes = distance = boundary = None
    if heads:
        if not has_instances and len(annotation.boxes):
            raise InputError(
                f"has boxes only, but model {card.name!r} segments and needs "
                "masks (label images, colour maps or COCO polygons)",
                source=name,
            )
        class_map = annotation.class_map()
        # objects without a class: the one class of a one-class model, unknown otherwise
        unclassed = (labels > 0) & (class_map == 0)
        classes = lookup[class_map]
        classes[unclassed] = 1 if len(target_set) == 1 else IGNORE
        distance, boundary = distance_targets(labels)

    boxes = Boxes()
    if detector:
        from ..postprocess import boxes_from_labels

        parts = [annotation.boxes]
        if has_instances:
            parts.append(boxes_from_labels(labels, annotation.classes))
        xywh = np.concatenate([b.xywh for b in parts])
        ids = lookup[np.concatenate([b.class_ids for b in parts]).astype(np.int64)]
        keep = ids > 0
        boxes = Boxes(xywh[keep], ids[keep])
    return TrainingSample(name, normalised, classes, distance, boundary, boxes)


def split_samples(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of training and validation images (a seeded shuffle).

    With one image, or ``val_fraction`` 0, there is no held-out image and the validation set
    is the training set (the caller says so).
    """
    if not 0 <= val_fraction < 1:
        raise InputError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(n).tolist()
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    else:
        n_val = 0
    if n_val == 0:
        return sorted(order), sorted(order)
    return sorted(order[n_val:]), sorted(order[:n_val])

"""White-cell typing: the 5-part differential from crops around the WBCs a detector found.

A detector that knows only ``wbc`` (``blood-detector``, class set ``blood3``) names its
white cells through a crop classifier (a card with task ``classify`` and class set ``wbc5``):
each WBC is cut out as a square around its box, :data:`CROP_MARGIN` times its longer side
(so the neighbouring red cells show the scale), resized to the classifier's input, and given
the most probable type. The result is in ``blood7``; counts and evaluations that meet
``blood3`` or ``blood10`` map it by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .annotation import Annotation, Boxes
from .classes import BLOOD7, WBC5
from .errors import InputError

if TYPE_CHECKING:
    import torch

    from .predict import Model

#: side of the square crop around a WBC, as a multiple of the longer side of its box
CROP_MARGIN = 1.5
#: pixels of the classifier's square input
CROP_PX = 96


def crop_around(
    image: np.ndarray, box_xywh: np.ndarray, *, size: int = CROP_PX, margin: float = CROP_MARGIN
) -> np.ndarray:
    """``(size, size, 3)`` uint8 crop centred on a box, ``margin`` times the box's longer side,
    the image continued by reflection past its edges (a WBC cut by the border keeps its
    colours). Integer images are scaled by their dtype's range, floats taken as 0-1, as
    everywhere in prediction; grey is repeated into RGB."""
    from skimage.transform import resize

    from .normalization import prepare_image

    x, y, w, h = (float(v) for v in box_xywh)
    side = max(2, int(round(margin * max(w, h, 1.0))))
    top = int(round(y + h / 2 - side / 2))
    left = int(round(x + w / 2 - side / 2))
    rows = _reflect(np.arange(top, top + side), image.shape[0])
    cols = _reflect(np.arange(left, left + side), image.shape[1])
    window = image[np.ix_(rows, cols)]
    # the window on prediction's 0-1 scale (dtype range, grey as RGB), then 0-255
    window = prepare_image(window, 3, channel_axis=-1 if window.ndim == 3 else None) * 255.0
    resized = resize(window, (size, size), order=1, anti_aliasing=side > size, preserve_range=True)
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


def _reflect(index: np.ndarray, n: int) -> np.ndarray:
    """Indices mirrored into ``0..n-1`` (numpy's ``reflect`` padding, any distance out)."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    index = np.abs(index) % period
    return np.where(index >= n, period - index, index)


#: images per forward pass of the crop classifier: on the CPU small batches stay in cache
#: (1,600 views of 96 px, folded and channels-last, 2 threads: 2.9 s in passes of 16, 4.4 s
#: in passes of 32; unfolded, 6.4 s in passes of 16 and 18.6 s in passes of 256)
VIEWS_PER_PASS = 16


def classify_crops(crops: np.ndarray, model: Model, *, dihedral: bool | None = None) -> np.ndarray:
    """Class probabilities ``(n, n_classes)`` of ``(n, size, size, 3)`` uint8 crops.

    With ``dihedral`` (default: the card's ``params.dihedral_views``) each crop is seen in its
    8 turns and mirror images and the probabilities are averaged: a cell on a slide has no up
    or left (the classifier is trained on every rotation), so the views differ only in what
    the network happens to prefer."""
    import torch

    from .inference import _prepare_network
    from .normalization import mean_std

    spec = model.card.normalization
    if spec.get("mode") != "meanstd":
        raise InputError(f"{model.card.name}: a crop classifier needs meanstd normalisation")
    mean, std = mean_std(spec)
    if dihedral is None:
        dihedral = bool(model.card.params.get("dihedral_views", False))
    if not len(crops):
        return np.zeros((0, len(model.card.classes)), np.float32)
    # BatchNorm folded and channels-last: 2.2x faster on the CPU in passes of 16
    network, was_training = _prepare_network(model.network, model.device, channels_last=True)
    per_pass = max(1, VIEWS_PER_PASS // (8 if dihedral else 1))
    out = []
    try:
        with torch.inference_mode():
            for start in range(0, len(crops), per_pass):
                batch = (crops[start : start + per_pass].astype(np.float32) / 255.0 - mean) / std
                x = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))
                x = x.to(model.device)
                views = _dihedral_views(x) if dihedral else x
                views = views.contiguous(memory_format=torch.channels_last)
                logits = network(views).float()
                probabilities = torch.softmax(logits, dim=1).unflatten(0, (-1, len(x))).mean(0)
                out.append(probabilities.cpu().numpy())
    finally:
        model.network.train(was_training)
    return np.concatenate(out)


def _dihedral_views(x: torch.Tensor) -> torch.Tensor:
    """``(n, C, s, s)`` -> ``(8 n, C, s, s)``, view by view."""
    import torch

    turns = [torch.rot90(x, k, dims=(2, 3)) for k in range(4)]
    return torch.cat(turns + [t.flip(3) for t in turns])


def type_white_cells(image: np.ndarray, annotation: Annotation, classifier: Model) -> Annotation:
    """``annotation`` (``blood3``) in ``blood7``: each ``wbc`` instance and box typed by
    ``classifier``; the type's probability is kept in ``meta["wbc_type_probability"]``."""
    card = classifier.card
    if card.task != "classify" or card.class_set != WBC5.name:
        raise InputError(f"{card.name} is not a WBC type classifier (task classify, wbc5)")
    source = annotation.class_set
    wbc = source.id_of("wbc")
    lookup = {0: 0, **{source.id_of(n): BLOOD7.id_of(n) for n in ("rbc", "platelet")}}
    regions = _instance_boxes(
        annotation.labels, [i for i, c in annotation.classes.items() if c == wbc]
    )
    instance_ids = list(regions)
    boxes = annotation.boxes
    box_rows = np.flatnonzero(boxes.class_ids == wbc)
    every = [*regions.values(), *boxes.xywh[box_rows]]
    size, margin = int(card.params["crop_px"]), float(card.params["margin"])
    cut = [crop_around(image, b, size=size, margin=margin) for b in every]
    crops = np.stack(cut) if cut else np.zeros((0, size, size, 3), np.uint8)
    probabilities = classify_crops(crops, classifier)
    types = probabilities.argmax(axis=1)
    to_blood7 = np.array([BLOOD7.id_of(n) for n in WBC5.names])
    classes = {i: lookup[c] for i, c in annotation.classes.items() if c in lookup}
    classes.update(zip(instance_ids, to_blood7[types[: len(instance_ids)]].tolist(), strict=True))
    class_ids = np.array([lookup.get(int(c), 0) for c in boxes.class_ids], dtype=np.int64)
    class_ids[box_rows] = to_blood7[types[len(instance_ids) :]]
    typed = annotation.copy(
        class_set=BLOOD7, classes=classes, boxes=Boxes(boxes.xywh, class_ids, boxes.scores)
    )
    typed.meta["wbc_type_probability"] = dict(
        zip(instance_ids, probabilities.max(axis=1)[: len(instance_ids)].round(4).tolist())
    )
    typed.meta["wbc_types_by"] = card.name
    return typed


def _instance_boxes(labels: np.ndarray, instance_ids: list[int]) -> dict[int, np.ndarray]:
    """x, y, w, h of each of the given instances that has pixels in ``labels``."""
    from scipy import ndimage as ndi

    found = ndi.find_objects(labels, max_label=max(instance_ids, default=0))
    boxes = {}
    for i in instance_ids:
        if found[i - 1] is not None:
            ys, xs = found[i - 1]
            boxes[i] = np.array([xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start], float)
    return boxes

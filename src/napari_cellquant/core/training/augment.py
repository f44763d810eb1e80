"""Random crops with augmentation, batched into torch tensors.

Geometry (one scale per batch, then the eight flips/90-degree turns per crop) is applied to
the image and every target alike; boxes follow the same transform and become CenterNet
targets afterwards (``core.postprocess.heatmap_targets``). Photometric jitter depends on the
modality: per-channel gain and offset for brightfield stains (a stain looks redder or paler
from lab to lab), a global gain, offset and Gaussian noise for fluorescence. All of it works
on whole arrays; the only Python loops run over the few crops of a batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..annotation import Boxes
from .datasets import IGNORE, TrainingSample

#: photometric jitter by modality, in normalised units
BRIGHTFIELD, FLUORESCENCE = "brightfield", "fluorescence"


@dataclass
class AugmentSettings:
    """How crops are drawn and jittered.

    Attributes
    ----------
    crop
        Crop edge in pixels (after scaling).
    scale_range
        Zoom range: a batch is cut at ``crop / scale`` pixels and resized to ``crop``.
    object_bias
        Probability that a crop is centred (with jitter) on a random object rather than at a
        uniformly random place; sparse objects are seen more often.
    balance_classes
        Centre those crops on an object of a class drawn uniformly among the classes present
        (then one of its objects), not on an object drawn uniformly: in blood smears RBCs
        outnumber platelets 30 to 1, so uniform draws would hardly ever centre a rare class.
    stand_in_channels
        Probability that a crop's channels after the first become copies of its first (a
        second stain that may be missing; see ``TrainingConfig.stand_in_channels``).
    modality
        :data:`BRIGHTFIELD` or :data:`FLUORESCENCE` photometric jitter.
    enabled
        False draws plain crops (no geometry or colour changes).
    """

    crop: int = 256
    scale_range: tuple[float, float] = (0.8, 1.25)
    object_bias: float = 0.5
    balance_classes: bool = False
    stand_in_channels: float = 0.0
    modality: str = BRIGHTFIELD
    enabled: bool = True


def _window(array: np.ndarray, top: int, left: int, size: int, fill: float) -> np.ndarray:
    """``array[top:top+size, left:left+size]`` padded with ``fill`` where it leaves the array."""
    h, w = array.shape[:2]
    out = np.full((size, size, *array.shape[2:]), fill, dtype=array.dtype)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + size, h), min(left + size, w)
    if y1 > y0 and x1 > x0:
        out[y0 - top : y1 - top, x0 - left : x1 - left] = array[y0:y1, x0:x1]
    return out


def _origin(
    sample: TrainingSample, size: int, rng: np.random.Generator, centre_on: int | None
) -> tuple[int, int]:
    """Top-left corner of a ``size`` crop: near object ``centre_on``, or anywhere (None)."""
    h, w = sample.shape
    lo_y, hi_y = min(0, h - size), max(0, h - size)
    lo_x, hi_x = min(0, w - size), max(0, w - size)
    if centre_on is not None:
        x, y, bw, bh = sample.boxes.xywh[centre_on]
        jitter = rng.uniform(-size / 4, size / 4, 2)
        top = int(round(y + bh / 2 - size / 2 + jitter[0]))
        left = int(round(x + bw / 2 - size / 2 + jitter[1]))
    else:
        top = int(rng.integers(lo_y, hi_y + 1))
        left = int(rng.integers(lo_x, hi_x + 1))
    return int(np.clip(top, lo_y, hi_y)), int(np.clip(left, lo_x, hi_x))


def dihedral_boxes(
    xywh: np.ndarray, size: int, turn: bool, flip_x: bool, flip_y: bool
) -> np.ndarray:
    """Boxes of a square ``size`` crop after ``torch.rot90(k=1)`` (if ``turn``), then flips."""
    x, y, w, h = (xywh[:, i].copy() for i in range(4))
    if turn:  # rot90 over (rows, cols): pixel (row r, col c) -> (row size-1-c, col r)
        x, y, w, h = y, size - (x + w), h, w
    if flip_x:
        x = size - (x + w)
    if flip_y:
        y = size - (y + h)
    return np.stack([x, y, w, h], axis=1)


def _dihedral(t: torch.Tensor, turn: bool, flip_x: bool, flip_y: bool) -> torch.Tensor:
    """The same transform as :func:`dihedral_boxes` on a ``(..., H, W)`` tensor."""
    if turn:
        t = torch.rot90(t, 1, dims=(-2, -1))
    if flip_x:
        t = t.flip(-1)
    if flip_y:
        t = t.flip(-2)
    return t


def _photometric(images: torch.Tensor, modality: str, generator: torch.Generator) -> torch.Tensor:
    """Stain/colour jitter (brightfield) or intensity and noise jitter (fluorescence)."""
    n, c = images.shape[:2]
    if modality == BRIGHTFIELD:
        # mild: in these units one std of the stain, and a hue shift must not turn one class
        # into another (healthy RBCs are lavender, infected ones pink)
        gain = 1 + 0.06 * torch.randn(n, c, 1, 1, generator=generator)
        offset = 0.06 * torch.randn(n, c, 1, 1, generator=generator)
        brightness = 0.08 * torch.randn(n, 1, 1, 1, generator=generator)
        return images * gain + offset + brightness
    gain = torch.exp(0.25 * torch.randn(n, 1, 1, 1, generator=generator))
    offset = 0.05 * torch.randn(n, 1, 1, 1, generator=generator)
    sigma = 0.04 * torch.rand(n, 1, 1, 1, generator=generator)
    noise = torch.randn(images.shape, generator=generator) * sigma
    return images * gain + offset + noise


def _crop_picks(
    samples: list[TrainingSample], n: int, settings: AugmentSettings, rng: np.random.Generator
) -> Iterator[tuple[int, int | None]]:
    """``n`` (sample, object to centre on or None) pairs.

    A sample is picked by area (every pixel equally likely), then, with ``object_bias``, one
    of its objects. With ``balance_classes`` the centred crops draw a class first instead,
    then one of its objects anywhere in the set.
    """
    area = np.array([s.shape[0] * s.shape[1] for s in samples], dtype=np.float64)
    chosen = rng.choice(len(samples), size=n, p=area / area.sum())
    bias = settings.object_bias if settings.enabled else 0.3
    if settings.balance_classes and settings.enabled:
        yield from _class_balanced_picks(samples, chosen, bias, rng)
        return
    for index in chosen:  # drawn crop by crop, interleaved with the crops' own draws
        found = len(samples[index].boxes)
        centred = bool(found) and rng.random() < bias
        yield int(index), int(rng.integers(found)) if centred else None


def _class_balanced_picks(
    samples: list[TrainingSample], chosen: np.ndarray, bias: float, rng: np.random.Generator
) -> list[tuple[int, int | None]]:
    owners = np.concatenate([np.full(len(s.boxes), i) for i, s in enumerate(samples)])
    if not len(owners):
        return [(int(i), None) for i in chosen]
    objects = np.concatenate([np.arange(len(s.boxes)) for s in samples])
    classes = np.concatenate([s.boxes.class_ids for s in samples])
    present, per_class = np.unique(classes, return_counts=True)
    weight = (1.0 / per_class)[np.searchsorted(present, classes)]
    drawn = rng.choice(len(owners), size=len(chosen), p=weight / weight.sum())
    centred = rng.random(len(chosen)) < bias
    return [
        (int(owners[j]), int(objects[j])) if c else (int(i), None)
        for i, j, c in zip(chosen, drawn, centred, strict=True)
    ]


def make_batch(
    samples: list[TrainingSample],
    batch_size: int,
    settings: AugmentSettings,
    rng: np.random.Generator,
    *,
    detector: dict | None = None,
) -> dict[str, torch.Tensor]:
    """Draw ``batch_size`` augmented crops from ``samples`` (CPU tensors).

    Returns
    -------
    dict
        ``image`` (B, C, S, S) float32; with dense targets ``classes`` (B, S, S) int64
        (:data:`~.datasets.IGNORE` on padding), ``distance`` and ``boundary`` (B, 1, S, S)
        and ``valid`` (B, 1, S, S) bool (inside the image); with a ``detector`` dict
        (``n_classes``, ``stride``) ``heatmap`` (B, K, h, w), ``size`` and ``offset``
        (B, 2, h, w) and ``centres`` (B, h, w) bool.
    """
    from ..postprocess import heatmap_targets

    crop = int(settings.crop)
    scale = float(rng.uniform(*settings.scale_range)) if settings.enabled else 1.0
    src = max(8, int(round(crop / scale)))
    dense = samples[0].classes is not None
    images, classes, extra, valid, boxes = [], [], [], [], []
    for index, centre_on in _crop_picks(samples, batch_size, settings, rng):
        sample = samples[index]
        top, left = _origin(sample, src, rng, centre_on)
        images.append(_window(sample.pixels, top, left, src, 0.0))
        inside = np.ones(sample.shape, dtype=np.float32)
        valid.append(_window(inside, top, left, src, 0.0))
        if dense:
            assert sample.classes is not None and sample.distance is not None
            assert sample.boundary is not None, "dense samples carry all three maps"
            classes.append(_window(sample.classes, top, left, src, IGNORE))
            extra.append(
                np.stack(
                    [
                        _window(sample.distance, top, left, src, 0.0),
                        _window(sample.boundary, top, left, src, 0.0),
                    ]
                )
            )
        xywh = sample.boxes.xywh - np.array([left, top, 0, 0])
        boxes.append(Boxes(xywh, sample.boxes.class_ids))

    image = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    masks = torch.from_numpy(np.stack(valid))[:, None]
    if dense:
        cls = torch.from_numpy(np.stack(classes))[:, None].float()
        more = torch.from_numpy(np.stack(extra))
    if src != crop:
        image = F.interpolate(
            image, size=(crop, crop), mode="bilinear", align_corners=False, antialias=src > crop
        )
        masks = F.interpolate(masks, size=(crop, crop), mode="nearest")
        if dense:
            cls = F.interpolate(cls, size=(crop, crop), mode="nearest")
            more = F.interpolate(more, size=(crop, crop), mode="nearest")
        boxes = [b.scaled(crop / src, crop / src) for b in boxes]

    if settings.enabled:
        flips = rng.random((batch_size, 3)) < 0.5
        generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
        image = torch.stack([_dihedral(image[i], *flips[i]) for i in range(batch_size)])
        masks = torch.stack([_dihedral(masks[i], *flips[i]) for i in range(batch_size)])
        if dense:
            cls = torch.stack([_dihedral(cls[i], *flips[i]) for i in range(batch_size)])
            more = torch.stack([_dihedral(more[i], *flips[i]) for i in range(batch_size)])
        boxes = [
            Boxes(dihedral_boxes(b.xywh, crop, *flips[i]), b.class_ids) for i, b in enumerate(boxes)
        ]
        image = _photometric(image, settings.modality, generator) * masks
        if settings.stand_in_channels > 0 and image.shape[1] > 1:
            # after the jitter, so the stand-in is the exact copy prediction will see
            stand_in = torch.from_numpy(rng.random(batch_size) < settings.stand_in_channels)
            image[stand_in, 1:] = image[stand_in, :1]

    batch = {"image": image.contiguous(), "valid": masks > 0.5}
    if dense:
        batch["classes"] = cls[:, 0].round().long()
        batch["distance"] = more[:, :1].contiguous()
        batch["boundary"] = more[:, 1:].contiguous()
    if detector:
        stride = int(detector["stride"])
        grid = (math.ceil(crop / stride), math.ceil(crop / stride))
        targets = [
            heatmap_targets(b, grid, int(detector["n_classes"]), stride=stride) for b in boxes
        ]
        batch["heatmap"] = torch.from_numpy(np.stack([t[0] for t in targets]))
        batch["size"] = torch.from_numpy(np.stack([t[1] for t in targets]))
        batch["offset"] = torch.from_numpy(np.stack([t[2] for t in targets]))
        batch["centres"] = torch.from_numpy(np.stack([t[3] for t in targets]))
    return batch

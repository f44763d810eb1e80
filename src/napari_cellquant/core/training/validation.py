"""Validation scores during training: the network run exactly as inference runs it.

Each validation image goes through ``core.inference.predict_maps`` (tiled, blended, BatchNorm
folded) on its already normalised pixels. Dense models score the mean IoU over classes of the
per-pixel argmax against the class targets; detectors the F1 at IoU 0.5 of the decoded boxes
(class-aware, greedy by score), the figure that counts and NET % depend on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..annotation import Boxes
from ..models.card import ModelCard
from .datasets import IGNORE, TrainingSample

DENSE_SCORE, BOX_SCORE = "mean_iou", "f1@0.5"


def score_name(card: ModelCard) -> str:
    """Name of the validation score a card's model is judged by."""
    return BOX_SCORE if card.architecture.get("detector") else DENSE_SCORE


def validation_score(
    network: nn.Module,
    card: ModelCard,
    samples: Sequence[TrainingSample],
    device: str | torch.device,
) -> float:
    """The validation score of ``network`` over ``samples`` (higher is better)."""
    from ..inference import predict_maps
    from ..postprocess import boxes_from_heatmap

    detector = card.architecture.get("detector")
    n_outputs = len(card.classes) + 1
    confusion = np.zeros((n_outputs, n_outputs), dtype=np.int64)
    tp = fp = fn = 0
    for sample in samples:
        maps = predict_maps(
            sample.pixels, network, tile=card.tile, overlap=card.overlap, device=device
        )
        if detector:
            found = boxes_from_heatmap(
                maps["heatmap"],
                maps["size"],
                maps.get("offset"),
                stride=int(detector["stride"]),
                **card.postprocess,
            )
            matched = match_boxes(found, sample.boxes, 0.5)
            tp += matched
            fp += len(found) - matched
            fn += len(sample.boxes) - matched
        else:
            predicted = maps["classes"].astype(np.int64)  # compact output: the argmax
            assert sample.classes is not None, "a dense model validates on class maps"
            keep = sample.classes != IGNORE
            pairs = sample.classes[keep] * n_outputs + predicted[keep]
            confusion += np.bincount(pairs, minlength=n_outputs**2).reshape(n_outputs, n_outputs)
    if detector:
        return float(2 * tp / max(2 * tp + fp + fn, 1))
    return mean_iou(confusion)


def mean_iou(confusion: np.ndarray) -> float:
    """Mean IoU over the classes present in truth or prediction of a confusion matrix."""
    intersection = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - intersection
    present = union > 0
    return float((intersection[present] / union[present]).mean()) if present.any() else 0.0


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``xywh`` boxes: ``(len(a), len(b))``."""
    ax0, ay0 = a[:, 0:1], a[:, 1:2]
    ax1, ay1 = ax0 + a[:, 2:3], ay0 + a[:, 3:4]
    bx0, by0 = b[:, 0], b[:, 1]
    bx1, by1 = bx0 + b[:, 2], by0 + b[:, 3]
    iw = np.clip(np.minimum(ax1, bx1) - np.maximum(ax0, bx0), 0, None)
    ih = np.clip(np.minimum(ay1, by1) - np.maximum(ay0, by0), 0, None)
    inter = iw * ih
    union = a[:, 2:3] * a[:, 3:4] + b[:, 2] * b[:, 3] - inter
    return inter / np.maximum(union, 1e-9)


def match_boxes(found: Boxes, truth: Boxes, iou: float) -> int:
    """True positives: found boxes (best score first) matched to unmatched same-class truth."""
    if not len(found) or not len(truth):
        return 0
    overlaps = box_iou(found.xywh, truth.xywh)
    overlaps[found.class_ids[:, None] != truth.class_ids[None, :]] = 0.0
    order = np.argsort(-np.nan_to_num(found.scores, nan=0.0), kind="stable")
    taken = np.zeros(len(truth), dtype=bool)
    matched = 0
    for i in order:  # loop over detections (tens), not pixels
        candidates = np.where(taken, 0.0, overlaps[i])
        j = int(np.argmax(candidates))
        if candidates[j] >= iou:
            taken[j] = True
            matched += 1
    return matched

"""Losses fit to each head of ``core.models.networks.UNet``.

- ``classes``: cross-entropy plus soft Dice, both with per-class weights (rare classes weigh
  more), ignoring pixels marked :data:`~.datasets.IGNORE`.
- ``distance``: L1 between the predicted and the per-object normalised distance map, inside
  the image, optionally weighted up where two objects touch (:func:`contact_zone`);
  ``boundary``: binary cross-entropy with the inner-border mask.
- CenterNet: the penalty-reduced focal loss on the heat map, L1 on the (log) box size and on
  the sub-cell offset at object centres, each divided by the number of objects.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .datasets import IGNORE, TrainingSample


def class_weights(samples: list[TrainingSample], n_outputs: int) -> torch.Tensor:
    """Per-class weights ``1 / sqrt(pixel frequency)``, mean 1 over the classes present.

    Classes absent from the training data weigh 1; weights are clipped to [0.1, 10] so a
    class with a handful of pixels cannot swamp the loss.
    """
    counts = np.zeros(n_outputs, dtype=np.float64)
    for sample in samples:
        if sample.classes is not None:
            values = sample.classes[sample.classes != IGNORE]
            counts += np.bincount(values.ravel(), minlength=n_outputs)[:n_outputs]
    present = counts > 0
    weights = np.ones(n_outputs, dtype=np.float64)
    if present.any():
        freq = counts[present] / counts.sum()
        w = 1.0 / np.sqrt(freq)
        weights[present] = w / w.mean()
    return torch.tensor(np.clip(weights, 0.1, 10.0), dtype=torch.float32)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted soft Dice over the classes present in ``target`` (ignored pixels left out)."""
    n_classes = logits.shape[1]
    valid = (target != IGNORE).unsqueeze(1)
    probs = torch.softmax(logits.float(), dim=1) * valid
    onehot = F.one_hot(target.clamp(min=0), n_classes).permute(0, 3, 1, 2).float() * valid
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    dice = 1 - (2 * intersection + 1.0) / (total + 1.0)
    present = onehot.sum(dims) > 0
    w = weights.to(logits.device) * present
    return (dice * w).sum() / w.sum().clamp(min=1e-6)


#: how far (pixels) the extra weight of :func:`contact_zone` reaches on each side of a
#: shared border: the valley of the distance map between two touching nuclei of 24 px
CONTACT_RADIUS = 2


def contact_zone(
    classes: torch.Tensor, boundary: torch.Tensor, radius: int = CONTACT_RADIUS
) -> torch.Tensor:
    """``(B, 1, H, W)`` 1 within ``radius`` of a border two objects share, else 0.

    A shared border is an object's border pixel with no background within ``radius``: the
    borders of lone objects touch the background (they are up to 2 px wide once a crop is
    zoomed), so only the lines between touching objects are left, less their last ``radius``
    pixels. The targets already in the batch say it, so no label image has to travel through
    augmentation.
    """
    window = 2 * radius + 1
    background = (classes == 0).unsqueeze(1).float()
    near_background = F.max_pool2d(background, window, stride=1, padding=radius)
    shared = (boundary > 0.5).float() * (1.0 - near_background)
    return F.max_pool2d(shared, window, stride=1, padding=radius)


def dense_loss(
    outputs: dict[str, torch.Tensor],
    batch: dict[str, torch.Tensor],
    weights: torch.Tensor,
    *,
    contact_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum of the dense heads' losses and each part as a float (for logs).

    ``contact_weight`` > 0 weighs the distance error ``1 + contact_weight`` times where two
    objects touch, after U-Net's weight map (Ronneberger et al. 2015): those few pixels are
    what keeps touching nuclei apart, and an unweighted mean drowns them in the background.
    """
    parts: dict[str, torch.Tensor] = {}
    if "classes" in outputs:
        logits = outputs["classes"].float()
        target = batch["classes"]
        if (target != IGNORE).any():
            parts["ce"] = F.cross_entropy(
                logits, target, weight=weights.to(logits.device), ignore_index=IGNORE
            )
            parts["dice"] = dice_loss(logits, target, weights)
    valid = batch["valid"].float()
    n_valid = valid.sum().clamp(min=1.0)
    if "distance" in outputs:
        diff = (outputs["distance"].float() - batch["distance"]).abs() * valid
        if contact_weight > 0:
            diff = diff * (1.0 + contact_weight * contact_zone(batch["classes"], batch["boundary"]))
        parts["distance"] = diff.sum() / n_valid
    if "boundary" in outputs:
        bce = F.binary_cross_entropy_with_logits(
            outputs["boundary"].float(), batch["boundary"], reduction="none"
        )
        parts["boundary"] = (bce * valid).sum() / n_valid
    return _total(parts)


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss (alpha 2, beta 4), per object."""
    logits = logits.float()
    pos = target.eq(1).float()
    log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
    p = torch.sigmoid(logits)
    pos_term = log_p * (1 - p) ** 2 * pos
    neg_term = log_not_p * p**2 * (1 - target) ** 4 * (1 - pos)
    return -(pos_term.sum() + neg_term.sum()) / pos.sum().clamp(min=1.0)


def detection_loss(
    outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], *, size_encoding: str = "log"
) -> tuple[torch.Tensor, dict[str, float]]:
    """Focal heat-map loss plus L1 size and offset losses at the object centres."""
    centres = batch["centres"].unsqueeze(1).float()
    n = centres.sum().clamp(min=1.0)
    parts = {"focal": focal_loss(outputs["heatmap"], batch["heatmap"])}
    size_target = batch["size"]
    size_weight = 1.0
    if size_encoding == "log":
        size_target = torch.log(size_target.clamp(min=1.0))
    else:
        size_weight = 0.1  # CenterNet's weight for sizes in pixels
    size_l1 = ((outputs["size"].float() - size_target).abs() * centres).sum() / n
    parts["size"] = size_weight * size_l1
    if "offset" in outputs:
        parts["offset"] = ((outputs["offset"].float() - batch["offset"]).abs() * centres).sum() / n
    return _total(parts)


def _total(parts: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    if not parts:
        raise ValueError("no loss terms: the batch holds no targets for the network's heads")
    total = torch.stack(list(parts.values())).sum()
    return total, {k: float(v.detach()) for k, v in parts.items()}

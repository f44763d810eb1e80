"""Training a crop classifier (the WBC type classifier) from labelled crops.

Crops are stored larger than the classifier's input (``CONTEXT`` times its field of view), so
that zoom, rotation by any angle and shifts are one ``grid_sample`` of the stored crop, with
real pixels where a turned window reaches past the field of view rather than padding. A batch
is drawn with probability ``count ** -balance_power`` per class (0: as the data comes, 1: every
class equally often); stain jitter (brightness, per-channel gain, saturation, gamma, noise)
stands in for other labs' stains. At the identity transform the window is exactly what
:func:`~napari_cellquant.core.wbc_types.crop_around` cuts at prediction.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..models.efficientnet import EfficientNetClassifier
from ..normalization import mean_std

#: stored crops cover this many times the classifier's field of view
CONTEXT = 1.25


@dataclass
class ClassifierRecipe:
    """How a crop classifier is trained (all fixed in advance, never chosen on held-out data)."""

    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    balance_power: float = 0.5
    zoom_range: tuple[float, float] = (0.8, 1.25)
    input_px: int = 96
    seed: int = 0
    from_imagenet: bool = True


def _sampling_weights(labels: np.ndarray, power: float) -> np.ndarray:
    counts = np.bincount(labels)
    weights = counts[labels].astype(np.float64) ** -power
    return weights / weights.sum()


def _geometric(crops: torch.Tensor, recipe: ClassifierRecipe, gen: torch.Generator) -> torch.Tensor:
    """Random zoom, rotation, flip and shift of each stored crop, to ``input_px``."""
    n = crops.shape[0]
    lo, hi = (math.log(z) for z in recipe.zoom_range)
    zoom = torch.exp(torch.empty(n).uniform_(lo, hi, generator=gen))
    angle = torch.empty(n).uniform_(0, 2 * math.pi, generator=gen)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    shift = torch.empty(n, 2).uniform_(-0.06, 0.06, generator=gen)
    scale = 1.0 / (CONTEXT * zoom)  # the window, as a share of the stored crop
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack(
        [
            torch.stack([cos * flip, -sin, shift[:, 0]], 1),
            torch.stack([sin * flip, cos, shift[:, 1]], 1),
        ],
        1,
    )
    size = recipe.input_px
    grid = F.affine_grid(theta, [n, 3, size, size], align_corners=False)
    return F.grid_sample(
        crops, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )


def _photometric(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Stain jitter of 0-1 RGB images: brightness, channel gains, saturation, gamma, noise."""
    n = images.shape[0]

    def draw(*shape: int, low: float, high: float) -> torch.Tensor:
        return torch.empty(*shape).uniform_(low, high, generator=gen)

    gain = draw(n, 1, 1, 1, low=0.85, high=1.15) * draw(n, 3, 1, 1, low=0.92, high=1.08)
    grey = images.mean(dim=1, keepdim=True)
    images = grey + (images - grey) * draw(n, 1, 1, 1, low=0.7, high=1.3)
    images = (images * gain).clamp(1e-4, 1.0) ** draw(n, 1, 1, 1, low=0.8, high=1.25)
    noise = torch.randn(images.shape, generator=gen) * draw(n, 1, 1, 1, low=0.0, high=0.03)
    return (images + noise).clamp(0.0, 1.0)


def train_crop_classifier(
    crops: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    normalization: dict,
    recipe: ClassifierRecipe,
    *,
    progress: Callable[[int, int, float], None] | None = None,
) -> torch.nn.Module:
    """An ``efficientnet-classifier`` trained on ``(n, s, s, 3)`` uint8 ``crops`` (stored at
    ``CONTEXT`` times the field of view) with ``labels`` ``0..n_classes-1``; returned in eval
    mode on the CPU. ``progress(epoch, epochs, mean loss)`` after each epoch."""
    if crops.ndim != 4 or crops.shape[-1] != 3 or len(crops) != len(labels) or not len(crops):
        raise InputError(f"expected (n, s, s, 3) crops with one label each; got {crops.shape}")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise InputError(f"labels must be 0..{n_classes - 1}, got {labels.min()}..{labels.max()}")
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    network = EfficientNetClassifier({"type": "efficientnet-classifier", "n_classes": n_classes})
    if recipe.from_imagenet:
        network.load_pretrained_encoder()
    optimizer = torch.optim.AdamW(
        network.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay
    )
    steps_per_epoch = max(1, len(crops) // recipe.batch_size)
    total = recipe.epochs * steps_per_epoch
    warmup = steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s / total, 1.0))),
    )
    mean, std = (torch.from_numpy(v).reshape(1, 3, 1, 1) for v in mean_std(normalization))
    weights = _sampling_weights(labels, recipe.balance_power)
    stored = torch.from_numpy(np.ascontiguousarray(crops.transpose(0, 3, 1, 2)))
    targets = torch.from_numpy(labels.astype(np.int64))
    network.train()
    for epoch in range(recipe.epochs):
        losses = []
        for _ in range(steps_per_epoch):
            picks = torch.from_numpy(rng.choice(len(crops), recipe.batch_size, p=weights))
            images = _geometric(stored[picks].float() / 255.0, recipe, gen)
            images = (_photometric(images, gen) - mean) / std
            loss = F.cross_entropy(
                network(images), targets[picks], label_smoothing=recipe.label_smoothing
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        if progress is not None:
            progress(epoch + 1, recipe.epochs, float(np.mean(losses)))
    return network.eval()

"""Input normalisation as a model card describes it, applied band by band.

Statistics come from a strided sample of the whole image, and the conversion itself runs on
each band of rows as the tiled engine reads it, so a 20000 x 20000 scan never exists as a
float copy in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .errors import InputError

Normalizer = Callable[[np.ndarray], np.ndarray]

#: pixels sampled for percentile statistics (a strided grid, not random: reproducible)
_SAMPLE_PIXELS = 1_000_000


def channel_last_view(image: np.ndarray) -> np.ndarray:
    """``(H, W, C)`` view of a grey, channel-last or channel-first image (no copy)."""
    if image.ndim == 2:
        return image[:, :, None]
    if image.ndim == 3 and image.shape[-1] > 4 and image.shape[0] <= 4:
        return np.moveaxis(image, 0, -1)
    return image


def mean_std(spec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """A ``meanstd`` spec's mean and std on the 0-1 scale (they are given on 0..``range``)."""
    value_range = float(spec.get("range", 1.0))
    mean = np.asarray(spec["mean"], dtype=np.float32) / value_range
    return mean, np.asarray(spec["std"], dtype=np.float32) / value_range


def make_normalizer(image: np.ndarray, spec: dict[str, Any], in_channels: int) -> Normalizer:
    """A function turning bands of ``image`` (channel-last) into normalised float32 bands.

    ``{"mode": "meanstd", "mean": [...], "std": [...], "range": 255}``: mean and std are
    given on a 0..``range`` scale (the blood U-Net's training statistics are 0-255 values)
    and applied to the image scaled to 0-1 by its dtype, then to that range.
    ``{"mode": "percentile", "low": 1, "high": 99.8}`` maps each channel's percentiles to 0
    and 1, which makes 8- and 16-bit fluorescence look alike. ``{"mode": "none"}`` keeps the
    0-1 scaled values.
    """
    from .inference import prepare_image

    mode = spec.get("mode", "percentile")
    if mode == "meanstd":
        mean, std = mean_std(spec)
        if mean.size not in (1, in_channels) or std.size != mean.size:
            raise InputError(
                f"normalisation has {mean.size} means and {std.size} stds "
                f"for {in_channels} channels"
            )
        offset, scale = mean, 1.0 / np.maximum(std, 1e-6)
    elif mode == "percentile":
        step = max(1, int(np.sqrt(image.shape[0] * image.shape[1] / _SAMPLE_PIXELS)))
        sample = prepare_image(image[::step, ::step], in_channels).reshape(-1, in_channels)
        low = np.percentile(sample, spec.get("low", 1.0), axis=0).astype(np.float32)
        high = np.percentile(sample, spec.get("high", 99.8), axis=0).astype(np.float32)
        offset, scale = low, 1.0 / np.maximum(high - low, 1e-6)
    elif mode == "none":
        offset, scale = np.zeros(1, np.float32), np.ones(1, np.float32)
    else:
        raise InputError(f"unknown normalisation mode {mode!r}")

    def normalize_band(band: np.ndarray) -> np.ndarray:
        pixels = prepare_image(band, in_channels, channel_axis=-1)
        pixels -= offset
        pixels *= scale
        return pixels

    return normalize_band

"""Input normalisation as a model card describes it."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InputError


def normalize(pixels: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """Normalise a channel-last float image as ``spec`` says; returns float32.

    ``{"mode": "meanstd", "mean": [...], "std": [...]}`` works on 0-255 values (the blood
    U-Net's training statistics); ``{"mode": "percentile", "low": 1, "high": 99.8}`` maps each
    channel's percentiles to 0 and 1, which makes 8- and 16-bit fluorescence look alike.
    """
    mode = spec.get("mode", "percentile")
    data = np.asarray(pixels, dtype=np.float32)
    if data.ndim == 2:
        data = data[..., None]
    if mode == "meanstd":
        mean = np.asarray(spec["mean"], dtype=np.float32)
        std = np.asarray(spec["std"], dtype=np.float32)
        if mean.size not in (1, data.shape[-1]):
            raise InputError(None, f"normalisation has {mean.size} means for {data.shape[-1]} channels")
        return (data - mean) / std
    if mode == "percentile":
        # Percentiles on a strided sample: exact enough and O(1) in the image size.
        step = max(1, int(np.sqrt(data.shape[0] * data.shape[1] / 1_000_000)))
        sample = data[::step, ::step].reshape(-1, data.shape[-1])
        low = np.percentile(sample, spec.get("low", 1.0), axis=0)
        high = np.percentile(sample, spec.get("high", 99.8), axis=0)
        return (data - low) / np.maximum(high - low, 1e-6)
    if mode == "none":
        return data
    raise InputError(None, f"unknown normalisation mode {mode!r}")

"""Pixel preparation: the channel layout, grey <-> RGB, dtype scaling, and the input
normalisation a model card describes, applied band by band.

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


# ITU-R BT.601 luma weights: what "convert to grey" means in skimage and PIL.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def prepare_image(
    image: np.ndarray, in_channels: int, channel_axis: int | None = None
) -> np.ndarray:
    """Convert an image to the ``(H, W, in_channels)`` float32 layout a network expects.

    Parameters
    ----------
    image
        2-D grey, or 3-D with channels first or last (RGB, RGBA, one-channel). Integer images
        are scaled by their dtype's maximum (uint8 / 255, uint16 / 65535) to [0, 1]; floats are
        kept as they are; booleans become 0/1.
    in_channels
        Channels the network wants. RGBA drops alpha; RGB is one grey stain (luminance) to a
        network of 1 or 2 channels; one channel is repeated into as many as it wants (a
        missing second stain stands in as the first: see ``TrainingConfig.stand_in_channels``).
    channel_axis
        Axis holding channels for a 3-D image. ``None`` guesses as :func:`channel_last_view`
        does: the last axis when it has at most 4 entries, else the first.

    Returns
    -------
    np.ndarray
        C-contiguous float32 ``(H, W, in_channels)``. This converts the whole image; for huge
        images pass a ``normalize`` callable to :func:`predict_maps` instead.

    Raises
    ------
    InputError
        For images that are not 2-D/3-D, whose channel axis cannot be told, or whose channel count
        cannot be converted to ``in_channels``.
    """
    arr = np.asarray(image)
    if arr.ndim not in (2, 3):
        raise InputError(f"expected a 2-D or 3-D image, got shape {arr.shape}")
    if arr.ndim == 3 and channel_axis is not None:
        if not -3 <= channel_axis < 3:
            raise InputError(f"channel_axis {channel_axis} is out of range for shape {arr.shape}")
        arr = np.moveaxis(arr, channel_axis, -1)
    elif arr.ndim == 3 and min(arr.shape[0], arr.shape[-1]) > 4:
        raise InputError(
            f"image of shape {arr.shape}: cannot tell which axis holds channels; pass channel_axis"
        )
    else:
        arr = channel_last_view(arr)
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"image of shape {arr.shape} is empty")

    if arr.dtype == bool:
        arr = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.float32) / np.float32(np.iinfo(arr.dtype).max)
    elif np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32, copy=False)
    else:
        raise InputError(f"unsupported image dtype {arr.dtype}")

    c = arr.shape[-1]
    if c == 4 and in_channels != 4:
        arr, c = arr[..., :3], 3  # RGBA: alpha carries no stain information
    if c == 3 and in_channels < 3:
        arr, c = (arr @ _LUMA)[..., None], 1
    if c != in_channels:
        if c == 1:
            arr = np.repeat(arr, in_channels, axis=-1)
        else:
            raise InputError(f"image has {c} channel(s) but the network expects {in_channels}")
    return np.ascontiguousarray(arr, dtype=np.float32)


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


def _offset_and_scale(
    image: np.ndarray, spec: dict[str, Any], in_channels: int
) -> tuple[np.ndarray, np.ndarray]:
    """What :func:`make_normalizer` subtracts from and multiplies the 0-1 values by."""
    mode = spec.get("mode", "percentile")
    if mode == "meanstd":
        mean, std = mean_std(spec)
        if mean.size not in (1, in_channels) or std.size != mean.size:
            raise InputError(
                f"normalisation has {mean.size} means and {std.size} stds "
                f"for {in_channels} channels"
            )
        return mean, 1.0 / np.maximum(std, 1e-6)
    if mode == "percentile":
        step = max(1, int(np.sqrt(image.shape[0] * image.shape[1] / _SAMPLE_PIXELS)))
        sample = prepare_image(image[::step, ::step], in_channels).reshape(-1, in_channels)
        low = np.percentile(sample, spec.get("low", 1.0), axis=0).astype(np.float32)
        high = np.percentile(sample, spec.get("high", 99.8), axis=0).astype(np.float32)
        return low, 1.0 / np.maximum(high - low, 1e-6)
    if mode == "none":
        return np.zeros(1, np.float32), np.ones(1, np.float32)
    raise InputError(f"unknown normalisation mode {mode!r}")


def neutral_pixel(image: np.ndarray, spec: dict[str, Any], in_channels: int) -> np.ndarray:
    """The pixel of ``image``'s dtype and channels that normalises to 0 (the mean colour for
    ``meanstd``): what a network trained with zero padding sees beyond an image's edge."""
    offset, _ = _offset_and_scale(image, spec, in_channels)
    channels = channel_last_view(image).shape[-1]
    value = offset if offset.size == channels else np.full(channels, offset.mean())
    if np.issubdtype(image.dtype, np.integer):
        top = np.iinfo(image.dtype).max
        return np.clip(np.rint(value * top), 0, top).astype(image.dtype)
    return value.astype(image.dtype)


def make_normalizer(image: np.ndarray, spec: dict[str, Any], in_channels: int) -> Normalizer:
    """A function turning bands of ``image`` (channel-last) into normalised float32 bands.

    ``{"mode": "meanstd", "mean": [...], "std": [...], "range": 255}``: mean and std are
    given on a 0..``range`` scale (the blood U-Net's training statistics are 0-255 values)
    and applied to the image scaled to 0-1 by its dtype, then to that range.
    ``{"mode": "percentile", "low": 1, "high": 99.8}`` maps each channel's percentiles to 0
    and 1, which makes 8- and 16-bit fluorescence look alike. ``{"mode": "none"}`` keeps the
    0-1 scaled values.
    """
    offset, scale = _offset_and_scale(image, spec, in_channels)

    def normalize_band(band: np.ndarray) -> np.ndarray:
        pixels = prepare_image(band, in_channels, channel_axis=-1)
        pixels -= offset
        pixels *= scale
        return pixels

    return normalize_band

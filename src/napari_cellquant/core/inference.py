"""Tiled network inference on 2-D images of any size: device choice, blending, batching, AMP.

The image is cut into overlapping tiles (the same placement as MONAI's sliding-window
inference: regular steps of ``tile * (1 - overlap)``, the last tile flush with the border).
Each tile's activated outputs are weighted by a smooth window (Gaussian by default, MONAI's
``sigma = 0.125 * tile``, see :func:`blend_window`) and summed; the sum is divided by the summed
weights, so there are no seams and the result hardly depends on where tile borders fall: the
network's zero-padding artefacts at tile edges get ~1e-3 of the weight of the overlapping tile.

Memory is bounded by one band of tile rows, not by the image
----------------------------------------------------------------
Tiles are processed one *tile row* (band) at a time. A band accumulator holds float32 blended
sums only for the ``tile`` image rows the current tile row covers; rows that no later tile can
touch (those above the next tile row's start) are then divided by the summed weights, reduced
to compact outputs and written out, and the unfinished overlap rows are shifted up. For an
image of width ``W``, ``C`` output channels at stride ``s``, tile ``t`` and batch ``B``:

* band accumulator: ``C * t * W / s**2 * 4`` bytes, plus ``t * W / s**2 * 4`` for the weights
  (blood-unet, 11 channels, W = 20000, t = 256: 225 MB + 20 MB);
* input band: ``t * W * C_in * 4`` bytes (61 MB for RGB at W = 20000);
* network activations: proportional to ``B * t**2`` only;
* compact full-size outputs (the result itself): per pixel 1 byte for the class argmax,
  2 (float16) for the class confidence, 2 for the foreground probability and 2 per channel of
  every other head; stride-s detection heads 2 bytes per channel per output cell.
  Blood-unet at 20000 x 20000: 7 bytes/pixel = 2.8 GB. Above ``memmap_above`` bytes these are
  written band by band with plain file writes into anonymous temporary files and returned as
  ``np.memmap`` arrays, so the resident memory of the run stays at the band size.

Compare MONAI's ``sliding_window_inference``, which keeps full-image float32 sums of every
channel plus a count map: ``(C + 1) * H * W * 4`` bytes (20000 x 20000, 11 channels: 19 GB).

Input
-----
``image`` is ``(H, W, C)`` (or ``(H, W)`` for a one-channel network), channel-last, any array
supporting numpy slicing (``np.ndarray``, ``np.memmap``, a tifffile memmap...). Either it is
float already normalised, or ``normalize`` is given: a pointwise callable applied to each band of
rows as it is read, which also converts the band's channels to the network's (so a huge
uint8/uint16 or grey image is never converted to float32 or RGB as a whole; percentile
normalisation must therefore compute its percentiles beforehand). Pixel preparation lives in
:mod:`.normalization` (:func:`~.normalization.make_normalizer`,
:func:`~.normalization.prepare_image`); this module only tiles.

Outputs (``compact=True``, the default)
---------------------------------------
For a head ``name`` at stride 1:

* softmax heads (``classes``): ``name`` (uint8 argmax, uint16 when > 256 channels),
  ``name + "_confidence"`` (the winning probability) and ``name + "_foreground"``
  (1 - p(channel 0)), both float16;
* every other head (``distance``, ``boundary`` ...): float16 after its activation.

Heads at stride s > 1 (``heatmap``, ``size``, ``offset``) are float16 of shape
``(C, ceil(H/s), ceil(W/s))``. One-channel maps are ``(H, W)``; several channels are
channel-first ``(C, H, W)``, the layout :mod:`.postprocess` takes. With ``compact=False``
every head is float32 after activation (``classes`` as ``(C, H, W)`` softmax probabilities).

Activations come from ``outputs`` or, by default, from the network's ``output_activations``
(our U-Nets: softmax for ``classes``, sigmoid for ``boundary`` and ``heatmap``, ``exp`` for a
log-encoded ``size`` so that it comes out in pixels, identity otherwise), else from
:data:`DEFAULT_ACTIVATIONS`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import torch
from torch import nn

from .errors import CancelledError, CellquantError, InputError

log = logging.getLogger(__name__)

#: How each head is activated before blending, unless ``outputs`` says otherwise.
DEFAULT_ACTIVATIONS: dict[str, str] = {
    "classes": "softmax",
    "boundary": "sigmoid",
    "distance": "identity",
    "heatmap": "sigmoid",
    "size": "identity",
    "offset": "identity",
}
ACTIVATIONS = ("softmax", "sigmoid", "exp", "identity")
BLEND_MODES = ("gaussian", "monai", "cosine", "constant")

# Smallest blending weight, as in MONAI: a window that reaches exactly 0 at the tile border
# would leave image-border pixels covered by one tile edge with a 0/0.
_MIN_WEIGHT = 1e-3
_MIN_TILE = 16

Normalizer = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ProgressEvent:
    """One step of :func:`iter_predict_maps`.

    ``done`` of ``total`` tiles are finished. ``tile`` and ``batch_size`` are the values in use:
    they shrink when the device runs out of memory (a smaller tile restarts the count).
    """

    done: int
    total: int
    tile: int
    batch_size: int


# ---------------------------------------------------------------------------------------------
# device and input preparation


def choose_device(device: str | torch.device = "auto") -> torch.device:
    """Pick the torch device to run on.

    Parameters
    ----------
    device
        ``"auto"`` takes CUDA if available, then Apple MPS, then the CPU. Anything else
        (``"cpu"``, ``"cuda:1"``, a ``torch.device``) is checked and returned.

    Raises
    ------
    InputError
        For an unknown device string or a device that this machine does not have.
    """
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError):
            raise InputError(f"unknown device {device!r} (try 'auto', 'cpu', 'cuda')") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {str(dev)!r} requested but CUDA is not available here")
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InputError("device 'mps' requested but Apple MPS is not available here")
    return dev


# ---------------------------------------------------------------------------------------------
# planning


def blend_window(
    shape: tuple[int, int], mode: str = "gaussian", sigma_scale: float = 0.125
) -> torch.Tensor:
    """The 2-D blending weight of one tile (float32, separable, maximum near 1).

    ``gaussian``: per axis ``exp(-x**2 / (2 sigma**2))`` with ``x`` centred on the tile and
    ``sigma = sigma_scale * size`` (MONAI's window), each axis clamped below at 1e-3.
    ``monai``: exactly MONAI's ``compute_importance_map(mode="gaussian")``, where the clamp is
    applied to the 2-D product; along an image border covered only by tile edges this flattens
    the window in the other direction too, so seams between tile rows come back there.
    ``cosine``: a Hann window ``sin(pi (i + 0.5) / n)**2`` per axis, same clamp.
    ``constant``: plain averaging of overlapping tiles.
    """
    if mode not in BLEND_MODES:
        raise InputError(f"blend must be one of {BLEND_MODES}, got {mode!r}")
    axes = []
    for n in shape:
        if mode in ("gaussian", "monai"):
            x = torch.arange(n, dtype=torch.float32) - (n - 1) / 2.0
            g = torch.exp(x**2 / (-2 * (sigma_scale * n) ** 2))
        elif mode == "cosine":
            g = torch.sin(math.pi * (torch.arange(n, dtype=torch.float32) + 0.5) / n) ** 2
        else:
            g = torch.ones(n, dtype=torch.float32)
        if mode != "monai":
            # Clamping each axis (not the product) keeps the window's shape along one axis
            # where the other is at a tile edge, and keeps weights far from float underflow.
            g = g.clamp(min=_MIN_WEIGHT)
        axes.append(g)
    window = axes[0][:, None] * axes[1][None, :]
    if mode == "monai":
        window = window.clamp(min=max(window.min().item(), _MIN_WEIGHT))
    return window


def tile_starts(size: int, tile: int, step: int) -> list[int]:
    """Tile origins along one axis: ``0, step, 2 step, ...``, the last flush with ``size``.

    The same placement as MONAI's ``dense_patch_slices``.
    """
    if size <= tile:
        return [0]
    n = math.ceil((size - tile) / step) + 1
    return [min(i * step, size - tile) for i in range(n)]


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


@dataclass(frozen=True)
class _Plan:
    height: int
    width: int
    tile_y: int
    tile_x: int
    ys: list[int]
    xs: list[int]
    height_p: int  # padded extent that the tiles cover (reflect padding beyond the image)
    width_p: int


def _plan(height: int, width: int, tile: int, overlap: float, multiple: int, align: int) -> _Plan:
    # Tiles are multiples of the network's size multiple (no internal padding) and of the
    # largest output stride (strided heads map tiles to whole output cells); tiles and steps
    # are multiples of ``align`` so strided outputs of all tiles fall on one grid.
    t = _round_up(tile, multiple)
    ty, tx = min(t, _round_up(height, multiple)), min(t, _round_up(width, multiple))
    hp, wp = max(ty, _round_up(height, align)), max(tx, _round_up(width, align))

    def step(tn: int) -> int:
        return max(align, int(tn * (1 - overlap)) // align * align)

    return _Plan(
        height,
        width,
        ty,
        tx,
        tile_starts(hp, ty, step(ty)),
        tile_starts(wp, tx, step(tx)),
        hp,
        wp,
    )


def _reflect_index(start: int, stop: int, n: int) -> np.ndarray:
    """Indices ``start..stop`` mirrored into ``0..n-1`` (numpy ``pad(mode="reflect")``)."""
    idx = np.arange(start, stop)
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    idx = np.abs(idx) % period
    return np.where(idx >= n, period - idx, idx)


# ---------------------------------------------------------------------------------------------
# outputs


class _Store:
    """Full-size compact outputs: in memory, or written band by band to temporary files."""

    def __init__(
        self,
        specs: dict[str, tuple[tuple[int, ...], np.dtype]],
        on_disk: bool,
        directory: str | None,
    ) -> None:
        self.specs = specs
        self.arrays: dict[str, np.ndarray] = {}
        self.files: dict[str, IO[bytes]] = {}
        for key, (shape, dtype) in specs.items():
            if on_disk:
                # Anonymous temporary file (unlinked on POSIX): disk space goes when the
                # returned memmap is garbage-collected; nothing to clean up on cancel.
                f = tempfile.TemporaryFile(dir=directory)
                f.truncate(int(np.prod(shape)) * np.dtype(dtype).itemsize)
                self.files[key] = f
            else:
                self.arrays[key] = np.empty(shape, dtype=dtype)

    def write(self, key: str, row: int, data: np.ndarray) -> None:
        """Store rows ``row..row + n`` of ``data``: ``(n, W)`` or channel-first ``(C, n, W)``."""
        n = data.shape[-2]
        if key in self.arrays:
            self.arrays[key][..., row : row + n, :] = data
            return
        # Plain writes, not a writable mapping: pages written through a shared mapping stay in
        # this process's resident set, file writes only in the page cache.
        shape, dtype = self.specs[key]
        height, width = shape[-2:]
        row_bytes = width * np.dtype(dtype).itemsize
        f = self.files[key]
        data = np.ascontiguousarray(data, dtype=dtype).reshape(-1, n, width)
        for c, plane in enumerate(data):
            f.seek((c * height + row) * row_bytes)
            f.write(plane.data)

    def result(self) -> dict[str, np.ndarray]:
        out = dict(self.arrays)
        for key, f in self.files.items():
            shape, dtype = self.specs[key]
            f.flush()
            out[key] = np.memmap(f, dtype=dtype, mode="r+", shape=shape)
            f.close()  # the mapping keeps its own handle
        return out


@dataclass
class _Head:
    name: str
    activation: str
    channels: int
    stride: int

    def output_specs(self, height: int, width: int, compact: bool) -> dict[str, tuple]:
        hs, ws = -(-height // self.stride), -(-width // self.stride)
        shape = (hs, ws) if self.channels == 1 else (self.channels, hs, ws)
        if not compact:
            return {self.name: (shape, np.dtype(np.float32))}
        if self.stride == 1 and self.activation == "softmax" and self.channels > 1:
            ids = np.uint8 if self.channels <= 256 else np.uint16
            return {
                self.name: ((hs, ws), np.dtype(ids)),
                f"{self.name}_confidence": ((hs, ws), np.dtype(np.float16)),
                f"{self.name}_foreground": ((hs, ws), np.dtype(np.float16)),
            }
        return {self.name: (shape, np.dtype(np.float16))}

    def reduce(self, p: torch.Tensor, compact: bool) -> dict[str, torch.Tensor]:
        """Blended maps ``(rows, cols, channels)`` of this head -> tensors to store."""
        one = p[..., 0] if self.channels == 1 else p.permute(2, 0, 1)
        if not compact:
            return {self.name: one}
        if self.stride == 1 and self.activation == "softmax" and self.channels > 1:
            conf, ids = p.max(dim=-1)
            ids = ids.to(torch.uint8 if self.channels <= 256 else torch.int32)
            return {
                self.name: ids,
                f"{self.name}_confidence": conf.half(),
                f"{self.name}_foreground": (1 - p[..., 0]).half(),
            }
        return {self.name: one.half()}


def _activate(x: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "softmax":
        return torch.softmax(x, dim=1)
    if activation == "sigmoid":
        return torch.sigmoid(x)
    if activation == "exp":
        return torch.exp(x)
    return x


class _Group:
    """All heads of one output stride: a band accumulator per head, one weight map."""

    def __init__(
        self,
        stride: int,
        heads: list[_Head],
        plan: _Plan,
        window: torch.Tensor,
        device: torch.device,
    ) -> None:
        self.stride = stride
        self.heads = heads
        s = stride
        self.rows, self.cols = plan.tile_y // s, plan.width_p // s
        self.tile_cols = plan.tile_x // s
        # channel-last accumulators: a channels_last tile output permuted to (t, t, C) is a
        # contiguous block, so adding it is one streaming pass
        self.acc = {
            h.name: torch.zeros((self.rows, self.cols, h.channels), device=device) for h in heads
        }
        self.weight = torch.zeros((self.rows, self.cols), device=device)
        self.window = window.to(device)
        self.window_hwc = self.window[:, :, None]
        # Every tile row adds the same weights: precompute one row of windows side by side.
        self.row_weight = torch.zeros((self.rows, self.cols), device=device)
        for x in plan.xs:
            self.row_weight[:, x // s : x // s + self.tile_cols] += self.window

    def shift(self, delta: int) -> None:
        """Move the band origin down by ``delta`` image rows (rows above are already final)."""
        d = delta // self.stride
        keep = self.rows - d
        for acc in (*self.acc.values(), self.weight):
            acc[:keep] = acc[d:].clone()
            acc[keep:] = 0


# ---------------------------------------------------------------------------------------------
# the engine


class _TileTooLarge(Exception):
    """A single tile ran out of device memory: restart with a smaller tile."""


def _is_oom(error: BaseException) -> bool:
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    # MPS and some backends raise a plain RuntimeError for the same condition.
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


#: the image and its mirror images (flipped axes) that ``flip_views`` 1, 2 or 4 average over
_FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-1, -2))


class _Runner:
    """Runs batches through the network, halving the batch on out-of-memory; with
    ``flip_views`` > 1, averages the raw outputs of the tile and its mirror images."""

    def __init__(
        self,
        network: nn.Module,
        device: torch.device,
        batch_size: int,
        amp: bool,
        channels_last: bool,
        flip_views: int = 1,
    ) -> None:
        self.network = network
        self.device = device
        self.batch_size = batch_size
        self.channels_last = channels_last
        self.flips = _FLIPS[:flip_views]
        self.autocast: Callable[[], contextlib.AbstractContextManager[Any]]
        if amp:
            dtype = torch.float16
            if device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_bf16_supported()):
                dtype = torch.bfloat16
            self.autocast = lambda: torch.autocast(device.type, dtype=dtype)
        else:
            self.autocast = contextlib.nullcontext

    def _unflipped(self, x: torch.Tensor, dims: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """The network's float32 outputs for ``x`` mirrored along ``dims``, mirrored back."""
        out = self.network(x.flip(dims) if dims else x)
        if isinstance(out, torch.Tensor):
            out = {"output": out}
        return {k: (v.flip(dims) if dims else v).float() for k, v in out.items()}

    def _empty_cache(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        elif self.device.type == "mps":
            torch.mps.empty_cache()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Network outputs (float32) for a batch, splitting it after out-of-memory errors."""
        oom = False
        try:
            with self.autocast():
                views = [self._unflipped(x, dims) for dims in self.flips]
            if len(views) == 1:
                return views[0]
            return {k: torch.stack([v[k] for v in views]).mean(dim=0) for k in views[0]}
        except RuntimeError as error:  # torch.cuda.OutOfMemoryError is a RuntimeError
            if not _is_oom(error):
                raise
            oom = True
        # Outside the except block, so the traceback's references to the failed batch's
        # activations are gone before the cache is emptied.
        assert oom
        self._empty_cache()
        n = x.shape[0]
        if n == 1:
            raise _TileTooLarge
        self.batch_size = min(self.batch_size, max(1, n // 2))
        log.warning("out of device memory: batch size reduced to %d", self.batch_size)
        # one step for every part: a part that runs out of memory lowers self.batch_size
        # while the others are still to come
        step = self.batch_size
        parts = [self.forward(x[i : i + step]) for i in range(0, n, step)]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _head_geometry(
    network: nn.Module, in_channels: int, device: torch.device
) -> dict[str, tuple[int, int]]:
    """Head name -> (channels, stride), from the network's attributes or one probe pass."""
    strides = getattr(network, "output_strides", None)
    channels = getattr(network, "head_channels", None)
    if isinstance(strides, Mapping) and isinstance(channels, Mapping):
        return {k: (int(channels[k]), int(strides[k])) for k in strides}
    size = max(16, 2 * int(getattr(network, "size_multiple", 1)))
    try:
        with torch.inference_mode():
            out = network(torch.zeros((1, in_channels, size, size), device=device))
    except RuntimeError as error:
        if not _is_oom(error):
            raise
        raise CellquantError(f"out of device memory on a {size}x{size} probe input") from None
    if isinstance(out, torch.Tensor):
        out = {"output": out}
    geometry = {}
    for name, value in out.items():
        stride = size // value.shape[-1]
        if stride < 1 or value.shape[-1] * stride != size:
            raise InputError(f"head {name!r}: output width {value.shape[-1]} for input {size}")
        geometry[name] = (int(value.shape[1]), stride)
    return geometry


def _prepare_network(
    network: nn.Module, device: torch.device, channels_last: bool
) -> tuple[nn.Module, bool]:
    """An eval-mode network on ``device``; ours get BatchNorm folded into a private copy."""
    was_training = network.training
    fuse = getattr(network, "fuse_for_inference", None)
    if callable(fuse):
        net = fuse()
    else:
        net = network.eval()  # a foreign module is used in place (and put back afterwards)
    net = net.to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net, was_training


def iter_predict_maps(
    image: np.ndarray,
    network: nn.Module,
    *,
    tile: int = 256,
    overlap: float = 0.25,
    batch_size: int = 4,
    device: str | torch.device = "auto",
    normalize: Normalizer | None = None,
    outputs: Mapping[str, str] | None = None,
    blend: str = "gaussian",
    sigma_scale: float = 0.125,
    compact: bool = True,
    amp: bool | str = "auto",
    channels_last: bool = True,
    memmap_above: int | None = 1 << 30,
    memmap_dir: str | None = None,
    cancel: Callable[[], bool] | None = None,
    flip_views: int = 1,
) -> Generator[ProgressEvent, None, dict[str, np.ndarray]]:
    """Tiled, blended inference as a generator of progress events.

    Yields a :class:`ProgressEvent` before the first batch and after every batch of tiles; the
    generator's return value (``StopIteration.value``, or napari ``thread_worker``'s
    ``returned`` signal) is the dict of output maps. Closing the generator at a yield stops
    the work. Parameters and outputs as in :func:`predict_maps`.
    """
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(f"expected an (H, W, C) image, got shape {image.shape}")
    declared = getattr(network, "in_channels", None)
    in_channels = int(image.shape[-1] if declared is None else declared)
    # a normaliser converts the channels band by band (normalization.make_normalizer), so a
    # grey image never becomes a full-size RGB float copy
    if normalize is None and image.shape[-1] != in_channels:
        raise InputError(
            f"image has {image.shape[-1]} channel(s) but the network expects {in_channels}; "
            "convert it with normalization.prepare_image() or pass normalize="
        )
    if normalize is None and not np.issubdtype(image.dtype, np.floating):
        raise InputError(
            f"image dtype {image.dtype} is not float: pass normalize= or use "
            "normalization.prepare_image()"
        )
    if not 0 <= overlap < 1:
        raise InputError(f"overlap must be in [0, 1), got {overlap}")
    if tile < 1 or batch_size < 1:
        raise InputError(f"tile and batch_size must be positive, got {tile}, {batch_size}")
    if blend not in BLEND_MODES:
        raise InputError(f"blend must be one of {BLEND_MODES}, got {blend!r}")
    if flip_views not in (1, 2, 4):
        raise InputError(f"flip_views must be 1, 2 or 4, got {flip_views!r}")
    if flip_views > 1 and (getattr(network, "arch", None) or {}).get("detector"):
        # box sizes and centre offsets do not mirror with the image
        raise InputError("flip_views averages dense maps: a box detector's heads cannot")

    dev = choose_device(device)
    use_amp = dev.type == "cuda" if amp == "auto" else bool(amp)
    net, was_training = _prepare_network(network, dev, channels_last)
    try:
        geometry = _head_geometry(net, in_channels, dev)
        own = getattr(net, "output_activations", None)
        defaults = {**DEFAULT_ACTIVATIONS, **(own if isinstance(own, Mapping) else {})}
        wanted = (
            dict(outputs)
            if outputs is not None
            else {k: defaults.get(k, "identity") for k in geometry}
        )
        for name, act in wanted.items():
            if name not in geometry:
                raise InputError(
                    f"output {name!r} requested but the network has heads {list(geometry)}"
                )
            if act not in ACTIVATIONS:
                raise InputError(f"output {name!r}: activation must be one of {ACTIVATIONS}")
        if not wanted:
            raise InputError("no outputs requested")
        runner = _Runner(net, dev, batch_size, use_amp, channels_last, flip_views)
        multiple = int(getattr(net, "size_multiple", 1))
        align = max(geometry[k][1] for k in wanted)
        multiple = math.lcm(multiple, align)
        tile_now = _round_up(tile, multiple)
        while True:
            try:
                return (
                    yield from _predict(
                        image,
                        in_channels,
                        runner,
                        wanted,
                        geometry,
                        tile_now,
                        overlap,
                        multiple,
                        align,
                        normalize,
                        blend,
                        sigma_scale,
                        compact,
                        memmap_above,
                        memmap_dir,
                        cancel,
                    )
                )
            except _TileTooLarge:
                smaller = tile_now // 2 // multiple * multiple
                # below 16 pixels (or two output cells) tiles are mostly padding: give up
                if smaller < max(multiple, 2 * align, _MIN_TILE):
                    raise CellquantError(
                        f"out of device memory even with batch size 1 and tile {tile_now}; "
                        "try device='cpu'"
                    ) from None
                log.warning("out of device memory on one tile: tile %d -> %d", tile_now, smaller)
                tile_now = smaller
    finally:
        if net is network:
            network.train(was_training)


def _predict(
    image: np.ndarray,
    in_channels: int,
    runner: _Runner,
    wanted: dict[str, str],
    geometry: dict[str, tuple[int, int]],
    tile: int,
    overlap: float,
    multiple: int,
    align: int,
    normalize: Normalizer | None,
    blend: str,
    sigma_scale: float,
    compact: bool,
    memmap_above: int | None,
    memmap_dir: str | None,
    cancel: Callable[[], bool] | None,
) -> Generator[ProgressEvent, None, dict[str, np.ndarray]]:
    """One attempt at a fixed tile size (restarted smaller by the caller on out-of-memory)."""
    height, width = int(image.shape[0]), int(image.shape[1])
    plan = _plan(height, width, tile, overlap, multiple, align)
    dev = runner.device

    by_stride: dict[int, list[_Head]] = {}
    for name, act in wanted.items():
        c, s = geometry[name]
        group = by_stride.setdefault(s, [])
        group.append(_Head(name, act, c, s))
    specs: dict[str, tuple] = {}
    for heads in by_stride.values():
        for h in heads:
            specs.update(h.output_specs(height, width, compact))
    total_bytes = sum(int(np.prod(shape)) * dt.itemsize for shape, dt in specs.values())
    store = _Store(specs, memmap_above is not None and total_bytes > memmap_above, memmap_dir)

    with torch.inference_mode():
        groups = [
            _Group(
                s,
                heads,
                plan,
                blend_window((plan.tile_y // s, plan.tile_x // s), blend, sigma_scale),
                dev,
            )
            for s, heads in by_stride.items()
        ]
    cols = slice(0, width) if plan.width_p == width else _reflect_index(0, plan.width_p, width)

    total = len(plan.ys) * len(plan.xs)
    done = 0
    yield ProgressEvent(done, total, tile, runner.batch_size)
    for r, y0 in enumerate(plan.ys):
        band = _read_band(image, y0, y0 + plan.tile_y, cols, normalize, in_channels)
        with torch.inference_mode():
            band_t = torch.from_numpy(band).to(dev)
            if r:
                for g in groups:
                    g.shift(y0 - plan.ys[r - 1])
        i = 0
        while i < len(plan.xs):
            if cancel is not None and cancel():
                raise CancelledError("inference cancelled")
            xs = plan.xs[i : i + runner.batch_size]
            _run_batch(runner, band_t, xs, plan, groups)
            i += len(xs)
            done += len(xs)
            yield ProgressEvent(done, total, tile, runner.batch_size)
        last = r == len(plan.ys) - 1
        final_rows = (plan.height_p if last else plan.ys[r + 1]) - y0
        _finalise(groups, store, y0, final_rows, plan, compact)
    return store.result()


def _read_band(
    image: np.ndarray,
    y0: int,
    y1: int,
    cols: slice | np.ndarray,
    normalize: Normalizer | None,
    in_channels: int,
) -> np.ndarray:
    """Input rows ``y0..y1`` (mirrored past the border), normalised, float32 (rows, cols,
    ``in_channels``)."""
    height = image.shape[0]
    if y1 <= height:
        band = np.asarray(image[y0:y1])
    else:
        band = np.asarray(image[_reflect_index(y0, y1, height)])
    if not isinstance(cols, slice):
        band = band[:, cols]
    if normalize is not None:
        shape = (*band.shape[:2], in_channels)
        band = np.asarray(normalize(band))
        if band.shape != shape:
            raise InputError(
                f"normalize must return bands of shape {shape}, it returned {band.shape}"
            )
    return np.ascontiguousarray(band, dtype=np.float32)


@torch.inference_mode()
def _run_batch(
    runner: _Runner, band: torch.Tensor, xs: Sequence[int], plan: _Plan, groups: list[_Group]
) -> None:
    tx = plan.tile_x
    # (B, t, t, C) stacked from the channel-last band, viewed as (B, C, t, t): that view is
    # already in channels_last memory format, the layout oneDNN/cuDNN convolutions prefer.
    x = torch.stack([band[:, x0 : x0 + tx] for x0 in xs]).permute(0, 3, 1, 2)
    if not runner.channels_last:
        x = x.contiguous()
    out = runner.forward(x)
    for g in groups:
        for h in g.heads:
            y = _activate(out[h.name], h.activation)
            if y.shape[-2:] != g.window.shape:
                raise InputError(
                    f"head {h.name!r}: output {tuple(y.shape[-2:])} does not match "
                    f"tile / stride {tuple(g.window.shape)}"
                )
            y = y.permute(0, 2, 3, 1)  # (B, t/s, t/s, C)
            acc = g.acc[h.name]
            for k, x0 in enumerate(xs):
                c0 = x0 // g.stride
                # weight and add in one pass, no weighted copy of the batch
                acc[:, c0 : c0 + g.tile_cols].addcmul_(y[k], g.window_hwc)


@torch.inference_mode()
def _finalise(
    groups: list[_Group], store: _Store, y0: int, rows: int, plan: _Plan, compact: bool
) -> None:
    """Divide the final ``rows`` of the band by the weights, reduce and store them."""
    for g in groups:
        g.weight += g.row_weight
        s = g.stride
        r0 = y0 // s
        n = min(rows // s, -(-plan.height // s) - r0)  # drop mirrored rows past the image
        if n <= 0:
            continue
        w = -(-plan.width // s)
        weight = g.weight[:n, :w, None]
        for h in g.heads:
            reduced = h.reduce(g.acc[h.name][:n, :w] / weight, compact)
            for key, t in reduced.items():
                store.write(key, r0, t.contiguous().cpu().numpy())


def predict_maps(
    image: np.ndarray,
    network: nn.Module,
    *,
    tile: int = 256,
    overlap: float = 0.25,
    batch_size: int = 4,
    device: str | torch.device = "auto",
    normalize: Normalizer | None = None,
    outputs: Mapping[str, str] | None = None,
    blend: str = "gaussian",
    sigma_scale: float = 0.125,
    compact: bool = True,
    amp: bool | str = "auto",
    channels_last: bool = True,
    memmap_above: int | None = 1 << 30,
    memmap_dir: str | None = None,
    progress: Callable[[int, int], Any] | None = None,
    cancel: Callable[[], bool] | None = None,
    flip_views: int = 1,
) -> dict[str, np.ndarray]:
    """Run a network over a 2-D image of any size in overlapping, blended tiles.

    Parameters
    ----------
    image
        ``(H, W, C)`` channel-last (or ``(H, W)`` for one-channel networks), float and already
        normalised unless ``normalize`` is given. Any array supporting numpy slicing.
    network
        A module returning ``dict[str, Tensor]`` (or a single tensor, named ``"output"``).
        Networks from :func:`~napari_cellquant.core.models.build_network` are copied with
        BatchNorm folded; other modules are put in eval mode for the call.
    tile, overlap
        Tile edge in pixels (rounded up to the network's ``size_multiple`` and output stride;
        shrunk to the image when it is smaller) and fractional overlap in [0, 1).
    batch_size
        Tiles per forward pass.
    device
        See :func:`choose_device`.
    normalize
        Pointwise ``f(band) -> float32 band`` applied to ``(rows, W, C)`` bands as they are read.
    outputs
        Head name -> ``"softmax" | "sigmoid" | "exp" | "identity"``: the heads to blend and
        how each is activated before blending. Default: every head, activated as the network's
        ``output_activations`` (else :data:`DEFAULT_ACTIVATIONS`) say.
    blend, sigma_scale
        Blending window ``"gaussian"`` (sigma = sigma_scale * tile, as MONAI), ``"cosine"``
        or ``"constant"``.
    compact
        Reduce to compact dtypes as each band finishes (see module docstring) instead of
        keeping float32 maps of every channel.
    amp
        Autocast (bf16 where supported, else fp16); ``"auto"`` means on CUDA only.
    channels_last
        Feed tiles in channels_last memory format (faster convolutions on CPU and GPU).
    memmap_above, memmap_dir
        Outputs larger than this many bytes in total go to temporary files (in ``memmap_dir``)
        and come back as ``np.memmap``; ``None`` keeps them in memory.
    progress
        ``progress(done, total)`` called with the number of finished tiles.
    cancel
        ``cancel() -> bool`` checked before every batch.
    flip_views
        Average each tile's raw outputs over 1, 2 (mirrored left-right) or 4 (and upside
        down) views of it: test-time augmentation for dense maps, at that many passes.

    Returns
    -------
    dict[str, np.ndarray]
        Output maps cropped to the image (strided heads to ``ceil(H / s), ceil(W / s)``).

    Raises
    ------
    CancelledError
        When ``cancel()`` returned True.
    InputError
        For images or options the network cannot use.
    CellquantError
        When the device runs out of memory even for one tile of the smallest size.
    """
    gen = iter_predict_maps(
        image,
        network,
        tile=tile,
        overlap=overlap,
        batch_size=batch_size,
        device=device,
        normalize=normalize,
        outputs=outputs,
        blend=blend,
        sigma_scale=sigma_scale,
        compact=compact,
        amp=amp,
        channels_last=channels_last,
        memmap_above=memmap_above,
        memmap_dir=memmap_dir,
        cancel=cancel,
        flip_views=flip_views,
    )
    from .drive import drive

    report = None if progress is None else (lambda event: progress(event.done, event.total))
    return drive(gen, report, what="inference")

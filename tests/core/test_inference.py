"""Tiled inference: blending without seams, shift equivariance, bands, cancel, progress, OOM."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from napari_cellquant.core import inference
from napari_cellquant.core.errors import CancelledError, CellquantError, InputError
from napari_cellquant.core.inference import (
    ProgressEvent,
    blend_window,
    choose_device,
    iter_predict_maps,
    predict_maps,
    tile_starts,
)
from napari_cellquant.core.models import build_network
from napari_cellquant.core.normalization import prepare_image

CPU = "cpu"  # tests never touch an accelerator


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


class Affine(nn.Module):
    """Per-pixel ``distance = a * x + b``: any blending that is a weighted mean keeps it exact."""

    in_channels = 1

    def __init__(self, a: float = 0.7, b: float = 0.1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(a)
            self.conv.bias.fill_(b)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"distance": self.conv(x)}


class RandomConvNet(nn.Module):
    """Small fully-convolutional random network (zero padding, receptive field 7)."""

    in_channels = 2

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(2, 8, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(8, 3, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"classes": self.body(x)}


class MeanThreshold(nn.Module):
    """Foreground where the 5x5 zero-padded local mean exceeds 0.7 (sharp logits).

    Zero padding darkens tile borders, so naive stitching cuts objects along them.
    """

    in_channels = 1

    def __init__(self) -> None:
        super().__init__()
        self.mean = nn.Conv2d(1, 1, 5, padding=2, bias=False)
        with torch.no_grad():
            self.mean.weight.fill_(1 / 25)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        fg = 50 * (self.mean(x) - 0.7)
        return {"classes": torch.cat([torch.zeros_like(fg), fg], dim=1)}


class FlakyMemory(nn.Module):
    """Wraps a network and raises CUDA out-of-memory for batches or tiles above a limit."""

    def __init__(self, net: nn.Module, max_batch: int = 10**9, max_tile: int = 10**9) -> None:
        super().__init__()
        self.net = net
        self.in_channels = net.in_channels
        self.max_batch, self.max_tile = max_batch, max_tile
        self.calls: list[tuple[int, ...]] = []
        for name in ("output_strides", "head_channels", "size_multiple"):  # geometry, if known
            if hasattr(net, name):
                setattr(self, name, getattr(net, name))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.shape[0] > self.max_batch or max(x.shape[-2:]) > self.max_tile:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        self.calls.append(tuple(x.shape))
        return self.net(x)


def _disk(shape: tuple[int, int], center: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


# --- device and input preparation ------------------------------------------------------------


def test_choose_device_cpu_and_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    assert choose_device("cpu") == torch.device("cpu")
    assert choose_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert choose_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert choose_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert choose_device("auto") == torch.device("cuda")


def test_choose_device_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InputError, match="unknown device"):
        choose_device("tpu-please")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="CUDA is not available"):
        choose_device("cuda:0")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(InputError, match="MPS is not available"):
        choose_device("mps")


# --- planning -----------------------------------------------------------------------------------


def test_tile_starts_match_monai_placement() -> None:
    starts = tile_starts(3024, 256, 192)
    assert len(starts) == 16 and starts[0] == 0 and starts[-1] == 3024 - 256
    assert all(b - a <= 192 for a, b in itertools.pairwise(starts))
    assert tile_starts(100, 256, 192) == [0]
    assert tile_starts(256, 256, 192) == [0]


def test_blend_window_is_a_separable_gaussian() -> None:
    w = blend_window((64, 48)).numpy()
    assert w.shape == (64, 48)
    gy = np.maximum(np.exp(-((np.arange(64) - 31.5) ** 2) / (2 * 8.0**2)), 1e-3)
    gx = np.maximum(np.exp(-((np.arange(48) - 23.5) ** 2) / (2 * 6.0**2)), 1e-3)
    np.testing.assert_allclose(w, gy[:, None] * gx[None, :], rtol=1e-5)
    assert w.min() == pytest.approx(1e-6)  # per-axis clamp: still shaped at the tile edges


def test_monai_blend_window_is_monais_importance_map() -> None:
    w = blend_window((64, 48), "monai").numpy()
    assert w.min() == pytest.approx(1e-3)  # the 2-D clamp
    np.testing.assert_allclose(w, w[::-1, ::-1])
    monai_utils = pytest.importorskip("monai.data.utils")  # optional extra: benchmarks
    expected = monai_utils.compute_importance_map((64, 48), mode="gaussian", sigma_scale=0.125)
    np.testing.assert_allclose(w, expected.numpy(), rtol=1e-6)


def test_blend_window_other_modes() -> None:
    assert (blend_window((8, 8), "constant") == 1).all()
    cos = blend_window((8, 8), "cosine")
    assert cos.min() > 0 and cos[3:5, 3:5].min() > cos[0, 0]
    with pytest.raises(InputError, match="blend must be"):
        blend_window((8, 8), "triangle")


# --- blending -----------------------------------------------------------------------------------


@pytest.mark.parametrize("blend", ["gaussian", "monai", "cosine", "constant"])
def test_constant_image_gives_constant_output_without_seams(blend: str) -> None:
    image = np.full((150, 211), 0.5, dtype=np.float32)
    out = predict_maps(
        image, Affine(), tile=32, overlap=0.25, device=CPU, blend=blend, compact=False
    )
    assert out["distance"].shape == (150, 211)
    np.testing.assert_allclose(out["distance"], 0.7 * 0.5 + 0.1, rtol=1e-6)


def test_output_follows_a_shift_of_the_input() -> None:
    rng = np.random.default_rng(1)
    big = rng.random((203, 190, 2), dtype=np.float32)
    net = RandomConvNet()
    shift = 3
    kwargs = {"tile": 48, "overlap": 0.25, "device": CPU, "compact": False}

    def interior_difference(**extra: object) -> float:
        a = predict_maps(big[shift:], net, **kwargs, **extra)["classes"]  # content moves up
        b = predict_maps(big[:-shift], net, **kwargs, **extra)["classes"]
        # a[i] and b[i + shift] saw the same pixels; ignore a margin at the image border
        m = 6
        return float(np.abs(a[:, m : -m - shift] - b[:, m + shift : -m]).max())

    blended = interior_difference()
    # tile borders fall elsewhere relative to the content, yet the maps agree closely ...
    assert blended < 4e-3
    # ... while averaging tiles without a window leaves the zero-padding seams in, and so
    # does MONAI's window along the image's side borders (its 2-D clamp flattens it there)
    assert interior_difference(blend="constant") > 5 * blended
    assert interior_difference(blend="monai") > 5 * blended


def test_cell_across_tile_borders_is_one_region() -> None:
    shape = (150, 150)
    disk = _disk(shape, (64, 63.5), 18)  # centred where four 64-px tiles meet (step 48)
    image = disk.astype(np.float32)
    out = predict_maps(image, MeanThreshold(), tile=64, overlap=0.25, device=CPU)
    fg = out["classes"] == 1
    _, n = ndimage.label(fg)
    assert n == 1
    # the single region is the disk, eroded slightly by the 5x5 mean threshold
    assert (fg & disk).sum() / (fg | disk).sum() > 0.85
    # control: hard stitching (no overlap) cuts the disk along the tile borders
    hard = predict_maps(image, MeanThreshold(), tile=64, overlap=0.0, device=CPU)
    assert ndimage.label(hard["classes"] == 1)[1] > 1


def test_matches_whole_image_prediction_away_from_tile_borders() -> None:
    # one tile covering everything vs many tiles: blending must not bias the interior
    rng = np.random.default_rng(2)
    image = rng.random((96, 96, 2), dtype=np.float32)
    net = RandomConvNet()
    whole = predict_maps(image, net, tile=96, device=CPU, compact=False)["classes"]
    tiled = predict_maps(image, net, tile=32, overlap=0.5, device=CPU, compact=False)["classes"]
    with torch.inference_mode():
        direct = torch.softmax(net(torch.from_numpy(image).permute(2, 0, 1)[None])["classes"], 1)
    np.testing.assert_allclose(whole, direct[0].numpy(), atol=1e-6)
    assert np.abs(tiled - whole)[:, 4:-4, 4:-4].max() < 5e-3


# --- sizes, heads, compact outputs ---------------------------------------------------------------


@pytest.mark.parametrize(("h", "w"), [(20, 13), (97, 131), (1, 70), (64, 64)])
def test_any_image_size(h: int, w: int) -> None:
    net = build_network(
        {
            "in_channels": 1,
            "width": 4,
            "depth": 2,
            "n_classes": 2,
            "heads": ["classes", "distance", "boundary"],
        }
    )
    image = np.random.default_rng(0).random((h, w), dtype=np.float32)
    out = predict_maps(image, net, tile=32, overlap=0.3, device=CPU)
    assert out["classes"].shape == (h, w) and out["classes"].dtype == np.uint8
    assert out["classes"].max() <= 2
    assert out["classes_confidence"].dtype == np.float16
    assert out["classes_foreground"].shape == (h, w)
    assert out["distance"].shape == (h, w) and out["distance"].dtype == np.float16
    assert out["boundary"].shape == (h, w) and out["boundary"].dtype == np.float16
    assert 0 <= out["boundary"].min() and out["boundary"].max() <= 1


def test_compact_outputs_agree_with_float_outputs() -> None:
    net = build_network(
        {"width": 4, "depth": 2, "n_classes": 3, "heads": ["classes", "distance", "boundary"]}
    )
    image = np.random.default_rng(3).random((70, 90, 3), dtype=np.float32)
    full = predict_maps(image, net, tile=32, device=CPU, compact=False)
    compact = predict_maps(image, net, tile=32, device=CPU)
    probs = full["classes"]
    assert probs.shape == (4, 70, 90) and probs.dtype == np.float32  # channel-first
    np.testing.assert_allclose(probs.sum(0), 1, rtol=1e-5)
    np.testing.assert_array_equal(compact["classes"], probs.argmax(0))
    f16 = {"rtol": 1e-3, "atol": 1e-4}  # float16 rounding
    np.testing.assert_allclose(compact["classes_confidence"], probs.max(0), **f16)
    np.testing.assert_allclose(compact["classes_foreground"], 1 - probs[0], **f16)
    np.testing.assert_allclose(compact["boundary"], full["boundary"], **f16)
    np.testing.assert_allclose(compact["distance"], full["distance"], **f16)


def test_detection_heads_at_stride() -> None:
    net = build_network(
        {
            "width": 4,
            "depth": 2,
            "heads": [],
            "detector": {"n_classes": 3, "stride": 4, "head_width": 8},
        }
    )
    image = np.random.default_rng(4).random((90, 70, 3), dtype=np.float32)
    out = predict_maps(image, net, tile=32, device=CPU)
    assert out["heatmap"].shape == (3, 23, 18) and out["heatmap"].dtype == np.float16
    assert out["size"].shape == (2, 23, 18) and out["offset"].shape == (2, 23, 18)
    assert 0 < out["heatmap"].min() and out["heatmap"].max() < 1  # sigmoid applied
    assert out["size"].min() > 0  # log-encoded sizes come back in pixels (exp applied)
    assert out["offset"].min() < 0 or out["offset"].max() > 1  # raw regression, untouched
    # a single whole-image tile gives the same strided maps up to blending of borders
    whole = predict_maps(image, net, tile=96, device=CPU, compact=False)
    assert np.abs(whole["heatmap"] - out["heatmap"])[:, 2:-2, 2:-2].max() < 0.05
    raw = predict_maps(image, net, tile=32, device=CPU, outputs={"size": "identity"}, compact=False)
    np.testing.assert_allclose(np.exp(raw["size"]), out["size"], rtol=0.05)


def test_selected_outputs_and_activations() -> None:
    net = build_network({"width": 4, "depth": 2, "n_classes": 2, "heads": ["classes", "distance"]})
    image = np.random.default_rng(5).random((40, 40, 3), dtype=np.float32)
    out = predict_maps(
        image, net, tile=32, device=CPU, outputs={"classes": "identity"}, compact=False
    )
    assert set(out) == {"classes"}
    assert out["classes"].min() < 0 or out["classes"].max() > 1  # raw logits, not probabilities


@pytest.mark.parametrize("compact", [True, False])  # 2-D maps; channel-first (C, H, W) maps
def test_memmap_outputs_equal_in_memory_outputs(tmp_path, compact: bool) -> None:
    net = build_network({"width": 4, "depth": 2, "n_classes": 2, "heads": ["classes", "distance"]})
    image = np.random.default_rng(6).random((75, 66, 3), dtype=np.float32)
    kw = {"tile": 32, "device": CPU, "compact": compact}
    in_memory = predict_maps(image, net, **kw)
    on_disk = predict_maps(image, net, **kw, memmap_above=0, memmap_dir=tmp_path)
    assert set(on_disk) == set(in_memory)
    for key, value in in_memory.items():
        assert isinstance(on_disk[key], np.memmap)
        np.testing.assert_array_equal(on_disk[key], value)


def test_normalize_is_applied_per_band() -> None:
    net = build_network({"width": 4, "depth": 2, "n_classes": 1, "heads": ["distance"]})
    raw = np.random.default_rng(7).integers(0, 256, (80, 50, 3), dtype=np.uint8)
    seen: list[int] = []

    def normalize(band: np.ndarray) -> np.ndarray:
        seen.append(band.shape[0])
        return band.astype(np.float32) / 255

    via_normalize = predict_maps(raw, net, tile=32, device=CPU, normalize=normalize, compact=False)
    prepared = predict_maps(prepare_image(raw, 3), net, tile=32, device=CPU, compact=False)
    np.testing.assert_allclose(via_normalize["distance"], prepared["distance"], atol=1e-6)
    assert max(seen) == 32  # one band of tile rows at a time, never the whole image


def test_foreign_network_is_restored_and_ours_untouched() -> None:
    foreign = RandomConvNet().train()
    predict_maps(np.zeros((20, 20, 2), np.float32), foreign, tile=16, device=CPU)
    assert foreign.training
    ours = build_network({"width": 4, "depth": 2, "heads": ["classes"]}).train()
    predict_maps(np.zeros((20, 20, 3), np.float32), ours, tile=16, device=CPU)
    assert ours.training
    assert any(isinstance(m, nn.BatchNorm2d) for m in ours.modules())


class GreyInRGBNet(nn.Module):
    """An RGB network (``distance = mean of the channels``) for grey images."""

    in_channels = 3

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(1 / 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"distance": self.conv(x)}


def test_normalizer_converts_grey_to_rgb_band_by_band_without_a_full_size_copy() -> None:
    import tracemalloc

    from napari_cellquant.core.normalization import make_normalizer

    grey = np.random.default_rng(0).integers(0, 256, (1200, 1600), dtype=np.uint8)
    net = GreyInRGBNet()
    expected = predict_maps(prepare_image(grey, 3), net, tile=128, device=CPU)["distance"]
    normalize = make_normalizer(grey[..., None], {"mode": "none"}, 3)
    tracemalloc.start()
    try:
        maps = predict_maps(grey, net, tile=128, device=CPU, normalize=normalize)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_allclose(maps["distance"], expected, atol=1e-3)
    np.testing.assert_allclose(maps["distance"], grey / 255, atol=2e-3)
    assert peak < 0.5 * grey.size * 3 * 4  # the RGB float32 copy: 23 MB (measured 9.6 MB)


@pytest.mark.parametrize(
    ("image", "kwargs", "message"),
    [
        (np.zeros((20, 20, 3), np.float32), {}, "expects 2"),
        (np.zeros((20, 20, 2), np.uint16), {}, "pass normalize"),
        (np.zeros((20, 20, 2, 1), np.float32), {}, r"\(H, W, C\)"),
        (np.zeros((0, 20, 2), np.float32), {}, r"\(H, W, C\)"),
        (np.zeros((20, 20, 2), np.float32), {"outputs": {"mask": "sigmoid"}}, "has heads"),
        (np.zeros((20, 20, 2), np.float32), {"outputs": {"classes": "relu"}}, "activation"),
        (np.zeros((20, 20, 2), np.float32), {"outputs": {}}, "no outputs"),
        (np.zeros((20, 20, 2), np.float32), {"overlap": 1.0}, "overlap"),
        (np.zeros((20, 20, 2), np.float32), {"tile": 0}, "positive"),
        (np.zeros((20, 20, 2), np.float32), {"blend": "max"}, "blend"),
        (np.zeros((20, 20, 2), np.float32), {"normalize": lambda b: b[:, :5]}, "bands of shape"),
        (np.zeros((20, 20, 2), np.float32), {"device": "gpu9"}, "unknown device"),
    ],
)
def test_bad_inputs_are_input_errors(image: np.ndarray, kwargs: dict, message: str) -> None:
    kwargs = {"device": CPU, "tile": 16, **kwargs}
    with pytest.raises(InputError, match=message):
        predict_maps(image, RandomConvNet(), **kwargs)


# --- progress, cancel, generator ---------------------------------------------------------------


def test_progress_counts_increase_to_the_tile_total() -> None:
    calls: list[tuple[int, int]] = []
    image = np.zeros((100, 70, 2), np.float32)
    predict_maps(
        image,
        RandomConvNet(),
        tile=32,
        overlap=0.25,
        batch_size=3,
        device=CPU,
        progress=lambda done, total: calls.append((done, total)),
    )
    n_tiles = len(tile_starts(100, 32, 24)) * len(tile_starts(70, 32, 24))
    assert calls[0] == (0, n_tiles) and calls[-1] == (n_tiles, n_tiles)
    dones = [d for d, _ in calls]
    assert all(b > a for a, b in itertools.pairwise(dones))
    assert {t for _, t in calls} == {n_tiles}


def test_cancel_raises_and_stops_early() -> None:
    net = FlakyMemory(RandomConvNet())
    asked = 0

    def cancel() -> bool:
        nonlocal asked
        asked += 1
        return asked > 2

    with pytest.raises(CancelledError):
        predict_maps(
            np.zeros((200, 200, 2), np.float32),
            net,
            tile=32,
            batch_size=2,
            device=CPU,
            cancel=cancel,
        )
    # two batches of tiles ran (after the one probe pass for an unknown network), then it stopped
    assert [c[2:] for c in net.calls] == [(16, 16), (32, 32), (32, 32)]


def test_generator_yields_events_returns_maps_and_can_be_closed() -> None:
    image = np.random.default_rng(8).random((60, 60, 2), dtype=np.float32)
    net = RandomConvNet()
    gen = iter_predict_maps(image, net, tile=32, device=CPU, compact=False)
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            maps = stop.value
            break
    assert all(isinstance(e, ProgressEvent) for e in events)
    assert events[-1].done == events[-1].total
    np.testing.assert_array_equal(
        maps["classes"], predict_maps(image, net, tile=32, device=CPU, compact=False)["classes"]
    )
    counting = FlakyMemory(net)
    gen = iter_predict_maps(image, counting, tile=16, batch_size=1, device=CPU)
    next(gen), next(gen)
    gen.close()  # the GUI's worker.quit(): work stops at the yield
    assert [c[2:] for c in counting.calls] == [(16, 16), (16, 16)]  # probe + one tile


# --- out of memory -----------------------------------------------------------------------------


def test_out_of_memory_error_exists_without_cuda() -> None:
    error = torch.cuda.OutOfMemoryError("CUDA out of memory")
    assert isinstance(error, RuntimeError) and inference._is_oom(error)
    assert inference._is_oom(RuntimeError("MPS backend out of memory"))
    assert not inference._is_oom(RuntimeError("shape mismatch"))


def test_out_of_memory_halves_the_batch(caplog: pytest.LogCaptureFixture) -> None:
    image = np.random.default_rng(9).random((100, 100, 2), dtype=np.float32)
    net = RandomConvNet()
    expected = predict_maps(image, net, tile=32, batch_size=8, device=CPU, compact=False)
    flaky = FlakyMemory(net, max_batch=2)
    events = list_events(image, flaky, tile=32, batch_size=8)
    assert [c[0] for c in flaky.calls[1:]] == [2] * 8  # 16 tiles in pairs
    assert events[-1].batch_size == 2 and events[-1].tile == 32
    assert "batch size reduced to 2" in caplog.text
    got = predict_maps(
        image, FlakyMemory(net, max_batch=2), tile=32, batch_size=8, device=CPU, compact=False
    )
    np.testing.assert_allclose(got["classes"], expected["classes"], atol=1e-6)


def test_out_of_memory_then_halves_the_tile(caplog: pytest.LogCaptureFixture) -> None:
    image = np.random.default_rng(10).random((100, 90, 2), dtype=np.float32)
    flaky = FlakyMemory(RandomConvNet(), max_batch=1, max_tile=32)
    events = list_events(image, flaky, tile=64, batch_size=4)
    assert {c[2:] for c in flaky.calls[1:]} == {(32, 32)}  # calls[0] is the 16-px probe
    assert events[-1].tile == 32 and events[-1].batch_size == 1
    assert events[-1].done == events[-1].total
    assert "tile 64 -> 32" in caplog.text


def test_out_of_memory_at_the_smallest_tile_is_a_clear_error() -> None:
    unet = build_network({"width": 4, "depth": 2, "heads": ["classes"]})
    flaky = FlakyMemory(unet, max_batch=0)
    with pytest.raises(CellquantError, match="batch size 1 and tile 16"):
        predict_maps(np.zeros((80, 80, 3), np.float32), flaky, tile=64, device=CPU)
    assert flaky.calls == []  # 64 -> 32 -> 16 tried, no probe needed for a known network
    with pytest.raises(CellquantError, match="out of device memory on a 16x16 probe"):
        predict_maps(np.zeros((40, 40, 2), np.float32), FlakyMemory(RandomConvNet(), 0), device=CPU)


def list_events(image: np.ndarray, net: nn.Module, **kwargs: object) -> list[ProgressEvent]:
    gen = iter_predict_maps(image, net, device=CPU, **kwargs)
    events = []
    try:
        while True:
            events.append(next(gen))
    except StopIteration:
        return events


@pytest.mark.parametrize("views", [2, 4])
def test_flip_views_average_the_raw_maps_of_the_mirrored_image(views: int) -> None:
    """flip_views: each tile's raw outputs averaged with those of its mirror images, mirrored
    back; tiling and blending are linear, so the whole map is the mean of the maps of the
    mirrored images. The random network is not mirror-symmetric, so the views differ."""
    net = RandomConvNet()
    image = np.random.default_rng(6).random((40, 56, 2), dtype=np.float32)
    raw = {"outputs": {"classes": "identity"}, "compact": False, "tile": 32, "device": CPU}
    mirrored = []
    for axes in [(), (1,), (0,), (0, 1)][:views]:  # image axes; the maps have channels first
        maps = predict_maps(np.flip(image, axes), net, **raw)["classes"]
        mirrored.append(np.flip(maps, [a + 1 for a in axes]))
    assert not np.allclose(mirrored[0], mirrored[1], atol=1e-3)
    averaged = predict_maps(image, net, flip_views=views, **raw)["classes"]
    np.testing.assert_allclose(averaged, np.mean(mirrored, axis=0), atol=1e-5)


def test_flip_views_are_one_two_or_four_and_not_for_box_detectors() -> None:
    image = np.zeros((40, 40, 3), np.float32)
    with pytest.raises(InputError, match="1, 2 or 4"):
        predict_maps(image[..., :2], RandomConvNet(), flip_views=3, device=CPU)
    detector = build_network(
        {"width": 4, "depth": 2, "heads": [], "detector": {"n_classes": 1, "stride": 4}}
    )
    with pytest.raises(InputError, match="box detector"):
        predict_maps(image, detector, flip_views=2, device=CPU)

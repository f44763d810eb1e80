import numpy as np
import pytest

from napari_cellquant.core.errors import InputError
from napari_cellquant.core.normalization import channel_last_view, make_normalizer


def test_meanstd_on_0_255_scale_matches_the_formula():
    rgb = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    spec = {
        "mode": "meanstd",
        "mean": [233.9, 224.0, 233.2],
        "std": [40.6, 53.7, 40.4],
        "range": 255,
    }
    band = make_normalizer(rgb, spec, 3)(rgb[:10])
    expected = (rgb[:10].astype(np.float32) - spec["mean"]) / np.array(spec["std"])
    np.testing.assert_allclose(band, expected, rtol=1e-5, atol=1e-5)


def test_percentile_makes_8_and_16_bit_alike():
    grey8 = np.random.default_rng(1).integers(10, 200, (64, 64), dtype=np.uint8)
    grey16 = grey8.astype(np.uint16) * 257
    spec = {"mode": "percentile", "low": 1, "high": 99}
    a = make_normalizer(channel_last_view(grey8), spec, 1)(channel_last_view(grey8))
    b = make_normalizer(channel_last_view(grey16), spec, 1)(channel_last_view(grey16))
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert np.percentile(a, 1) == pytest.approx(0, abs=1e-3)
    assert np.percentile(a, 99) == pytest.approx(1, abs=1e-3)


def test_channel_first_becomes_a_channel_last_view():
    chw = np.zeros((3, 20, 30), dtype=np.uint16)
    view = channel_last_view(chw)
    assert view.shape == (20, 30, 3) and np.shares_memory(view, chw)


def test_unknown_mode_and_wrong_channel_count_are_clear_errors():
    with pytest.raises(InputError, match="unknown normalisation mode"):
        make_normalizer(np.zeros((4, 4, 3)), {"mode": "zscore"}, 3)
    with pytest.raises(InputError, match="2 means"):
        make_normalizer(np.zeros((4, 4, 3)), {"mode": "meanstd", "mean": [1, 2], "std": [1, 1]}, 3)

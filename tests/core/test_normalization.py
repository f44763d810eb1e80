import numpy as np
import pytest

from napari_cellquant.core.errors import InputError
from napari_cellquant.core.normalization import channel_last_view, make_normalizer, prepare_image


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


def test_prepare_image_grey_to_rgb_and_rgb_to_grey() -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    rgb = prepare_image(grey, 3)
    assert rgb.shape == (3, 4, 3) and rgb.dtype == np.float32
    np.testing.assert_allclose(rgb[..., 0], grey / 255, rtol=1e-6)
    assert (rgb[..., 0] == rgb[..., 2]).all()
    colour = np.zeros((2, 2, 3), dtype=np.uint8)
    colour[..., 1] = 255  # pure green: luma 0.587
    np.testing.assert_allclose(prepare_image(colour, 1)[..., 0], 0.587, rtol=1e-6)


def test_prepare_image_for_two_stains() -> None:
    """A two-stain network (net-area: DNA, histone) takes two channels as they are; a grey
    image is its one stain twice (the missing stain stands in as the first, as in training),
    and so is a colour one, by its luminance."""
    dna = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    both = np.stack([dna, 255 - dna])  # channel-first
    np.testing.assert_allclose(prepare_image(both, 2)[..., 1], (255 - dna) / 255, rtol=1e-6)
    alone = prepare_image(dna, 2)
    assert alone.shape == (6, 8, 2) and (alone[..., 0] == alone[..., 1]).all()
    colour = np.zeros((2, 2, 3), dtype=np.uint8)
    colour[..., 1] = 255
    np.testing.assert_allclose(prepare_image(colour, 2), 0.587, rtol=1e-6)
    with pytest.raises(InputError, match="has 2 channel"):
        prepare_image(both, 1)


def test_prepare_image_16_bit_channel_first_rgba_bool() -> None:
    img16 = np.full((3, 5, 6), 65535, dtype=np.uint16)  # channel-first RGB
    img16[1] = 0
    out = prepare_image(img16, 3)
    assert out.shape == (5, 6, 3)
    np.testing.assert_array_equal(out[0, 0], [1.0, 0.0, 1.0])
    forced = prepare_image(np.zeros((3, 3, 3), np.uint16), 3, channel_axis=0)
    assert forced.shape == (3, 3, 3)
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    assert prepare_image(rgba, 3).max() == 0  # alpha dropped
    assert prepare_image(np.ones((2, 2), bool), 1).tolist() == [[[1.0], [1.0]], [[1.0], [1.0]]]
    as_float = np.full((2, 2), 3.5, dtype=np.float64)  # floats keep their values
    kept = prepare_image(as_float, 1)
    assert kept.dtype == np.float32 and kept.max() == 3.5


@pytest.mark.parametrize(
    ("image", "kwargs", "message"),
    [
        (np.zeros((2, 3, 4, 5)), {}, "2-D or 3-D"),
        (np.zeros((6, 7, 8)), {}, "cannot tell which axis"),
        (np.zeros((5, 5, 2)), {}, "2 channel"),
        (np.zeros((0, 5)), {}, "empty"),
        (np.zeros((5, 5, 3)), {"channel_axis": 3}, "out of range"),
        (np.zeros((5, 5), dtype=complex), {}, "unsupported image dtype"),
    ],
)
def test_prepare_image_errors(image: np.ndarray, kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        prepare_image(image, 3, **kwargs)


@pytest.mark.parametrize(
    ("image", "spec"),
    [
        (
            np.zeros((8, 8, 3), np.uint8),
            {
                "mode": "meanstd",
                "mean": [123.7, 116.3, 103.5],
                "std": [58.4, 57.1, 57.4],
                "range": 255,
            },
        ),
        (
            np.zeros((8, 8, 3), np.float32),
            {"mode": "meanstd", "mean": [0.2, 0.5, 0.7], "std": [0.1, 0.1, 0.1]},
        ),
        (
            np.arange(64, dtype=np.uint16).reshape(8, 8),
            {"mode": "percentile", "low": 1, "high": 99},
        ),
    ],
)
def test_the_neutral_pixel_normalises_to_zero(image, spec) -> None:
    from napari_cellquant.core.normalization import neutral_pixel

    channels = 3 if image.ndim == 3 else 1
    value = neutral_pixel(image, spec, channels)
    assert value.dtype == image.dtype and value.shape == (channels,)
    normalize = make_normalizer(image, spec, channels)
    normalised = normalize(np.broadcast_to(value, (4, 4, channels)).copy())
    # an integer image's neutral pixel is rounded to its steps: within half a step of 0
    step = 0.0
    if image.dtype.kind in "ui":
        one_up = np.broadcast_to(value + 1, (4, 4, channels)).copy()
        step = float(np.abs(normalize(one_up) - normalised).max())
    assert np.abs(normalised).max() <= step / 2 + 1e-5

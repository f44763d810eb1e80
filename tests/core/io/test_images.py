import logging

import imagecodecs
import numpy as np
import pytest
import tifffile

from napari_cellquant.core.errors import InputError
from napari_cellquant.core.io.images import (
    IMAGE_SUFFIXES,
    as_rgb_or_grey,
    find_image,
    image_shape,
    read_image,
)

RNG = np.random.default_rng(7)
RGB = RNG.integers(0, 256, (37, 53, 3), dtype=np.uint8)
GREY8 = RNG.integers(0, 256, (37, 53), dtype=np.uint8)
GREY16 = RNG.integers(0, 65536, (37, 53), dtype=np.uint16)


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


# --- TIFF -------------------------------------------------------------------------------
@pytest.mark.parametrize("pixels", [GREY8, GREY16, RGB], ids=["grey8", "grey16", "rgb"])
def test_tiff_round_trips_exactly(tmp_path, pixels):
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, pixels)
    out = read_image(path)
    assert out.dtype == pixels.dtype
    np.testing.assert_array_equal(out, pixels)
    assert image_shape(path) == (37, 53)


def test_tiff_planar_rgb_comes_back_channel_last(tmp_path):
    path = tmp_path / "planar.tiff"
    tifffile.imwrite(path, np.moveaxis(RGB, -1, 0), photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_image(path), RGB)
    assert image_shape(path) == (37, 53)


def test_tiff_many_samples_come_back_channel_last(tmp_path):
    five = RNG.integers(0, 4000, (20, 30, 5), dtype=np.uint16)
    path = tmp_path / "five.tif"
    tifffile.imwrite(path, five, photometric="minisblack", planarconfig="contig")
    np.testing.assert_array_equal(read_image(path), five)


def test_imagej_channels_become_last_axis(tmp_path):
    cyx = RNG.integers(0, 256, (3, 20, 30), dtype=np.uint8)
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, cyx, imagej=True, metadata={"axes": "CYX"})
    out = read_image(path)
    assert out.shape == (20, 30, 3)
    np.testing.assert_array_equal(out, np.moveaxis(cyx, 0, -1))
    assert image_shape(path) == (20, 30)


def test_plain_multipage_tiff_pages_are_channels(tmp_path):
    pages = [RNG.integers(0, 65536, (20, 30), dtype=np.uint16) for _ in range(4)]
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as tw:
        for page in pages:
            tw.write(page, photometric="minisblack", metadata=None, contiguous=False)
    out = read_image(path)
    assert out.shape == (20, 30, 4)
    for i, page in enumerate(pages):
        np.testing.assert_array_equal(out[..., i], page)


def test_z_stack_is_refused(tmp_path):
    path = tmp_path / "z.tif"
    tifffile.imwrite(path, np.zeros((5, 20, 30), np.uint8), imagej=True, metadata={"axes": "ZYX"})
    with pytest.raises(InputError, match="stack of 5 z-planes") as info:
        read_image(path)
    assert info.value.source == str(path)


def test_float_tiff_keeps_dtype(tmp_path):
    pixels = RNG.random((12, 14), dtype=np.float32)
    path = tmp_path / "f.tif"
    tifffile.imwrite(path, pixels)
    out = read_image(path)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, pixels)


# --- PNG / JPEG / BMP --------------------------------------------------------------------
@pytest.mark.parametrize("pixels", [GREY8, GREY16, RGB], ids=["grey8", "grey16", "rgb"])
def test_png_round_trips_exactly(tmp_path, pixels):
    path = _write(tmp_path / "a.png", imagecodecs.png_encode(pixels))
    out = read_image(path)
    assert out.dtype == pixels.dtype
    np.testing.assert_array_equal(out, pixels)
    assert image_shape(path) == (37, 53)


@pytest.mark.parametrize("pixels", [GREY8, RGB], ids=["grey", "rgb"])
def test_bmp_round_trips_exactly(tmp_path, pixels):
    path = _write(tmp_path / "a.bmp", imagecodecs.bmp_encode(pixels))
    np.testing.assert_array_equal(read_image(path), pixels)
    assert image_shape(path) == (37, 53)


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg", ".JPG"])
def test_jpeg_reads_close_to_original(tmp_path, suffix):
    cols, rows = np.meshgrid(np.arange(53) * 4, np.arange(37) * 6)
    smooth = np.stack([cols, rows, np.full_like(cols, 99)], axis=-1).astype(np.uint8)
    path = _write(tmp_path / f"a{suffix}", imagecodecs.jpeg8_encode(smooth, level=95))
    out = read_image(path)
    assert out.shape == (37, 53, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - smooth).mean() < 3
    assert image_shape(path) == (37, 53)


def test_grey_jpeg_is_2d(tmp_path):
    path = _write(tmp_path / "g.jpg", imagecodecs.jpeg8_encode(GREY8))
    assert read_image(path).shape == (37, 53)
    assert image_shape(path) == (37, 53)


def test_rgba_png_keeps_alpha_and_helper_drops_it(tmp_path):
    rgba = RNG.integers(0, 256, (10, 12, 4), dtype=np.uint8)
    path = _write(tmp_path / "a.png", imagecodecs.png_encode(rgba))
    out = read_image(path)
    np.testing.assert_array_equal(out, rgba)
    np.testing.assert_array_equal(as_rgb_or_grey(out), rgba[..., :3])
    grey_alpha = rgba[..., :2]
    np.testing.assert_array_equal(as_rgb_or_grey(grey_alpha), rgba[..., 0])
    assert as_rgb_or_grey(GREY8) is GREY8


def test_content_decides_the_decoder_when_suffix_lies(tmp_path, caplog):
    path = _write(tmp_path / "really_png.jpg", imagecodecs.png_encode(RGB))
    with caplog.at_level(logging.WARNING):
        out = read_image(path)
    np.testing.assert_array_equal(out, RGB)
    assert "content is png" in caplog.text


def test_image_shape_jpeg_header_after_large_app_segment(tmp_path):
    # an APP segment (as EXIF writes) before the frame header must be skipped, not decoded
    data = imagecodecs.jpeg8_encode(GREY8)
    app1 = b"\xff\xe1" + (2 + 5000).to_bytes(2, "big") + bytes(5000)
    path = _write(tmp_path / "exif.jpg", data[:2] + app1 + data[2:])
    assert image_shape(path) == (37, 53)
    assert read_image(path).shape == (37, 53)


def test_image_shape_of_top_down_bmp(tmp_path):
    data = bytearray(imagecodecs.bmp_encode(GREY8))
    height = int.from_bytes(data[22:26], "little", signed=True)
    data[22:26] = (-abs(height)).to_bytes(4, "little", signed=True)
    assert image_shape(_write(tmp_path / "td.bmp", bytes(data))) == (37, 53)


# --- errors --------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file") as info:
        read_image(tmp_path / "nope.png")
    assert info.value.source == str(tmp_path / "nope.png")
    with pytest.raises(InputError, match="no such file"):
        image_shape(tmp_path / "nope.tif")


def test_folder_is_not_an_image(tmp_path):
    folder = tmp_path / "dir.png"
    folder.mkdir()
    with pytest.raises(InputError, match="is a folder"):
        read_image(folder)


@pytest.mark.parametrize("name", ["a.gif", "a.txt", "noext"])
def test_unsupported_suffix(tmp_path, name):
    path = _write(tmp_path / name, imagecodecs.png_encode(GREY8))
    with pytest.raises(InputError, match="unsupported image type"):
        read_image(path)


def test_empty_file(tmp_path):
    with pytest.raises(InputError, match="empty"):
        read_image(_write(tmp_path / "e.png", b""))


def test_not_an_image_at_all(tmp_path):
    path = _write(tmp_path / "text.tif", b"hello, this is text\n" * 10)
    with pytest.raises(InputError, match="not a valid TIFF image"):
        read_image(path)


@pytest.mark.parametrize(
    ("suffix", "encode"),
    [
        (".png", imagecodecs.png_encode),
        (".bmp", imagecodecs.bmp_encode),
        (".jpg", imagecodecs.jpeg8_encode),
    ],
)
@pytest.mark.parametrize("keep", [0.5, 0.1])
def test_truncated_images_are_input_errors(tmp_path, suffix, encode, keep):
    data = encode(RGB)
    path = _write(tmp_path / f"cut{suffix}", data[: max(16, int(len(data) * keep))])
    with pytest.raises(InputError, match="corrupt or truncated") as info:
        read_image(path)
    assert info.value.source == str(path)


@pytest.mark.parametrize("keep", [0.5, 0.02])
def test_truncated_tiff_is_an_input_error(tmp_path, keep):
    full = tmp_path / "full.tif"
    tifffile.imwrite(full, RGB)
    data = full.read_bytes()
    path = _write(tmp_path / "cut.tif", data[: int(len(data) * keep)])
    with pytest.raises(InputError, match="corrupt or truncated TIFF"):
        read_image(path)


def test_truncated_compressed_tiff_is_an_input_error(tmp_path):
    full = tmp_path / "full.tif"
    tifffile.imwrite(full, GREY16, compression="zlib")
    data = full.read_bytes()
    # the strip data precede the IFD tifffile writes last; cut into the middle of the file
    path = _write(tmp_path / "cut.tif", data[: len(data) // 2])
    with pytest.raises(InputError, match="corrupt or truncated TIFF"):
        read_image(path)


def test_corrupt_png_checksum(tmp_path):
    data = bytearray(imagecodecs.png_encode(RGB))
    idat = data.index(b"IDAT")
    data[idat + 20] ^= 0xFF  # flip compressed bytes: CRC and zlib both fail
    with pytest.raises(InputError, match="corrupt or truncated PNG"):
        read_image(_write(tmp_path / "bad.png", bytes(data)))


def test_image_shape_reports_corrupt_header_by_decoding(tmp_path):
    data = bytearray(imagecodecs.png_encode(RGB))
    data[12:16] = b"XXXX"  # no IHDR where the header parser expects it
    with pytest.raises(InputError, match="corrupt or truncated PNG"):
        image_shape(_write(tmp_path / "bad.png", bytes(data)))


# --- find_image ------------------------------------------------------------------------------
def test_image_suffixes():
    assert {".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp"} == set(IMAGE_SUFFIXES)
    assert all(s == s.lower() for s in IMAGE_SUFFIXES)


def test_find_image_exact_then_basename_then_stem(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (b / "cell_01.png").write_bytes(b"x")
    (a / "cell_01.TIF").write_bytes(b"x")
    (a / "cell_01.jpg").write_bytes(b"x")
    # exact name wins even in a later folder
    assert find_image("cell_01.png", [a, b]) == b / "cell_01.png"
    # sub-folders in the recorded name are dropped when the file is not there
    assert find_image("train/cell_01.png", [a, b]) == b / "cell_01.png"
    # same stem, any case and suffix: IMAGE_SUFFIXES order prefers .tif over .jpg
    assert find_image("CELL_01.bmp", [a]) == a / "cell_01.TIF"
    assert find_image("cell_01", a) == a / "cell_01.TIF"
    assert find_image("cell_02.png", [a, b]) is None
    assert find_image("cell_01.png", [tmp_path / "missing"]) is None


def test_find_image_case_insensitive_name_and_absolute(tmp_path):
    (tmp_path / "Smear.PNG").write_bytes(b"x")
    assert find_image("smear.png", [tmp_path]) == tmp_path / "Smear.PNG"
    assert find_image(tmp_path / "Smear.PNG", []) == tmp_path / "Smear.PNG"


def test_find_image_ignores_non_image_files_with_same_stem(tmp_path):
    (tmp_path / "x.json").write_bytes(b"{}")
    assert find_image("x.png", [tmp_path]) is None
    (tmp_path / "x.bmp").write_bytes(b"x")
    assert find_image("x.png", [tmp_path]) == tmp_path / "x.bmp"


def test_image_shape_reads_headers_only(tmp_path, monkeypatch):
    import napari_cellquant.core.io.images as images

    paths = [
        _write(tmp_path / "a.png", imagecodecs.png_encode(RGB)),
        _write(tmp_path / "a.bmp", imagecodecs.bmp_encode(RGB)),
        _write(tmp_path / "a.jpg", imagecodecs.jpeg8_encode(RGB)),
    ]
    tifffile.imwrite(tmp_path / "a.tif", RGB)
    paths.append(tmp_path / "a.tif")

    def no_decoding(path):
        raise AssertionError(f"{path} was decoded")

    monkeypatch.setattr(images, "read_image", no_decoding)
    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", no_decoding)
    assert [images.image_shape(p) for p in paths] == [(37, 53)] * 4

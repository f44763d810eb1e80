"""Pixel sizes and channel names from files tifffile writes with real metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from skimage import io as skio

from napari_cellquant.core.io.image_metadata import read_image_metadata


def test_ome_tiff_pixel_size_units_and_channel_names(tmp_path: Path) -> None:
    path = tmp_path / "field.ome.tif"
    tifffile.imwrite(
        path,
        np.zeros((2, 32, 40), np.uint16),
        ome=True,
        metadata={
            "axes": "CYX",
            "PhysicalSizeX": 325,
            "PhysicalSizeXUnit": "nm",
            "PhysicalSizeY": 0.33,
            "PhysicalSizeYUnit": "µm",
            "Channel": {"Name": ["DNA", "Histone"]},
        },
    )
    found = read_image_metadata(path)
    assert found.pixel_size_um == pytest.approx((0.33, 0.325))
    assert found.channel_names == ("DNA", "Histone") and found.source == "ome"


def test_ome_without_a_unit_is_in_micrometres_as_the_schema_says(tmp_path: Path) -> None:
    path = tmp_path / "a.ome.tiff"
    tifffile.imwrite(
        path,
        np.zeros((16, 16), np.uint8),
        ome=True,
        metadata={"axes": "YX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5},
    )
    assert read_image_metadata(path).pixel_size_um == pytest.approx((0.5, 0.5))


@pytest.mark.parametrize(
    "unit, expected", [("micron", 0.5), ("um", 0.5), ("nm", 0.0005), ("\\u00B5m", 0.5)]
)
def test_imagej_tiff_resolution_in_its_unit(tmp_path: Path, unit: str, expected: float) -> None:
    path = tmp_path / "ij.tif"
    tifffile.imwrite(
        path,
        np.zeros((16, 16), np.uint16),
        imagej=True,
        resolution=(2.0, 2.0),
        metadata={"unit": unit, "spacing": 3.0},
    )  # spacing is z: not used
    found = read_image_metadata(path)
    assert found.pixel_size_um == pytest.approx((expected, expected))
    assert found.source == "imagej"


def test_plain_tiff_resolution_in_centimetres(tmp_path: Path) -> None:
    path = tmp_path / "scope.tif"
    tifffile.imwrite(
        path,
        np.zeros((8, 8), np.uint8),
        resolution=(1e4 / 0.25, 1e4 / 0.2),
        resolutionunit="CENTIMETER",
    )
    assert read_image_metadata(path).pixel_size_um == pytest.approx((0.2, 0.25))


def test_print_resolutions_and_pictures_have_no_pixel_size(tmp_path: Path) -> None:
    photo = tmp_path / "photo.tif"
    tifffile.imwrite(
        photo, np.zeros((8, 8, 3), np.uint8), resolution=(72, 72), resolutionunit="INCH"
    )
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((8, 8), np.uint8))
    png = tmp_path / "a.png"
    skio.imsave(png, np.zeros((8, 8), np.uint8), check_contrast=False)
    for path in (photo, plain, png):
        assert read_image_metadata(path).pixel_size_um is None

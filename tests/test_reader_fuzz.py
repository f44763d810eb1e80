"""Readers fuzzed with hypothesis: whatever the bytes, only the project's error types come out.

Random bytes behind each format's magic number, valid files truncated or with bytes flipped,
valid headers that declare absurd sizes, and JSON / XML of the wrong shape go through every
public reader; each either returns annotations (or pixels) or raises a
:class:`~napari_cellquant.core.errors.CellquantError` whose message names the file.
"""

from __future__ import annotations

import io
import json
import struct
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from napari_cellquant.core.classes import BLOOD3
from napari_cellquant.core.errors import CellquantError
from napari_cellquant.core.io import read_annotations
from napari_cellquant.core.io.coco import read_coco
from napari_cellquant.core.io.images import read_image
from napari_cellquant.core.io.masks import read_color_map, read_label_image, read_masks_folder
from napari_cellquant.core.io.voc import read_voc

FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

MAGIC = {
    ".png": b"\x89PNG\r\n\x1a\n",
    ".tif": b"II*\x00",
    ".tiff": b"MM\x00*",
    ".jpg": b"\xff\xd8\xff",
    ".bmp": b"BM",
}


def _valid_files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    labels = np.zeros((24, 32), np.uint16)
    labels[4:10, 5:12], labels[14:20, 18:30] = 1, 2
    tif = io.BytesIO()
    tifffile.imwrite(tif, labels, compression="zlib")
    return {
        ".png": bytes(imagecodecs.png_encode(rgb)),
        ".tif": tif.getvalue(),
        ".jpg": bytes(imagecodecs.jpeg8_encode(rgb)),
        ".bmp": bytes(imagecodecs.bmp_encode(rgb)),
    }


VALID = _valid_files()


def _check(reader: Callable[[Path], object], path: Path) -> None:
    """Run ``reader``; anything but success or a CellquantError naming ``path`` fails."""
    try:
        reader(path)
    except CellquantError as exc:
        assert str(exc), "an error without a message"
        assert path.name in str(exc), f"the error does not name the file: {exc}"
    # any other exception propagates and fails the test, with hypothesis's minimal example


IMAGE_READERS: dict[str, Callable[[Path], object]] = {
    "read_image": read_image,
    "read_label_image": read_label_image,
    "read_color_map": lambda p: read_color_map(p, BLOOD3),
    "read_annotations": read_annotations,
    "read_annotations labels": lambda p: read_annotations(p, kind="labels"),
    "read_annotations colormap": lambda p: read_annotations(p, class_set="blood3"),
}


_FOLDER: list[Path] = []  # this module's scratch folder, under pytest's own temporary tree


@pytest.fixture(autouse=True, scope="module")
def _scratch(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Hypothesis calls a test many times in one function scope, so ``tmp_path`` cannot give
    each example its own folder; one module folder that pytest prunes with its other runs
    does, instead of a ``mkdtemp`` per example left behind in the system's temp."""
    _FOLDER[:] = [tmp_path_factory.mktemp("fuzz")]


def _write(data: bytes, suffix: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="example-", dir=_FOLDER[0]))
    path = folder / f"fuzz{suffix}"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("reader", sorted(IMAGE_READERS))
@FUZZ
@given(suffix=st.sampled_from(sorted(MAGIC)), body=st.binary(max_size=400), magic=st.booleans())
def test_random_bytes_as_images(reader: str, suffix: str, body: bytes, magic: bool) -> None:
    _check(IMAGE_READERS[reader], _write((MAGIC[suffix] if magic else b"") + body, suffix))


@pytest.mark.parametrize("reader", sorted(IMAGE_READERS))
@FUZZ
@given(
    suffix=st.sampled_from(sorted(VALID)),
    cut=st.floats(0.0, 1.0),
    flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=6),
)
@example(suffix=".tif", cut=1.0, flips=[(0.146484375, 1)])  # decoded less than declared
def test_truncated_and_corrupted_images(
    reader: str, suffix: str, cut: float, flips: list[tuple[float, int]]
) -> None:
    data = bytearray(VALID[suffix])
    for where, value in flips:
        data[min(int(where * len(data)), len(data) - 1)] = value
    data = data[: max(1, int(cut * len(data)))] if cut < 1 else data
    _check(IMAGE_READERS[reader], _write(bytes(data), suffix))


# --- valid headers, absurd sizes --------------------------------------------------------------
def _png(width: int, height: int, colour_type: int = 2) -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (
        MAGIC[".png"]
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _tiff(width: int, height: int, samples: int = 1) -> bytes:
    entries = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 8),
        (277, 3, 1, samples),
        (278, 4, 1, height),
        (279, 4, 1, 16),
    ]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries)
    return b"II*\x00" + struct.pack("<I", 24) + b"\0" * 16 + ifd + b"\0\0\0\0"


def _bmp(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 64, 0, 0, 54) + info + b"\0" * 64


def _jpeg(width: int, height: int) -> bytes:
    valid = VALID[".jpg"]
    at = valid.index(b"\xff\xc0")  # baseline frame header: length, precision, height, width
    return valid[: at + 5] + struct.pack(">HH", height, width) + valid[at + 9 :]


ABSURD = st.sampled_from(
    [
        (60_000, 60_000),
        (2**31 - 1, 2**31 - 1),
        (1, 2**31 - 1),
        (2**16 - 1, 2**16 - 1),
        (100_000, 3),
        (0, 100),
    ]
)


@pytest.mark.parametrize("make", [_png, _tiff, _bmp, _jpeg], ids=["png", "tif", "bmp", "jpg"])
@settings(max_examples=12, deadline=None, derandomize=True)
@given(size=ABSURD)
def test_headers_declaring_absurd_sizes_are_refused_before_allocating(make, size) -> None:
    width, height = size
    if make is _jpeg and max(size) > 65_535:
        width, height = min(width, 65_535), min(height, 65_535)
    suffix = {"_png": ".png", "_tiff": ".tif", "_bmp": ".bmp", "_jpeg": ".jpg"}[make.__name__]
    path = _write(make(width, height), suffix)
    for reader in (read_image, read_label_image, read_annotations):
        _check(reader, path)
    if width * height > 10**8:  # nothing that large may come back from a file this small
        with pytest.raises(CellquantError):
            read_image(path)


# --- JSON and XML of the wrong shape ------------------------------------------------------
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
VALUE = st.one_of(JSON, st.sampled_from([[], {}, "", -1, 0, 1e308, [1, 2], [[0, 0, 5, 5]]]))


@st.composite
def coco_like(draw: st.DrawFn) -> dict:
    """A dict with COCO's keys whose values are mostly plausible and sometimes not."""
    image = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "id": st.one_of(st.integers(-2, 3), VALUE),
                "file_name": st.one_of(st.just("a.png"), VALUE),
                "width": st.one_of(st.integers(-5, 10**12), VALUE),
                "height": st.one_of(st.integers(-5, 10**12), VALUE),
            },
        )
    )
    annotation = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "id": VALUE,
                "image_id": st.one_of(st.just(1), VALUE),
                "category_id": st.one_of(st.just(1), VALUE),
                "bbox": st.one_of(st.lists(st.floats(allow_nan=True), max_size=5), VALUE),
                "segmentation": st.one_of(
                    st.lists(st.lists(st.floats(-10, 1e6), max_size=10), max_size=2),
                    st.fixed_dictionaries(
                        {"size": VALUE, "counts": st.one_of(st.text(max_size=20), VALUE)}
                    ),
                    VALUE,
                ),
                "area": VALUE,
                "iscrowd": VALUE,
                "score": VALUE,
            },
        )
    )
    category = draw(
        st.fixed_dictionaries(
            {},
            optional={"id": st.one_of(st.just(1), VALUE), "name": st.one_of(st.just("rbc"), VALUE)},
        )
    )
    data = {
        "images": draw(st.one_of(st.just([image]), VALUE)),
        "annotations": draw(st.one_of(st.just([annotation]), VALUE)),
        "categories": draw(st.one_of(st.just([category]), VALUE)),
    }
    return {k: v for k, v in data.items() if draw(st.booleans()) or k != "categories"}


@pytest.mark.parametrize("reader", ["read_coco", "read_annotations"])
@FUZZ
@given(data=st.one_of(coco_like(), JSON))
def test_json_of_the_wrong_shape(reader: str, data: object) -> None:
    path = _write(json.dumps(data).encode(), ".json")
    _check(read_coco if reader == "read_coco" else read_annotations, path)


@FUZZ
@given(data=st.binary(max_size=300), bom=st.booleans())
def test_json_files_that_are_not_json(data: bytes, bom: bool) -> None:
    path = _write((b"\xef\xbb\xbf" if bom else b"") + data, ".json")
    _check(read_coco, path)
    _check(read_annotations, path)


@st.composite
def geojson_like(draw: st.DrawFn) -> object:
    """A QuPath-shaped FeatureCollection whose members are mostly plausible and sometimes not."""
    ring = st.lists(st.lists(st.floats(-5, 1e6) | st.just(float("nan")), max_size=3), max_size=6)
    geometry = st.fixed_dictionaries(
        {},
        optional={
            "type": st.one_of(
                st.sampled_from(["Polygon", "MultiPolygon", "Point", "LineString"]), VALUE
            ),
            "coordinates": st.one_of(
                st.lists(ring, max_size=2), st.lists(st.lists(ring, max_size=2), max_size=2), VALUE
            ),
        },
    )
    properties = st.fixed_dictionaries(
        {},
        optional={
            "classification": st.one_of(
                st.fixed_dictionaries(
                    {"name": st.one_of(st.sampled_from(["RBC", "WBC", "Tumor"]), VALUE)}
                ),
                VALUE,
            ),
            "measurements": st.one_of(
                st.dictionaries(st.text(max_size=6), VALUE, max_size=3), VALUE
            ),
            "cellquant": st.one_of(
                st.fixed_dictionaries({}, optional={"id": VALUE, "box": VALUE, "origin": VALUE}),
                VALUE,
            ),
        },
    )
    feature = st.fixed_dictionaries(
        {"type": st.just("Feature")},
        optional={
            "geometry": st.one_of(geometry, VALUE),
            "properties": st.one_of(properties, VALUE),
        },
    )
    features = draw(st.lists(feature, max_size=3))
    if draw(st.booleans()):
        return features
    return {"type": "FeatureCollection", "features": features}


@pytest.mark.parametrize("suffix", [".geojson", ".json"])
@FUZZ
@given(data=geojson_like())
def test_geojson_of_the_wrong_shape(suffix: str, data: object) -> None:
    import warnings

    path = _write(json.dumps(data).encode(), suffix)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skipped points, sizes taken from the extent
        _check(read_annotations, path)


@FUZZ
@given(
    cut=st.floats(0, 1),
    flips=st.lists(st.integers(0, 10**6), max_size=4),
    suffix=st.sampled_from([".zip", ".roi"]),
)
def test_imagej_rois_truncated_or_corrupted(cut: float, flips: list[int], suffix: str) -> None:
    import roifile

    square = np.array([[1, 1], [9, 1], [9, 7], [1, 7]])
    rois = [roifile.ImagejRoi.frompoints(square + k, name=f"rbc-{k + 1}") for k in range(2)]
    with tempfile.TemporaryDirectory() as folder:
        good = Path(folder) / f"a{suffix}"
        roifile.roiwrite(good, rois if suffix == ".zip" else rois[0])
        data = bytearray(good.read_bytes())
    for flip in flips:
        data[flip % len(data)] ^= 0xFF
    path = _write(bytes(data[: max(1, int(len(data) * cut))]), suffix)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _check(read_annotations, path)


XML_TEXT = st.one_of(
    st.text(max_size=6), st.sampled_from(["10", "-3", "nan", "1e400", "", "0", "a.png"])
)


@st.composite
def voc_like(draw: st.DrawFn) -> str:
    def element(tag: str) -> str:
        return f"<{tag}>{draw(XML_TEXT)}</{tag}>" if draw(st.booleans()) else ""

    size = (
        "<size>" + element("width") + element("height") + element("depth") + "</size>"
        if draw(st.booleans())
        else ""
    )
    objects = "".join(
        "<object>"
        + element("name")
        + (
            "<bndbox>" + "".join(element(t) for t in ("xmin", "ymin", "xmax", "ymax")) + "</bndbox>"
            if draw(st.booleans())
            else ""
        )
        + "</object>"
        for _ in range(draw(st.integers(0, 3)))
    )
    text = "<annotation>" + element("filename") + size + objects + "</annotation>"
    if draw(st.booleans()):  # cut it somewhere
        text = text[: draw(st.integers(0, len(text)))]
    return text


@pytest.mark.parametrize("reader", ["read_voc", "read_annotations"])
@FUZZ
@given(text=st.one_of(voc_like(), st.text(max_size=200)))
def test_xml_of_the_wrong_shape(reader: str, text: str) -> None:
    path = _write(text.encode("utf-8", "surrogatepass"), ".xml")
    _check(read_voc if reader == "read_voc" else read_annotations, path)


# --- masks folders -------------------------------------------------------------------------
@FUZZ
@given(
    instances=st.binary(max_size=200),
    classes_json=st.one_of(JSON.map(json.dumps), st.text(max_size=40)),
    valid_instances=st.booleans(),
    with_partner=st.booleans(),
)
def test_masks_folders_with_broken_members(
    instances: bytes, classes_json: str, valid_instances: bool, with_partner: bool
) -> None:
    folder = Path(tempfile.mkdtemp(prefix="masks-", dir=_FOLDER[0]))
    (folder / "a_instances.tif").write_bytes(
        VALID[".tif"] if valid_instances else MAGIC[".tif"] + instances
    )
    if with_partner:
        (folder / "a_classes.tif").write_bytes(instances if valid_instances else VALID[".tif"])
    (folder / "classes.json").write_text(classes_json, encoding="utf-8", errors="surrogatepass")
    _check(read_masks_folder, folder)
    _check(read_annotations, folder)

"""Pascal VOC XML reading and writing: conventions, class sets, image size, real data, errors."""

from __future__ import annotations

import json
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_cellquant.core.annotation import Annotation, Boxes
from napari_cellquant.core.classes import BLOOD3, NET4
from napari_cellquant.core.errors import InputError, OutputExistsError
from napari_cellquant.core.io.coco import read_coco, write_coco
from napari_cellquant.core.io.voc import looks_like_voc, read_voc, write_voc


def _voc(
    objects: str = "",
    *,
    filename: str = "img.jpg",
    size: str = "<width>40</width><height>30</height><depth>3</depth>",
) -> str:
    return (
        f"<annotation><folder>x</folder><filename>{filename}</filename>"
        f"<size>{size}</size><segmented>0</segmented>{objects}</annotation>"
    )


def _obj(name: str, xmin, ymin, xmax, ymax, extra: str = "") -> str:
    return (
        f"<object><name>{name}</name>{extra}<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
        f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
    )


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------
def test_read_one_file_boxes_flags_scores(tmp_path):
    text = _voc(
        _obj("dead", 2, 3, 12, 9, "<truncated>1</truncated><difficult>0</difficult>")
        + _obj("NET", 0, 0, 40, 30, "<difficult>1</difficult><score>0.75</score>")
    )
    (ann,) = read_voc(_write(tmp_path / "a.xml", text))
    assert ann.image_name == "img.jpg"
    assert ann.shape == (30, 40) and ann.instance_ids().size == 0
    assert ann.class_set is NET4  # names are a subset of net4
    np.testing.assert_array_equal(ann.boxes.xywh, [[2, 3, 10, 6], [0, 0, 40, 30]])
    np.testing.assert_array_equal(ann.boxes.class_ids, [2, 1])
    np.testing.assert_array_equal(ann.boxes.scores, [np.nan, 0.75])
    assert ann.meta["difficult"] == [False, True]
    assert ann.meta["truncated"] == [True, False]
    assert ann.meta["declared_size"] == (30, 40) and ann.meta["depth"] == 3
    assert ann.image_path is None


def test_read_folder_shares_one_class_set(tmp_path):
    _write(tmp_path / "b.xml", _voc(_obj("WBC", 1, 1, 5, 5), filename="b.jpg"))
    _write(
        tmp_path / "a.xml",
        _voc(_obj("Platelets", 1, 1, 5, 5) + _obj("RBC", 2, 2, 6, 6), filename="a.jpg"),
    )
    _write(tmp_path / "notes.txt", "not xml")
    anns = read_voc(tmp_path)
    assert [a.image_name for a in anns] == ["a.jpg", "b.jpg"]  # sorted by file
    # BCCD's spellings are blood3's classes (rbc, wbc, platelet)
    assert anns[0].class_set.name == "blood3"
    assert anns[0].class_set is anns[1].class_set
    np.testing.assert_array_equal(anns[0].boxes.class_ids, [3, 1])
    np.testing.assert_array_equal(anns[1].boxes.class_ids, [2])
    _write(tmp_path / "c.xml", _voc(_obj("Echinocyte", 1, 1, 5, 5), filename="c.jpg"))
    # names outside every built-in set: a set of the names, alphabetical
    assert read_voc(tmp_path)[0].class_set.names == ("Echinocyte", "Platelets", "RBC", "WBC")


def test_read_with_class_set_is_case_insensitive(tmp_path):
    path = _write(tmp_path / "a.xml", _voc(_obj("wbc", 1, 1, 5, 5) + _obj("RBC", 1, 1, 5, 5)))
    (ann,) = read_voc(path, class_set=BLOOD3)
    assert ann.class_set is BLOOD3
    np.testing.assert_array_equal(ann.boxes.class_ids, [2, 1])


def _mismatch_setup(tmp_path: Path, objects: str, xml: str = "small.xml") -> Path:
    """A VOC file declaring 40x30 in voc/, its image (10x15, w x h) in ../images."""
    (tmp_path / "images").mkdir(exist_ok=True)
    tifffile.imwrite(tmp_path / "images" / "small.tif", np.zeros((15, 10), np.uint8))
    voc_dir = tmp_path / "voc"
    voc_dir.mkdir(exist_ok=True)
    return _write(voc_dir / xml, _voc(objects, filename="small.tif"))


def test_image_size_mismatch_rescales_boxes_reaching_beyond_the_image(tmp_path):
    # the second box reaches x 20 > 10: drawn on a larger original
    path = _mismatch_setup(tmp_path, _obj("NET", 0, 0, 8, 6) + _obj("NET", 4, 6, 20, 30))
    with pytest.warns(
        UserWarning,
        match=r"small\.xml: image small\.tif is 10x15 .* 40x30.*"
        r"x 0\.25, y 0\.5 \(objects reach x 20, y 30, beyond",
    ):
        (ann,) = read_voc(path)  # found in ../images
    assert ann.image_path == tmp_path / "images" / "small.tif"
    assert ann.shape == (15, 10)
    np.testing.assert_array_equal(ann.boxes.xywh, [[0, 0, 2, 3], [1, 3, 4, 12]])
    assert ann.meta["size_mismatch"] == "rescaled"
    assert ann.meta["rescaled_from"] == (30, 40) and ann.meta["scale"] == (0.5, 0.25)


def test_image_size_mismatch_keeps_boxes_that_all_fit_the_image(tmp_path):
    # every box lies inside the 10x15 image (the last one within the 1-pixel tolerance)
    path = _mismatch_setup(tmp_path, _obj("NET", 1, 2, 9, 14) + _obj("dead", 0, 0, 10.5, 15))
    with pytest.warns(
        UserWarning,
        match=r"small\.xml: image small\.tif is 10x15 \(width x height\) but the annotations "
        r"declare 40x30; all objects lie inside the image, so their coordinates are taken as "
        r"image pixels and the declared size is ignored",
    ) as record:
        (ann,) = read_voc(path)
    assert len(record) == 1
    assert ann.shape == (15, 10)
    np.testing.assert_array_equal(ann.boxes.xywh, [[1, 2, 8, 12], [0, 0, 10.5, 15]])
    assert ann.meta["size_mismatch"] == "kept" and ann.meta["declared_size"] == (30, 40)
    assert "scale" not in ann.meta and "rescaled_from" not in ann.meta


def test_image_size_mismatch_forced(tmp_path):
    inside = _mismatch_setup(tmp_path, _obj("NET", 2, 2, 10, 14))
    with pytest.warns(UserWarning, match=r"\(size_mismatch='rescale'\)"):
        (ann,) = read_voc(inside, size_mismatch="rescale")
    np.testing.assert_array_equal(ann.boxes.xywh, [[0.5, 1, 2, 6]])
    assert ann.meta["size_mismatch"] == "rescaled"
    beyond = _mismatch_setup(tmp_path, _obj("NET", 2, 2, 30, 14), xml="beyond.xml")
    with pytest.warns(UserWarning, match="size_mismatch='keep', so their coordinates are taken"):
        (ann,) = read_voc(inside, size_mismatch="keep")
    np.testing.assert_array_equal(ann.boxes.xywh, [[2, 2, 8, 12]])
    with pytest.raises(InputError, match=r"size_mismatch='keep'.*x 30, y 14, beyond") as info:
        read_voc(beyond, size_mismatch="keep")
    assert info.value.source == str(beyond)
    with pytest.raises(InputError, match="unknown size_mismatch 'never'"):
        read_voc(beyond, size_mismatch="never")


def test_looks_like_voc(tmp_path):
    good = _write(tmp_path / "a.xml", _voc())
    assert looks_like_voc(good)
    assert looks_like_voc(tmp_path)
    assert not looks_like_voc(_write(tmp_path / "b.xml", "<svg></svg>"))
    assert not looks_like_voc(_write(tmp_path / "c.xml", "<annotation"))
    assert not looks_like_voc(_write(tmp_path / "d.json", '{"images": []}'))
    assert not looks_like_voc(tmp_path / "missing.xml")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not looks_like_voc(empty)


# ------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------
def test_write_boxes_and_instance_bboxes_then_read_back(tmp_path):
    labels = np.zeros((30, 40), dtype=np.int32)
    labels[5:9, 10:20] = 7
    labels[20:30, 0:3] = 2
    ann = Annotation(
        labels,
        NET4,
        classes={7: 3, 2: 4},
        scores={7: 0.5},
        boxes=Boxes([[1.25, 2, 3.5, 4], [0, 0, 40, 30]], [2, 1], [0.9, np.nan]),
        image_name="sub/one.png",
        meta={"difficult": [True, False], "truncated": [False, True]},
    )
    (path,) = write_voc([ann], tmp_path / "out")
    assert path == tmp_path / "out" / "one.xml"
    root = ET.parse(path).getroot()
    assert root.findtext("filename") == "sub/one.png"
    assert root.findtext("size/width") == "40" and root.findtext("size/height") == "30"
    assert [o.findtext("instance_id") for o in root.iter("object")] == [None, None, "2", "7"]
    assert looks_like_voc(path)
    (back,) = read_voc(path)
    assert back.class_set is NET4
    np.testing.assert_array_equal(
        back.boxes.xywh, [[1.25, 2, 3.5, 4], [0, 0, 40, 30], [0, 20, 3, 10], [10, 5, 10, 4]]
    )
    np.testing.assert_array_equal(back.boxes.class_ids, [2, 1, 4, 3])
    np.testing.assert_array_equal(back.boxes.scores, [0.9, np.nan, np.nan, 0.5])
    assert back.meta["difficult"] == [True, False, False, False]
    assert back.meta["truncated"] == [False, True, False, False]


def test_write_refuses_overwrite_and_writes_nothing(tmp_path):
    a = Annotation.empty((5, 5), NET4, image_name="a.png")
    b = Annotation.empty((5, 5), NET4, image_name="b.png")
    (tmp_path / "b.xml").write_text("old")
    with pytest.raises(OutputExistsError):
        write_voc([a, b], tmp_path)
    assert not (tmp_path / "a.xml").exists()  # refused before writing anything
    assert (tmp_path / "b.xml").read_text() == "old"
    paths = write_voc([a, b], tmp_path, overwrite=True)
    assert [p.name for p in paths] == ["a.xml", "b.xml"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.xml", "b.xml"]


def test_write_errors(tmp_path):
    a = Annotation.empty((5, 5), NET4, image_name="x.png")
    with pytest.raises(InputError, match=r"same file: x.xml"):
        write_voc([a, a.copy(image_name="x.jpg")], tmp_path)
    with pytest.raises(InputError, match="no image_name"):
        write_voc([a.copy(image_name="")], tmp_path)
    unclassed = Annotation(np.ones((3, 3), dtype=np.int32), NET4, image_name="u.png")
    with pytest.raises(InputError, match=r"u.png.*no class"):
        write_voc([unclassed], tmp_path)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("<annotation><filename>a.jpg</filename>", "invalid XML"),
        ("<svg/>", "root element is <svg>"),
        (_voc(size=""), "no <width>"),
        ("<annotation><filename>a.jpg</filename></annotation>", "no <size>"),
        (_voc(size="<width>0</width><height>30</height>"), "not a positive pixel size"),
        (_voc(filename=""), "no <filename>"),
        (_voc("<object><name>NET</name></object>"), r"object 1 \(NET\) has no <bndbox>"),
        (_voc("<object><bndbox/></object>"), "object 1 has no <name>"),
        (_voc(_obj("NET", 1, "two", 5, 5)), "<ymin> is not a number: 'two'"),
        (_voc(_obj("NET", 1, 1, 5, "nan")), "<ymax> is not finite"),
        (_voc("<object><name>NET</name><bndbox><xmin>1</xmin></bndbox></object>"), "no <ymin>"),
        (_voc(_obj("NET", 8, 1, 5, 5)), "below xmin/ymin"),
        (_voc(_obj("NET", 30, 1, 42, 5)), "outside the 40x30 image"),
        (_voc(_obj("NET", -2, 1, 5, 5)), "outside"),
        (_voc(_obj("NET", 1, 1, 5, 5, "<difficult>yes</difficult>")), "<difficult> is not a"),
    ],
)
def test_malformed_voc_is_an_input_error_naming_the_file(tmp_path, text, match):
    path = _write(tmp_path / "bad.xml", text)
    with pytest.raises(InputError, match=match) as info:
        read_voc(path)
    assert info.value.source == str(path)


def test_box_within_one_pixel_tolerance_is_kept(tmp_path):
    (ann,) = read_voc(_write(tmp_path / "a.xml", _voc(_obj("NET", -1, 0, 41, 30.5))))
    np.testing.assert_array_equal(ann.boxes.xywh, [[-1, 0, 42, 30.5]])


def test_unknown_class_for_given_class_set(tmp_path):
    path = _write(tmp_path / "a.xml", _voc(_obj("NET", 1, 1, 5, 5) + _obj("zombie", 1, 1, 5, 5)))
    with pytest.raises(InputError, match=r"a.xml: class 'zombie' is not in class set 'net4'"):
        read_voc(path, class_set=NET4)


def test_missing_file_and_empty_folder(tmp_path):
    with pytest.raises(InputError, match=r"missing.xml: file not found"):
        read_voc(tmp_path / "missing.xml")
    with pytest.raises(InputError, match=r"no .xml files"):
        read_voc(tmp_path)


# ------------------------------------------------------------------------------------------
# real data (skipped where ../shared/data is absent)
# ------------------------------------------------------------------------------------------
@pytest.fixture
def net_dir(shared_data: Path) -> Path:
    """The NET set in ``../shared/data`` (``shared_data`` skips when that is absent)."""
    net = shared_data / "net_fluorescence"
    if not ((net / "voc").is_dir() and (net / "coco.json").is_file()):
        pytest.skip("shared NET data not present")
    return net


def _sorted_boxes(boxes: Boxes) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort(boxes.xywh.T[::-1])
    return boxes.xywh[order], boxes.class_ids[order]


def _by_name(anns: list[Annotation]) -> dict[str, Annotation]:
    return {a.image_name: a for a in anns}


@pytest.mark.shared_data
def test_real_net_voc_matches_coco(net_dir):
    """The convention xywh = (xmin, ymin, xmax - xmin, ymax - ymin) reproduces coco.json, and
    the boxes, which all fit the 1024x768 JPEGs, are kept as their pixels (not rescaled)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the size warning of coco.json is tested in test_coco
        from_coco = _by_name(read_coco(net_dir / "coco.json"))
    with pytest.warns(UserWarning, match="1024x768") as record:
        from_voc = _by_name(read_voc(net_dir / "voc"))
    messages = [str(w.message) for w in record]
    assert len(messages) == 2
    assert all("1920x1440" in m and "declared size is ignored" in m for m in messages)
    assert from_voc.keys() == from_coco.keys() and len(from_voc) == 2
    assert sum(len(a.boxes) for a in from_voc.values()) == 43
    for name, voc_ann in from_voc.items():
        assert voc_ann.class_set is NET4
        assert voc_ann.image_path == net_dir / "images" / name
        assert voc_ann.shape == (768, 1024)
        assert voc_ann.meta["size_mismatch"] == "kept" and "scale" not in voc_ann.meta
        voc_xywh, voc_classes = _sorted_boxes(voc_ann.boxes)
        coco_xywh, coco_classes = _sorted_boxes(from_coco[name].boxes)
        np.testing.assert_array_equal(voc_xywh, coco_xywh)
        np.testing.assert_array_equal(voc_classes, coco_classes)
    # the boxes are exactly the raw JSON numbers, inside the JPEGs
    raw = json.loads((net_dir / "coco.json").read_text())
    raw_boxes = sorted(tuple(a["bbox"]) for a in raw["annotations"])
    voc_boxes = sorted(
        tuple(float(v) for v in row) for a in from_voc.values() for row in a.boxes.xywh
    )
    np.testing.assert_array_equal(voc_boxes, raw_boxes)
    xywh = np.array(voc_boxes)
    assert (xywh[:, 0] + xywh[:, 2]).max() == 1024 and (xywh[:, 1] + xywh[:, 3]).max() <= 768


@pytest.mark.shared_data
def test_real_net_voc_to_coco_and_back(net_dir, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from_voc = read_voc(net_dir / "voc")
    path = write_coco(from_voc, tmp_path / "net.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # written at the real size: nothing to rescale
        back = _by_name(read_coco(path, images_dir=net_dir / "images"))
    for ann in from_voc:
        again = back[ann.image_name]
        assert again.class_set is NET4 and again.shape == ann.shape
        assert again.image_path == net_dir / "images" / ann.image_name
        np.testing.assert_array_equal(again.boxes.xywh, ann.boxes.xywh)
        np.testing.assert_array_equal(again.boxes.class_ids, ann.boxes.class_ids)
    # and VOC written from those annotations reads back to the same boxes
    written = write_voc(from_voc, tmp_path / "voc")
    for ann, again in zip(from_voc, read_voc(tmp_path / "voc", images_dir=net_dir / "images")):
        assert again.image_name == ann.image_name
        np.testing.assert_allclose(again.boxes.xywh, ann.boxes.xywh, atol=1e-4)
    assert len(written) == 2

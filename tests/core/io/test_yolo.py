"""YOLO (Ultralytics) boxes: reading, writing, round trip, class names and bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage import io as skio

from napari_cellquant.core.annotation import Annotation, Boxes
from napari_cellquant.core.classes import BLOOD3, NET4, canonical_name, get_class_set
from napari_cellquant.core.errors import InputError, OutputExistsError
from napari_cellquant.core.io import detect_kind, read_annotations, write_annotations
from napari_cellquant.core.io.yolo import read_yolo, write_yolo


def _dataset(
    root: Path,
    lines: dict[str, str],
    *,
    names: str = "names: [WBC, RBC, Platelets]\n",
    shape: tuple[int, int] = (48, 64),
) -> Path:
    """A small Ultralytics layout: data.yaml, images/train/*.png, labels/train/*.txt."""
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "data.yaml").write_text(f"path: .\ntrain: images/train\n{names}")
    for stem, text in lines.items():
        skio.imsave(
            root / "images" / "train" / f"{stem}.png",
            np.zeros((*shape, 3), dtype=np.uint8),
            check_contrast=False,
        )
        (root / "labels" / "train" / f"{stem}.txt").write_text(text)
    return root


def test_reads_boxes_in_pixels_and_maps_names_onto_blood3(tmp_path: Path) -> None:
    root = _dataset(tmp_path, {"a": "1 0.5 0.5 0.25 0.5\n0 0.25 0.25 0.125 0.25 0.9\n"})
    for source in (root / "data.yaml", root, root / "labels", root / "labels" / "train"):
        assert detect_kind(source) == "yolo"
        (ann,) = read_annotations(source)
        assert ann.class_set is BLOOD3
        assert ann.shape == (48, 64)
        assert ann.counts() == {"rbc": 1, "wbc": 1, "platelet": 0}
        np.testing.assert_allclose(ann.boxes.xywh, [[24, 12, 16, 24], [12, 6, 8, 12]])
        assert ann.boxes.scores[1] == pytest.approx(0.9) and np.isnan(ann.boxes.scores[0])
        assert ann.image_path == root / "images" / "train" / "a.png"


def test_class_names_from_a_dict_or_classes_txt(tmp_path: Path) -> None:
    root = _dataset(
        tmp_path / "d",
        {"a": "2 0.5 0.5 0.1 0.1\n"},
        names="names:\n  0: NET\n  1: dead\n  2: unstimulated\n",
    )
    (ann,) = read_yolo(root / "data.yaml")
    assert ann.class_set is NET4 and ann.counts()["unstimulated"] == 1
    other = _dataset(tmp_path / "t", {"b": "0 0.5 0.5 0.1 0.1\n"}, names="")
    (other / "data.yaml").unlink()
    (other / "labels" / "classes.txt").write_text("Thrombocytes\nRed Blood Cells\n")
    (ann,) = read_yolo(other / "labels")
    assert ann.class_set is BLOOD3 and ann.counts()["platelet"] == 1


def test_spellings_real_data_uses() -> None:
    assert [BLOOD3.id_of(n) for n in ("RBC", "WBC", "Platelets", "thrombocyte")] == [1, 2, 3, 3]
    assert canonical_name("Red blood cells") == "rbc"
    assert canonical_name("Lymphocytes") == "lymphocyte"
    with pytest.raises(Exception, match="not in class set"):
        BLOOD3.id_of("neutrophil")


def test_round_trip_is_lossless(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    image = tmp_path / "img.png"
    skio.imsave(image, np.zeros((301, 457, 3), dtype=np.uint8), check_contrast=False)
    xy = rng.uniform(0, 200, (40, 2))
    wh = rng.uniform(1, 100, (40, 2))
    boxes = Boxes(np.column_stack([xy, wh]), rng.integers(1, 4, 40), rng.uniform(0, 1, 40))
    labels = np.zeros((301, 457), dtype=np.int32)
    labels[10:20, 400:430] = 1  # an instance is written as its box
    original = Annotation(
        labels,
        BLOOD3,
        classes={1: 2},
        scores={1: 0.5},
        boxes=boxes,
        image_name="img.png",
        image_path=image,
    )
    written = write_yolo([original], tmp_path / "out")
    assert tmp_path / "out" / "images" / "img.png" in written
    (back,) = read_annotations(tmp_path / "out" / "data.yaml")
    assert back.class_set is BLOOD3 and back.shape == (301, 457)
    np.testing.assert_allclose(back.boxes.xywh[0], [400, 10, 30, 10], atol=1e-6)
    np.testing.assert_allclose(back.boxes.xywh[1:], boxes.xywh, atol=1e-6)
    np.testing.assert_array_equal(back.boxes.class_ids, [2, *boxes.class_ids])
    np.testing.assert_allclose(back.boxes.scores[1:], boxes.scores, atol=1e-6)
    with pytest.raises(OutputExistsError):
        write_annotations([original], tmp_path / "out", to="yolo")
    write_annotations([original], tmp_path / "out", to="yolo", overwrite=True)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 0.5 0.5 0.1\n", "line 1: expected 'class cx cy w h"),
        ("1 0.5 0.5 0.1 0.1\n1 a 0.5 0.1 0.1\n", "line 2: not numbers"),
        ("7 0.5 0.5 0.1 0.1\n", "line 1: class 7 outside 0..2"),
        ("1 0.95 0.5 0.3 0.1\n", "line 1: box .* lies outside the image"),
        ("1 0.5 0.5 -0.1 0.1\n", "sizes >= 0"),
        ("1 0.1 0.1 0.2 0.1 0.3 0.2 0.4\n", "polygon"),
    ],
)
def test_bad_label_files_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    root = _dataset(tmp_path, {"bad": text})
    with pytest.raises(InputError, match=message) as caught:
        read_annotations(root / "data.yaml")
    assert "bad.txt" in str(caught.value)


def test_missing_image_and_names_are_clear_errors(tmp_path: Path) -> None:
    root = _dataset(tmp_path, {"a": "1 0.5 0.5 0.1 0.1\n"})
    (root / "images" / "train" / "a.png").unlink()
    with pytest.raises(InputError, match="no image beside it"):
        read_annotations(root)
    (root / "data.yaml").unlink()
    with pytest.raises(InputError, match=r"no data\.yaml or classes\.txt"):
        read_yolo(root / "labels")


@pytest.mark.shared_data
def test_txl_pbc_val_reads_with_its_published_counts(shared_data: Path) -> None:
    val = read_annotations(shared_data / "txl_pbc" / "labels" / "val")
    assert len(val) == 239 and val[0].class_set is BLOOD3
    totals = {k: sum(a.counts()[k] for a in val) for k in ("rbc", "wbc", "platelet")}
    assert totals == {"rbc": 3817, "wbc": 253, "platelet": 133}


@pytest.mark.shared_data
def test_bccd_voc_reads_as_blood3(shared_data: Path) -> None:
    anns = read_annotations(shared_data / "bccd" / "voc", class_set=get_class_set("blood3"))
    assert len(anns) == 292
    totals = {k: sum(a.counts()[k] for a in anns) for k in ("rbc", "wbc", "platelet")}
    assert totals == {"rbc": 3350, "wbc": 301, "platelet": 292}
    assert read_annotations(shared_data / "bccd" / "voc")[0].class_set is BLOOD3


def test_yolo_data_trains_like_any_format(tmp_path: Path) -> None:
    """`cellquant train --annotations data.yaml` finds the images and maps the classes."""
    from napari_cellquant.core.models.registry import get_card
    from napari_cellquant.core.training import load_training_pairs, make_sample

    root = _dataset(tmp_path, {"a": "1 0.5 0.5 0.25 0.5\n2 0.25 0.25 0.125 0.25\n"})
    ((image, annotation),) = load_training_pairs(None, root / "data.yaml")
    assert image.shape[:2] == annotation.shape == (48, 64)
    sample = make_sample(image, annotation, get_card("blood-detector"))
    np.testing.assert_array_equal(sample.boxes.class_ids, [1, 3])

"""Counts per class and derived figures on hand-countable synthetic annotations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_cellquant.core.annotation import Annotation, Boxes
from napari_cellquant.core.classes import BLOOD3, BLOOD10, NET4
from napari_cellquant.core.errors import OutputExistsError
from napari_cellquant.core.quantify import (
    COLUMNS,
    count_table,
    image_area_mm2,
    instance_class_counts,
    quantify_annotation,
    table_to_csv,
    write_count_table,
)


def _grid_labels(n: int, shape=(100, 100)) -> np.ndarray:
    """``n`` 4x4 squares with ids 1..n on a grid."""
    labels = np.zeros(shape, dtype=np.int32)
    for k in range(n):
        r, c = divmod(k, 10)
        labels[r * 8 : r * 8 + 4, c * 8 : c * 8 + 4] = k + 1
    return labels


def _value(rows, group, name, column="after"):
    (row,) = [r for r in rows if r["group"] == group and r["name"] == name]
    return row[column]


def test_parasitaemia_is_3_of_12_and_wbc_differential():
    cs = BLOOD10
    labels = _grid_labels(20)
    classes = {k: cs.id_of("healthy_rbc") for k in range(1, 10)}
    classes.update({k: cs.id_of("infected_rbc") for k in (10, 11, 12)})
    classes.update({k: cs.id_of("neutrophil") for k in (13, 14, 15)})
    classes.update({16: cs.id_of("lymphocyte"), 17: cs.id_of("platelet")})
    # 18..20 have no class
    rows = quantify_annotation(Annotation(labels, cs, classes, image_name="a.png"))
    assert _value(rows, "parasitaemia", "infected_rbc") == pytest.approx(25.0)
    assert _value(rows, "wbc_differential", "neutrophil") == pytest.approx(75.0)
    assert _value(rows, "wbc_differential", "lymphocyte") == pytest.approx(25.0)
    assert _value(rows, "wbc_differential", "monocyte") == 0.0
    assert _value(rows, "count", "unclassified") == 3
    assert _value(rows, "count", "total") == 20
    assert _value(rows, "percent", "healthy_rbc") == pytest.approx(45.0)
    assert all(math.isnan(r["before"]) for r in rows)
    assert {r["image"] for r in rows} == {"a.png"}


def test_net_percent_counts_boxes_and_instances_with_density():
    cs = NET4
    labels = _grid_labels(2)
    ann = Annotation(
        labels,
        cs,
        {1: 1, 2: 3},
        boxes=Boxes(np.ones((6, 4)), [1, 1, 2, 2, 3, 4], None),
    )
    rows = quantify_annotation(ann, pixel_size_um=10.0)  # 100x100 px of 10 um = 1 mm^2
    assert _value(rows, "count", "NET") == 3
    assert _value(rows, "net_percent", "NET") == pytest.approx(100 * 3 / 8)
    assert _value(rows, "density", "total") == pytest.approx(8.0)
    assert image_area_mm2((100, 200), (0.5, 2.0)) == pytest.approx(0.02)


def test_before_and_after_and_empty_shares():
    after = {"rbc": 0, "wbc": 0, "platelet": 0}
    rows = count_table("x", BLOOD3, after, {"rbc": 8, "wbc": 2, "platelet": 0})
    assert _value(rows, "percent", "rbc", "before") == pytest.approx(80.0)
    assert math.isnan(_value(rows, "percent", "rbc"))
    assert not any(r["group"] in ("parasitaemia", "net_percent") for r in rows)


def test_instance_counts_ignore_absent_ids_and_classes_outside_the_set():
    labels = _grid_labels(3)
    counts = instance_class_counts(labels, [1, 2, 3, 50], [2, 9, 2, 1], n_classes=3)
    np.testing.assert_array_equal(counts, [1, 0, 2, 0])


def test_csv_is_written_atomically_and_not_overwritten(tmp_path):
    rows = count_table("img", BLOOD3, {"rbc": 3, "wbc": 1, "platelet": 0})
    path = write_count_table(rows, tmp_path / "counts.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS)
    assert "img,percent,rbc,,75,%" in lines
    with pytest.raises(OutputExistsError):
        write_count_table(rows, path)
    write_count_table(rows[:1], path, overwrite=True)
    assert path.read_text() == table_to_csv(rows[:1])


def test_net_area_is_the_pixels_net_regions_cover_and_their_share_of_the_field():
    from napari_cellquant.core.classes import NET_AREA
    from napari_cellquant.core.quantify import figure_rows, instance_class_totals

    labels = np.zeros((100, 200), dtype=np.int32)
    labels[10:30, 10:60] = 1  # 1000 px
    labels[50:60, 100:150] = 2  # 500 px
    annotation = Annotation(labels, NET_AREA, {1: 1, 2: 1}, image_name="field.png")
    objects, pixels = instance_class_totals(labels, [1, 2], [1, 1], 1)
    np.testing.assert_array_equal(objects, [0, 2])
    np.testing.assert_array_equal(pixels, [0, 1500])
    rows = quantify_annotation(annotation, pixel_size_um=0.5)
    assert _value(rows, "net_area", "pixels") == 1500
    assert _value(rows, "net_area", "field_share") == pytest.approx(7.5)
    assert _value(rows, "net_area", "area") == pytest.approx(1500 * 0.25)  # um^2
    assert _value(rows, "count", "net_region") == 2
    figures = figure_rows(annotation)
    assert {r["group"] for r in figures} == {"percent", "net_area"}  # no counts, no um^2
    assert all(r["image"] == "field.png" for r in figures)


def test_area_rows_before_correction_are_unknown():
    from napari_cellquant.core.classes import NET_AREA

    rows = count_table(
        "f",
        NET_AREA,
        {"net_region": 2},
        {"net_region": 3},
        areas_px={"net_region": 40},
        field_px=400,
    )
    assert _value(rows, "net_area", "field_share") == pytest.approx(10.0)
    assert math.isnan(_value(rows, "net_area", "pixels", "before"))
    assert _value(rows, "count", "net_region", "before") == 3

"""The label audit behind ``benchmarks/accuracy.py``'s ``txl_pbc_val_audited`` set."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from napari_cellquant.core.annotation import Annotation, Boxes
from napari_cellquant.core.classes import get_class_set

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import accuracy  # noqa: E402


def _smear(name: str, boxes: list[tuple[float, ...]], classes: list[str]) -> Annotation:
    blood3 = get_class_set("blood3")
    return Annotation(
        labels=np.zeros((100, 120), np.int32),
        class_set=blood3,
        boxes=Boxes(np.array(boxes, float), [blood3.id_of(c) for c in classes]),
        image_name=name,
    )


def test_audit_corrects_the_named_box_only(tmp_path: Path) -> None:
    audit = tmp_path / "audit.csv"
    audit.write_text(
        "image,x,y,w,h,labelled,corrected,why\na.jpg,10,10,30,30,wbc,rbc,no nucleus\n",
        encoding="utf-8",
    )
    a = _smear("a.jpg", [(10.4, 9.6, 30, 30), (50, 50, 40, 40)], ["wbc", "wbc"])
    b = _smear("b.jpg", [(10, 10, 30, 30)], ["wbc"])
    fixed = accuracy.audited([a, b], audit)
    assert [x.image_name for x in fixed] == ["a.jpg", "b.jpg"]
    assert fixed[0].counts() == {"rbc": 1, "wbc": 1, "platelet": 0}
    assert fixed[1].counts() == {"rbc": 0, "wbc": 1, "platelet": 0}
    assert a.counts()["wbc"] == 2  # the input is left as it was


@pytest.mark.parametrize(
    "row",
    ["a.jpg,10,10,30,30,platelet,rbc,x", "a.jpg,12,10,30,30,wbc,rbc,x"],
    ids=["wrong class", "box 2 px off"],
)
def test_an_audit_row_that_matches_no_box_is_an_error(tmp_path: Path, row: str) -> None:
    audit = tmp_path / "audit.csv"
    audit.write_text(f"image,x,y,w,h,labelled,corrected,why\n{row}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"audit\.csv:2: no single"):
        accuracy.audited([_smear("a.jpg", [(10, 10, 30, 30)], ["wbc"])], audit)


def test_txl_pbc_val_audit_matches_the_real_labels(shared_data: Path) -> None:
    """Every row of the shipped audit finds its box in TXL-PBC val, and only those images'
    counts change, by the rows' corrections."""
    from napari_cellquant.core.io import read_annotations

    truth = read_annotations(shared_data / "txl_pbc" / "labels" / "val")
    fixed = accuracy.audited(truth, accuracy.TXL_PBC_VAL_AUDIT)
    changed = {
        a.image_name: (a.counts()["wbc"], f.counts()["wbc"])
        for a, f in zip(truth, fixed)
        if a.counts() != f.counts()
    }
    assert changed == {
        "027b917d-c172-5be9-8dba-6bd4ef20d22d.jpg": (2, 1),
        "3e08ca80-08dd-5b2c-b91e-60539d5b6a04.jpg": (2, 1),
        "666561c9-bbd8-5434-ad54-fc0e5edd8186.jpg": (2, 1),
        "8eb4116f-d294-568b-b716-95f15bb218e8.jpg": (2, 1),
        "d17b8459-f618-58ef-9fad-f8f95dd66cc6.jpg": (0, 1),
    }

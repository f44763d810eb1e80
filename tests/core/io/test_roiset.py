"""ImageJ / Fiji ROI sets through roifile: exact round trip, Fiji's own ROIs, bad files."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import roifile
from skimage import io as skio

from napari_cellquant.core.annotation import Annotation, Boxes
from napari_cellquant.core.classes import BLOOD3
from napari_cellquant.core.errors import InputError, OutputExistsError
from napari_cellquant.core.io import detect_kind, read_annotations, write_annotations
from napari_cellquant.core.io.roiset import read_roiset
from napari_cellquant.core.synthetic import synthetic_blood_smear


def _prediction() -> tuple[np.ndarray, Annotation]:
    image, truth = synthetic_blood_smear((160, 192), seed=7)
    truth.labels[60:63, 60:63] = 0  # a hole: a composite ROI
    ids = truth.instance_ids()
    ann = truth.copy(
        origins={int(i): "model" for i in ids},
        scores={int(i): 0.25 + (int(i) % 5) / 8 for i in ids},
        boxes=Boxes([[3.5, 4.0, 10.0, 7.25], [20, 30, 5, 5]], [1, 3], [0.9, np.nan]),
        image_name="smear.png",
    )
    ann.classes = {i: c for i, c in ann.classes.items() if i in set(ids.tolist())}
    return image, ann


def test_round_trip_is_exact_and_fiji_reads_the_rois(tmp_path: Path) -> None:
    image, ann = _prediction()
    skio.imsave(tmp_path / "smear.png", image, check_contrast=False)
    (path,) = write_annotations([ann], tmp_path, to="roiset")
    assert path.name == "smear_RoiSet.zip" and detect_kind(path) == "roiset"
    with zipfile.ZipFile(path) as z:
        assert all(n.endswith(".roi") for n in z.namelist())
    (back,) = read_annotations(path)
    np.testing.assert_array_equal(back.labels, ann.labels)
    assert (back.classes, back.scores, back.origins) == (ann.classes, ann.scores, ann.origins)
    np.testing.assert_array_equal(back.boxes.xywh, ann.boxes.xywh)
    rois = roifile.roiread(path)
    kinds = {roi.roitype for roi in rois}
    assert roifile.ROI_TYPE.TRACED in kinds and any(roi.composite for roi in rois)
    first = rois[0]
    class_name = ann.class_set.name_of(ann.classes[int(ann.instance_ids()[0])])
    assert first.name == f"{class_name}-{ann.instance_ids()[0]}"
    assert first.properties["class"] == class_name
    assert first.stroke_color[1:] == bytes(
        ann.class_set.color_of(ann.classes[int(ann.instance_ids()[0])])
    )


def test_reads_rois_as_fiji_makes_them(tmp_path: Path) -> None:
    """Fiji's Analyze Particles names ROIs ``slice-y-x`` and gives them no class."""
    rois = []
    for x, y in [(2, 2), (12, 4)]:
        roi = roifile.ImagejRoi.frompoints(
            np.array([[x, y], [x + 6, y], [x + 6, y + 5], [x, y + 5]]), name=f"0001-{y:04d}-{x:04d}"
        )
        roi.roitype = roifile.ROI_TYPE.POLYGON
        rois.append(roi)
    oval = roifile.ImagejRoi(
        roitype=roifile.ROI_TYPE.OVAL, left=20, top=2, right=30, bottom=12, name="0001-0007-0025"
    )
    line = roifile.ImagejRoi(roitype=roifile.ROI_TYPE.LINE, x1=0, y1=0, x2=5, y2=5, name="line")
    path = tmp_path / "cells_RoiSet.zip"
    roifile.roiwrite(path, [*rois, oval, line])
    skio.imsave(tmp_path / "cells.tif", np.zeros((20, 40), np.uint8), check_contrast=False)
    with pytest.warns(UserWarning, match="1 ROI.*lines or points"):
        (ann,) = read_roiset(path)
    assert ann.image_name == "cells.tif" and ann.shape == (20, 40)
    assert ann.class_set.name == "cell" and ann.counts() == {"cell": 3}
    areas = sorted(np.bincount(ann.labels.ravel())[1:].tolist())
    assert areas[:2] == [30, 30] and 70 < areas[2] < 86  # a 10 px circle: pi * 25


def test_class_from_the_name_maps_onto_blood3(tmp_path: Path) -> None:
    rois = [
        roifile.ImagejRoi.frompoints(
            np.array([[0, 0], [4, 0], [4, 4], [0, 4]]) + 6 * k, name=f"{name}-{k + 1}"
        )
        for k, name in enumerate(["RBC", "WBC", "Platelets"])
    ]
    path = tmp_path / "a.zip"
    roifile.roiwrite(path, rois)
    with pytest.warns(UserWarning, match="no image found"):
        (ann,) = read_roiset(path)
    assert ann.class_set == BLOOD3 and ann.counts() == {"rbc": 1, "wbc": 1, "platelet": 1}


def test_refuses_to_overwrite_and_names_bad_files(tmp_path: Path) -> None:
    _, ann = _prediction()
    write_annotations([ann], tmp_path / "one.zip", to="roiset")
    with pytest.raises(OutputExistsError):
        write_annotations([ann], tmp_path / "one.zip", to="roiset")
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("x.roi", b"not a roi")
    with pytest.raises(InputError, match=r"bad\.zip.*not a readable ImageJ ROI"):
        read_roiset(bad)
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("x.txt", "hello")
    with pytest.raises(InputError, match="not an ImageJ ROI set"):
        detect_kind(other)

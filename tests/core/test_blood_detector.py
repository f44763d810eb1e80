"""The bundled blood-detector on a real BCCD photograph: counts, editable instances, its own
scale at other magnifications, and its card."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.transform import rescale

from napari_cellquant.core.classes import BLOOD3
from napari_cellquant.core.io import read_annotations
from napari_cellquant.core.io.images import read_image
from napari_cellquant.core.models.registry import BUNDLED_DIR, get_card, weights_status
from napari_cellquant.core.predict import load_model, predict
from napari_cellquant.demo import SAMPLES_DIR

PHOTO = SAMPLES_DIR / "BloodImage_00000.jpg"  # BCCD, MIT; not in TXL-PBC train


@pytest.fixture(scope="module")
def model():
    return load_model("blood-detector", "cpu")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return read_image(PHOTO)


@pytest.fixture(scope="module")
def found(model, photo):
    """The detector's objects in its own blood3 (its WBC typed in blood7 by wbc-types:
    tests/core/test_wbc_types.py)."""
    return predict(photo, model).mapped_to(BLOOD3)


def test_card_is_bundled_compact_and_says_where_its_figures_come_from() -> None:
    card = get_card("blood-detector")
    assert weights_status(card) == "bundled" and card.class_set == "blood3"
    assert (BUNDLED_DIR / "blood-detector.pt").stat().st_size < 8e6  # fp16 on disk
    figures = card.metrics["txl_pbc_val"]
    assert "never trained or tuned on" in figures["measured_on"] and figures["images"] == 239
    for key in ("map50", "wbc_exact", "platelet_mae", "rbc_total_error", "rbc_median_error"):
        assert isinstance(figures[key], float)
    assert "ellipse" in card.training["masks"]


def test_counts_the_photo_like_its_annotation(found) -> None:
    (truth,) = read_annotations(PHOTO.with_suffix(".xml"))
    counts = found.counts()
    assert counts["wbc"] == truth.counts()["wbc"] == 1
    # BCCD leaves some RBCs unboxed (19 boxed here): at least those, and not twice as many
    assert 17 <= counts["rbc"] <= 30
    assert counts["platelet"] <= 2
    assert found.meta["diameter_source"] == "estimated"
    assert 80 < found.meta["diameter_px"] < 120  # BCCD's RBCs: about 100 px across


def test_every_object_is_an_editable_mask_with_class_and_score(found) -> None:
    (truth,) = read_annotations(PHOTO.with_suffix(".xml"))
    ids = found.instance_ids()
    assert len(ids) == sum(found.counts().values()) and len(found.boxes) == 0
    assert set(found.classes) == set(ids.tolist()) == set(found.scores)
    assert all(0 < s <= 1 for s in found.scores.values())
    wbc = [i for i, c in found.classes.items() if c == found.class_set.id_of("wbc")]
    area = (found.labels == wbc[0]).sum()
    _, _, w, h = truth.boxes.xywh[truth.boxes.class_ids == truth.class_set.id_of("wbc")][0]
    assert 0.7 * np.pi / 4 * w * h < area < 1.3 * np.pi / 4 * w * h  # the ellipse in its box


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_scale_is_measured_at_other_magnifications(model, photo, found, factor) -> None:
    resized = np.rint(
        rescale(
            photo.astype(np.float32),
            factor,
            channel_axis=-1,
            preserve_range=True,
            anti_aliasing=factor < 1,
        )
    ).astype(np.uint8)
    other = predict(resized, model).mapped_to(BLOOD3)
    assert other.meta["diameter_px"] == pytest.approx(found.meta["diameter_px"] * factor, rel=0.15)
    assert other.counts()["wbc"] == 1
    # cells cut by the border come and go with the scale: within a quarter
    assert abs(other.counts()["rbc"] - found.counts()["rbc"]) <= 0.25 * found.counts()["rbc"]
    assert other.shape == resized.shape[:2]


@pytest.mark.gpu
def test_cuda_with_amp_and_channels_last_counts_as_the_cpu(photo, found) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here")
    on_gpu = predict(photo, load_model("blood-detector", "cuda")).mapped_to(BLOOD3)
    assert on_gpu.counts() == found.counts()
    assert on_gpu.meta["diameter_px"] == pytest.approx(found.meta["diameter_px"], rel=0.02)
    overlap = ((on_gpu.labels > 0) & (found.labels > 0)).sum()
    assert overlap / max((found.labels > 0).sum(), 1) > 0.97


def _field_with_cut_cells(whole: float, cut: float, n_whole: int, n_cut: int):
    """A 400 x 400 field: ``n_whole`` RBC boxes of side ``whole`` inside, ``n_cut`` of side
    ``cut`` against the left edge (cells the frame cuts)."""
    from napari_cellquant.core.annotation import Annotation, Boxes

    inside = [[60 + 70 * (i % 4), 60 + 70 * (i // 4), whole, whole] for i in range(n_whole)]
    edge = [[0, 40 + 60 * i, cut, whole] for i in range(n_cut)]
    xywh = np.array(inside + edge, dtype=np.float64)
    boxes = Boxes(xywh, np.full(len(xywh), BLOOD3.id_of("rbc")))
    return Annotation(np.zeros((400, 400), np.int32), BLOOD3, boxes=boxes)


def test_whole_cell_diameter_leaves_out_cells_the_frame_cuts(script) -> None:
    blood = script("blood_detector")
    field = _field_with_cut_cells(whole=50, cut=12, n_whole=5, n_cut=6)
    # the median of every box is pulled down by the six cut cells
    assert blood.rbc_diameter(field) < 40
    assert blood.rbc_diameter(field, uncut=True) == pytest.approx(50)
    # trained so that the median of every box is 40 px, a whole cell is larger by that ratio
    expected = 40 * 50 / blood.rbc_diameter(field)
    assert blood.whole_cell_diameter([field, field], 40.0) == pytest.approx(expected, abs=0.05)
    assert blood.rbc_diameter(_field_with_cut_cells(50, 12, 2, 4), uncut=True) is None


def test_the_card_states_the_whole_rbc_at_model_scale(shared_data, script) -> None:
    """The card's diameter is TXL-PBC train's whole cells at the scale the network learned."""
    from napari_cellquant.core.models.registry import BLOOD_DETECTOR_RBC_PX

    blood = script("blood_detector")
    annotations = read_annotations(shared_data / "txl_pbc" / "labels" / "train")
    measured = blood.whole_cell_diameter(annotations, BLOOD_DETECTOR_RBC_PX)
    stated = get_card("blood-detector").diameter_px["rbc"]
    assert measured == pytest.approx(stated, abs=0.5)
    assert stated > BLOOD_DETECTOR_RBC_PX * 1.05  # the edge's cut cells made the old 40 px small


def test_a_rewritten_card_keeps_what_retraining_does_not_change(tmp_path, script) -> None:
    """Rewriting the bundled card with new weights' figures keeps the weight-free sibling's
    figures on the same images and the pretrained-vs-scratch recipe comparison, and drops
    the old weights' own figures."""
    import argparse
    import shutil

    blood = script("blood_detector")
    bundled = BUNDLED_DIR / "blood-detector.json"
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir(), work.mkdir()
    earlier = get_card("blood-detector")
    earlier.metrics["bccd_unseen"] = {"map50": 0.1}  # a figure of the old weights
    earlier.save(out / "blood-detector.json")
    shutil.copy(bundled, work / "trained.json")
    shutil.copy(BUNDLED_DIR / "blood-detector.pt", work / "trained.pt")
    trained = {
        "weights": work / "trained.pt",
        "card": work / "trained.json",
        "inner_val": ["a.jpg"] * 83,
        "train_s": 60.0,
    }
    new = {"images": 239, "map50": 0.5, "map50_ranked": 0.6}
    blood.write_card(trained, new, argparse.Namespace(out=out))

    old = earlier.metrics
    written = get_card(out / "blood-detector.json")
    val = written.metrics["txl_pbc_val"]
    assert val["map50"] == 0.5 and val["map50_ranked"] == 0.6 and "wbc_exact" not in val
    assert val["blood_classical_same_images"] == old["txl_pbc_val"]["blood_classical_same_images"]
    assert written.metrics["pretrained_vs_scratch"] == old["pretrained_vs_scratch"]
    assert "bccd_unseen" not in written.metrics
    assert written.training["time_s"] == 60 and (out / "blood-detector.pt").is_file()

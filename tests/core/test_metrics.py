"""Metrics against small cases worked out by hand, and `cellquant evaluate` as a user types it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_cellquant.cli import main
from napari_cellquant.core.annotation import Annotation, Boxes
from napari_cellquant.core.classes import BLOOD3, NET4
from napari_cellquant.core.errors import InputError
from napari_cellquant.core.io import write_annotations
from napari_cellquant.core.metrics import (
    box_iou_matrix,
    count_errors,
    evaluate,
    evaluate_boxes,
    evaluate_instances,
    mask_iou_pairs,
    semantic_iou,
)

RBC, WBC, PLATELET = 1, 2, 3


def _squares(*corners: tuple[int, int], shape=(40, 40), size=10) -> np.ndarray:
    """Label image with one ``size`` x ``size`` square per (row, col) corner, ids from 1."""
    labels = np.zeros(shape, dtype=np.int32)
    for i, (r, c) in enumerate(corners, start=1):
        labels[r : r + size, c : c + size] = i
    return labels


def _ann(labels, classes=None, name="a.png", scores=None, class_set=BLOOD3) -> Annotation:
    ids = [int(i) for i in np.unique(labels) if i]
    classes = classes or {i: RBC for i in ids}
    return Annotation(labels, class_set, classes=classes, scores=scores or {}, image_name=name)


@pytest.fixture
def exact_and_shifted():
    """Two GT squares; one predicted exactly, one shifted by half its height (IoU 50/150)."""
    gt = _ann(_squares((5, 5), (20, 20)))
    pred = _ann(_squares((5, 5), (25, 20)))
    return [gt], [pred]


def test_mask_iou_pairs_are_the_hand_worked_overlaps(exact_and_shifted):
    (gt,), (pred,) = exact_and_shifted
    g, p, iou = mask_iou_pairs(gt.labels, pred.labels)
    pairs = {(int(a), int(b)): v for a, b, v in zip(g, p, iou)}
    assert pairs.keys() == {(1, 1), (2, 2)}
    assert pairs[(1, 1)] == 1.0
    assert pairs[(2, 2)] == pytest.approx(1 / 3)


def test_mask_iou_with_huge_sparse_ids_and_many_objects():
    # ids far beyond the pixel count take the sorting path, not a lookup table
    gt = _squares((0, 0), (0, 20), shape=(30, 40)).astype(np.int64) * 1_000_000_007
    pred = np.zeros((30, 40), dtype=np.int64)
    pred[0:10, 0:5] = 7
    pred[0:10, 5:10] = 3_000_000_000
    g, p, iou = mask_iou_pairs(gt, pred)
    assert sorted(zip(g.tolist(), p.tolist(), np.round(iou, 6).tolist())) == [
        (1_000_000_007, 7, 0.5),
        (1_000_000_007, 3_000_000_000, 0.5),
    ]
    # 400 one-pixel objects on each side, shifted by one: every pixel its own pair
    many_gt = np.arange(1, 401, dtype=np.int32).reshape(20, 20)
    many_pred = np.roll(many_gt, 1, axis=1)
    g, p, iou = mask_iou_pairs(many_gt, many_pred)
    assert len(g) == 400 and np.all(iou == 1.0)
    assert np.all(p == many_pred.ravel()[np.searchsorted(many_gt.ravel(), g)])


def test_precision_recall_f1_at_iou_half(exact_and_shifted):
    gt, pred = exact_and_shifted
    result = evaluate_instances(gt, pred, iou=0.5)
    assert (result["tp"], result["fp"], result["fn"]) == (1, 1, 1)
    assert result["precision"] == 0.5 and result["recall"] == 0.5 and result["f1"] == 0.5
    assert result["per_class"]["rbc"]["precision"] == 0.5
    assert result["per_class"]["wbc"] == {
        "precision": None,
        "recall": None,
        "f1": None,
        "tp": 0,
        "fp": 0,
        "fn": 0,
        "gt": 0,
        "pred": 0,
    }
    assert result["mean_matched_iou"] == 1.0  # only the exact square is matched at 0.5
    # at IoU 0.3 the shifted square (IoU 1/3) counts too
    at_03 = evaluate_instances(gt, pred, iou=0.3)
    assert at_03["f1"] == 1.0
    assert at_03["mean_matched_iou"] == pytest.approx((1 + 1 / 3) / 2)
    # boxes of squares are the squares: the same figures
    boxes = evaluate_boxes(gt, pred, iou=0.5)
    assert (boxes["precision"], boxes["recall"]) == (0.5, 0.5)


def test_perfect_predictions_score_ap_one(exact_and_shifted):
    gt, _ = exact_and_shifted
    perfect = [_ann(gt[0].labels.copy(), scores={1: 0.9, 2: 0.8})]
    result = evaluate(gt, perfect)
    for kind in ("instances", "boxes"):
        assert result[kind]["ap"] == 1.0
        assert result[kind]["ap50"] == 1.0
        assert result[kind]["ap_per_class"]["rbc"] == {"ap": 1.0, "ap50": 1.0}
        assert result[kind]["ap_per_class"]["wbc"] == {"ap": None, "ap50": None}
        assert result[kind]["f1"] == 1.0
    assert result["semantic"]["mean_iou"] == 1.0


def test_ap_follows_score_ranking_as_worked_by_hand():
    # GT: two squares. Predictions by score: hit (0.9), miss (0.8), hit (0.7).
    # Precision/recall after each: (1, .5), (.5, .5), (2/3, 1). COCO's 101-point interpolated
    # precision is 1 for recall 0..0.50 (51 points) and 2/3 for 0.51..1.00 (50 points).
    gt = [_ann(_squares((0, 0), (20, 20)))]
    pred = [_ann(_squares((0, 0), (0, 25), (20, 20)), scores={1: 0.9, 2: 0.8, 3: 0.7})]
    expected = (51 * 1.0 + 50 * 2 / 3) / 101
    result = evaluate_instances(gt, pred)
    assert result["ap50"] == pytest.approx(expected)
    assert result["ap"] == pytest.approx(expected)  # exact hits: same at every IoU
    # without scores every prediction ranks 1: the miss may come first
    unscored = [_ann(pred[0].labels)]
    assert evaluate_instances(gt, unscored)["ap50"] == pytest.approx((51 * 1.0 + 50 * 2 / 3) / 101)


def test_matching_is_one_to_one_and_class_aware():
    gt = [_ann(_squares((0, 0), (0, 10)), classes={1: RBC, 2: WBC})]
    # one prediction spans both GT squares (IoU 1/2 with each): it may find only one
    wide = np.zeros((40, 40), dtype=np.int32)
    wide[0:10, 0:20] = 1
    result = evaluate_instances(gt, [_ann(wide, classes={1: WBC})], iou=0.5)
    assert (result["tp"], result["fp"], result["fn"]) == (1, 0, 1)
    assert result["per_class"]["wbc"]["tp"] == 1 and result["per_class"]["rbc"]["fn"] == 1
    # right place, wrong class: a miss class-aware, a hit class-agnostic
    swapped = [_ann(gt[0].labels, classes={1: WBC, 2: RBC})]
    result = evaluate_instances(gt, swapped)
    assert result["tp"] == 0 and result["class_agnostic"]["tp"] == 2


def test_semantic_iou_from_a_known_confusion():
    # 4 x 4 maps. GT: columns 0-1 rbc, 2-3 wbc. Prediction: columns 0-2 rbc, 3 wbc.
    # rbc: intersection 8, union 12 -> 2/3; wbc: intersection 4, union 8 -> 1/2.
    # Background and platelet occur on neither side and are left out.
    gt_map = np.array([[1, 1, 2, 2]] * 4)
    pred_map = np.array([[1, 1, 1, 2]] * 4)
    empty = np.zeros((4, 4), dtype=np.int32)
    gt = [Annotation(empty, BLOOD3, semantic=gt_map, image_name="m.png")]
    pred = [Annotation(empty, BLOOD3, semantic=pred_map, image_name="m.png")]
    result = semantic_iou(gt, pred)
    assert result["per_class"] == pytest.approx({"rbc": 2 / 3, "wbc": 1 / 2})
    assert result["mean_iou"] == pytest.approx(7 / 12)
    assert result["dice_per_class"] == pytest.approx({"rbc": 16 / 20, "wbc": 8 / 12})
    assert result["pixel_accuracy"] == pytest.approx(12 / 16)


def test_semantic_iou_from_instance_classes_pools_images():
    # without a semantic map the instances' classes are painted per pixel
    a_gt = _ann(_squares((0, 0), shape=(10, 20)), name="a.png")
    a_pred = _ann(_squares((0, 5), shape=(10, 20)), name="a.png")  # 50 of 100 px overlap
    b = _ann(_squares((0, 0), shape=(10, 20)), classes={1: WBC}, name="b.png")
    result = semantic_iou([a_gt, b], [a_pred, b])
    assert result["per_class"]["rbc"] == pytest.approx(50 / 150)
    assert result["per_class"]["wbc"] == 1.0
    # background: a has 100 GT / 100 predicted background px sharing 50, b shares all 100
    assert result["per_class"]["background"] == pytest.approx(150 / 250)
    assert result["mean_iou_foreground"] == pytest.approx((1 / 3 + 1) / 2)


def _blood_counts(n_rbc: int, n_wbc: int, name: str) -> Annotation:
    corners = [(0, 12 * i) for i in range(n_rbc + n_wbc)]
    labels = _squares(*corners, shape=(12, 72), size=10)
    classes = {i: (RBC if i <= n_rbc else WBC) for i in range(1, len(corners) + 1)}
    return Annotation(labels, BLOOD3, classes=classes, image_name=name)


def test_count_mae_over_two_images():
    # a: gt 3 rbc + 1 wbc, pred 2 rbc + 1 wbc; b: gt 2 rbc, pred 4 rbc + 1 wbc
    gt = [_blood_counts(3, 1, "a.png"), _blood_counts(2, 0, "b.png")]
    pred = [_blood_counts(2, 1, "a.png"), _blood_counts(4, 1, "b.png")]
    result = count_errors(gt, pred)
    assert result["gt"] == {"rbc": 5, "wbc": 1, "platelet": 0}
    assert result["pred"] == {"rbc": 6, "wbc": 2, "platelet": 0}
    assert result["mae_per_class"] == {"rbc": 1.5, "wbc": 0.5, "platelet": 0.0}
    assert result["mae_total"] == 2.0  # |4 - 3| and |2 - 5|
    assert result["per_image"][1] == {
        "image": "b.png",
        "gt": {"rbc": 2, "wbc": 0, "platelet": 0},
        "pred": {"rbc": 4, "wbc": 1, "platelet": 0},
    }
    assert "net_percent" not in result


def _net_boxes(classes: list[int], name: str, shift: float = 0.0) -> Annotation:
    xywh = [[40.0 * i + shift, 10.0, 30.0, 30.0] for i in range(len(classes))]
    return Annotation.empty(
        (60, 40 * len(classes) + 40), NET4, boxes=Boxes(xywh, classes), image_name=name
    )


def test_net_percent_error_and_box_figures_on_box_only_data():
    net, dead = 1, 2
    # image 1: gt 2 NET of 4 cells (50 %), pred 1 of 4 (25 %): 25 points off
    # image 2: gt 1 of 4 (25 %), pred 1 of 5 (20 %): 5 points off
    gt = [_net_boxes([net, net, dead, dead], "1.jpg"), _net_boxes([net, dead, dead, dead], "2.jpg")]
    pred = [
        _net_boxes([net, dead, dead, dead], "1.jpg"),
        _net_boxes([net, dead, dead, dead, dead], "2.jpg"),
    ]
    result = evaluate(gt, pred)
    rows = result["counts"]["net_percent"]
    assert [r["gt"] for r in rows] == [50.0, 25.0]
    assert [r["pred"] for r in rows] == [25.0, 20.0]
    assert [r["abs_error"] for r in rows] == pytest.approx([25.0, 5.0])
    assert result["counts"]["net_percent_mae"] == pytest.approx(15.0)
    # boxes in place: 7 of 8 GT found with the right class; 9 predicted
    boxes = result["boxes"]
    assert (boxes["tp"], boxes["fp"], boxes["fn"]) == (7, 2, 1)
    assert boxes["per_class"]["NET"]["recall"] == pytest.approx(2 / 3)
    assert boxes["class_agnostic"]["tp"] == 8
    assert result["instances"]["ap"] is None  # no masks on either side
    assert result["semantic"]["mean_iou"] is None


def test_box_iou_matrix_hand_worked():
    a = np.array([[0, 0, 10, 10], [100, 100, 4, 4]])
    b = np.array([[5, 0, 10, 10], [0, 0, 10, 10], [101, 101, 2, 2]])
    expected = np.array([[50 / 150, 1.0, 0.0], [0.0, 0.0, 4 / 16]])
    np.testing.assert_allclose(box_iou_matrix(a, b), expected)


def test_images_pair_by_stem_when_extensions_differ(exact_and_shifted):
    gt, pred = exact_and_shifted
    renamed = [pred[0].copy(image_name="a.tif")]
    assert evaluate_instances(gt, renamed)["precision"] == 0.5


def test_mismatched_inputs_give_clear_errors(exact_and_shifted):
    gt, pred = exact_and_shifted
    other = [pred[0].copy(image_name="other.png")]
    with pytest.raises(InputError, match=r"no prediction for 1 image\(s\): a.png.*other.png"):
        evaluate(gt, other)
    net = [Annotation.empty((40, 40), NET4, image_name="a.png")]
    with pytest.raises(InputError, match=r"class set 'net4'.*differs"):
        evaluate(gt, net)
    small = [_ann(np.ones((20, 20), dtype=np.int32))]
    with pytest.raises(InputError, match=r"a\.png: label images differ in shape"):
        evaluate_instances(gt, small)
    with pytest.raises(InputError, match="IoU threshold"):
        evaluate(gt, pred, iou=1.5)


def test_cli_prints_json_with_the_hand_worked_figures(exact_and_shifted, tmp_path, capsys):
    gt, pred = exact_and_shifted
    second_gt, second_pred = _blood_counts(3, 1, "b.png"), _blood_counts(2, 1, "b.png")
    write_annotations([gt[0], second_gt], tmp_path / "gt.json", to="coco", encoding="rle")
    # predictions as a masks folder: names differ by extension from the COCO file's
    write_annotations([pred[0], second_pred], tmp_path / "pred", to="masks")
    code = main(
        [
            "evaluate",
            "--gt",
            str(tmp_path / "gt.json"),
            "--pred",
            str(tmp_path / "pred"),
            "--iou",
            "0.5",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)  # nothing but the JSON object on stdout
    assert result["images"] == 2 and result["class_set"] == "blood3"
    # a: 1 of 2 found. b: the 2 predicted RBCs sit on GT RBCs; the predicted WBC sits on the
    # third GT RBC (wrong class: a miss), the GT WBC is not found.
    inst = result["instances"]
    assert (inst["tp"], inst["fp"], inst["fn"]) == (3, 2, 3)
    assert inst["precision"] == pytest.approx(3 / 5) and inst["recall"] == pytest.approx(3 / 6)
    assert inst["class_agnostic"]["tp"] == 4
    assert result["counts"]["mae_total"] == 0.5
    assert 0 < inst["ap50"] < 1 and 0 < result["semantic"]["mean_iou"] < 1


def test_cli_mismatched_images_exit_1_with_message(exact_and_shifted, tmp_path, capsys):
    gt, pred = exact_and_shifted
    write_annotations(gt, tmp_path / "gt.json", to="coco")
    write_annotations([pred[0].copy(image_name="z.png")], tmp_path / "pred.json", to="coco")
    code = main(
        ["evaluate", "--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "pred.json")]
    )
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out == ""
    assert "error:" in captured.err and "a.png" in captured.err and "z.png" in captured.err


def test_ap_equals_plain_pycocotools_on_a_crowded_image(tmp_path):
    # 12 x 12 objects per side (> SPLIT_ABOVE together): the image is scored in parts,
    # which must give exactly what pycocotools gives on the whole image
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(3)
    corners = [(14 * r, 14 * c) for r in range(12) for c in range(12)]
    gt_labels = _squares(*corners, shape=(170, 170), size=12)
    pred_labels = np.roll(gt_labels, 3, axis=int(rng.integers(0, 2)))  # IoU 9/15 = 0.6
    pred_labels[pred_labels % 5 == 0] = 0  # some objects missed
    ids = range(1, len(corners) + 1)
    gt = _ann(gt_labels, classes={i: int(rng.integers(1, 4)) for i in ids}, name="c.png")
    pred_classes = {i: (gt.classes[i] if rng.random() < 0.8 else WBC) for i in ids if i % 5}
    scores = {i: float(rng.random()) for i in pred_classes}
    pred = _ann(pred_labels, classes=pred_classes, scores=scores, name="c.png")
    result = evaluate_instances([gt], [pred])

    write_annotations([gt], tmp_path / "gt.json", to="coco", encoding="rle")
    write_annotations([pred], tmp_path / "pred.json", to="coco", encoding="rle")
    coco_gt = COCO(str(tmp_path / "gt.json"))
    coco_pred = coco_gt.loadRes(json.loads((tmp_path / "pred.json").read_text())["annotations"])
    reference = COCOeval(coco_gt, coco_pred, iouType="segm")
    reference.params.maxDets = [1, 10, 1000]
    reference.evaluate()
    reference.accumulate()
    precision = reference.eval["precision"][:, :, :, 0, -1]
    assert result["ap"] == pytest.approx(precision[precision > -1].mean())
    assert result["ap50"] == pytest.approx(precision[0][precision[0] > -1].mean())
    assert 0 < result["ap"] < result["ap50"] < 1


def test_mask_figures_are_null_against_box_only_truth():
    from napari_cellquant.core.annotation import Annotation, Boxes
    from napari_cellquant.core.classes import BLOOD3
    from napari_cellquant.core.metrics import evaluate

    truth = Annotation.empty(
        (40, 40), BLOOD3, image_name="a.png", boxes=Boxes([[5, 5, 10, 10]], [1])
    )
    labels = np.zeros((40, 40), dtype=np.int32)
    labels[5:15, 5:15] = 1
    found = Annotation(labels, BLOOD3, classes={1: 1}, scores={1: 0.9}, image_name="a.png")
    scores = evaluate([truth], [found])
    assert scores["instances"]["f1"] is None and scores["instances"]["ap"] is None
    assert scores["semantic"]["mean_iou"] is None
    assert scores["boxes"]["ap50"] == pytest.approx(1.0) and scores["boxes"]["f1"] == 1.0

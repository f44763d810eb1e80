"""Scores of predicted annotations against ground truth: AP, precision/recall/F1, IoU, counts.

Every function takes two lists of :class:`Annotation` (ground truth first), pairs them by image
file name and returns a plain, JSON-ready ``dict`` (floats, ints, strings, ``None`` where a
figure is undefined, e.g. precision with no prediction at all).

- :func:`evaluate_instances`: masks. AP and AP50 from pycocotools ``COCOeval`` (``segm``),
  and precision, recall and F1 at one IoU with one-to-one matching.
- :func:`evaluate_boxes`: boxes (each instance's bounding box plus the box-only objects).
  The same figures with ``COCOeval`` (``bbox``).
- :func:`semantic_iou`: per-class IoU and Dice of class maps, and their means.
- :func:`count_errors`: objects per class, count MAE over images, NET % error for NET data.
- :func:`evaluate`: all of the above in one dict (what ``cellquant evaluate`` prints).

Matching
    A prediction is a true positive when it overlaps a not yet matched ground-truth object of
    the same class with IoU >= ``iou``. Pairs are taken greedily from the highest IoU down,
    so each object is matched at most once (for ``iou`` > 0.5 this is the unique matching,
    since no object can overlap two others that much). ``class_agnostic`` gives the same
    figures ignoring classes: how well objects are found, whatever their class.

IoU of masks comes from the joint histogram of the two label images (one pass over the
pixels, only the pairs that overlap are kept), never from a loop over object pairs.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .annotation import Annotation
from .classes import ClassSet
from .errors import InputError

__all__ = [
    "box_iou_matrix",
    "count_errors",
    "evaluate",
    "evaluate_boxes",
    "evaluate_instances",
    "mask_iou_pairs",
    "match_pairs",
    "pair_annotations",
    "semantic_iou",
]

#: Name of the class whose share of all cells is the NET data's figure of merit.
NET_CLASS = "net"


# ------------------------------------------------------------------------------------------
# pairing ground truth with predictions
# ------------------------------------------------------------------------------------------
def _check_class_sets(gt: Sequence[Annotation], pred: Sequence[Annotation]) -> ClassSet:
    sets = [a.class_set for a in [*gt, *pred]]
    first = sets[0]
    names = tuple(n.lower() for n in first.names)
    for ann in [*gt, *pred]:
        if tuple(n.lower() for n in ann.class_set.names) != names:
            raise InputError(
                f"class set {ann.class_set.name!r} ({', '.join(ann.class_set.names)}) differs "
                f"from {first.name!r} ({', '.join(first.names)}); ground truth and predictions "
                "must use the same classes (name one with --classes)",
                source=ann.image_name or None,
            )
    return first


def _name_index(annotations: Sequence[Annotation], side: str) -> dict[str, Annotation]:
    index: dict[str, Annotation] = {}
    for i, ann in enumerate(annotations):
        if not ann.image_name:
            raise InputError(f"{side} annotation {i} has no image name to match it by")
        if ann.image_name in index:
            raise InputError(f"{side}: image {ann.image_name!r} appears twice")
        index[ann.image_name] = ann
    return index


def _by_stem(index: dict[str, Annotation]) -> dict[str, Annotation]:
    """The same index keyed by file stem, for names that differ only by extension."""
    stems: dict[str, Annotation] = {}
    for name, ann in index.items():
        stems.setdefault(Path(name.replace("\\", "/")).stem, ann)
    return stems


def pair_annotations(
    gt: Sequence[Annotation], pred: Sequence[Annotation]
) -> list[tuple[Annotation, Annotation]]:
    """Ground truth and prediction of each image, matched by image file name.

    Names match exactly, or else by stem (``a.jpg`` and ``a.png`` are one image, as when
    predictions were written as masks).

    Returns
    -------
    list of (Annotation, Annotation)
        Ground truth, prediction; in ground-truth order. The prediction carries the ground
        truth's ``image_name``.

    Raises
    ------
    InputError
        Either side is empty, an image is on one side only, or the class sets differ.
    """
    if not gt:
        raise InputError("no ground-truth annotations were given")
    if not pred:
        raise InputError("no predicted annotations were given")
    _check_class_sets(gt, pred)
    gt_index, pred_index = _name_index(gt, "ground truth"), _name_index(pred, "predictions")
    pred_stems = _by_stem(pred_index)
    pairs: list[tuple[Annotation, Annotation]] = []
    used: set[int] = set()
    missing: list[str] = []
    for name, truth in gt_index.items():
        found = pred_index.get(name) or pred_stems.get(Path(name.replace("\\", "/")).stem)
        if found is None or id(found) in used:
            missing.append(name)
            continue
        used.add(id(found))
        if found.image_name != name:
            found = replace(found, image_name=name)
        pairs.append((truth, found))
    extra = [a.image_name for a in pred if id(a) not in used]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"no prediction for {len(missing)} image(s): {', '.join(missing[:5])}")
        if extra:
            parts.append(f"no ground truth for {len(extra)} image(s): {', '.join(extra[:5])}")
        raise InputError("; ".join(parts))
    return pairs


# ------------------------------------------------------------------------------------------
# IoU and matching
# ------------------------------------------------------------------------------------------
def _compact(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, compact)``: the ids present (``ids[0] == 0``) and labels renumbered 0..n."""
    flat = labels.ravel()
    top = int(flat.max(initial=0))
    if top <= 4 * flat.size:  # a lookup table beats sorting every pixel
        ids = np.flatnonzero(np.bincount(flat, minlength=1))
        ids = np.r_[0, ids[ids != 0]]
        lookup = np.zeros(top + 1, dtype=np.int64)
        lookup[ids] = np.arange(len(ids))
        return ids, lookup[flat]
    ids, compact = np.unique(flat, return_inverse=True)
    if ids[0] != 0:
        ids, compact = np.r_[0, ids], compact + 1
    return ids, compact.astype(np.int64)


def mask_iou_pairs(
    gt_labels: np.ndarray, pred_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every overlapping (ground truth, prediction) pair of two label images.

    One joint histogram of the two images gives every intersection at once; object areas
    come from each image's own histogram.

    Returns
    -------
    gt_ids, pred_ids, iou
        Parallel arrays, one entry per pair that shares at least one pixel.
    """
    if gt_labels.shape != pred_labels.shape:
        raise InputError(
            f"label images differ in shape: ground truth {gt_labels.shape}, "
            f"prediction {pred_labels.shape}"
        )
    g_ids, g = _compact(gt_labels)
    p_ids, p = _compact(pred_labels)
    n_p = len(p_ids)
    g_area = np.bincount(g, minlength=len(g_ids))
    p_area = np.bincount(p, minlength=n_p)
    both = (g > 0) & (p > 0)
    joint = g[both] * n_p + p[both]
    if len(g_ids) * n_p <= 4 * joint.size + 1024:  # small table: one bincount
        table = np.bincount(joint, minlength=len(g_ids) * n_p)
        keys = np.flatnonzero(table)
        inter = table[keys]
    else:  # many objects: only the pairs that occur
        keys, inter = np.unique(joint, return_counts=True)
    gi, pi = keys // n_p, keys % n_p
    iou = inter / (g_area[gi] + p_area[pi] - inter)
    return g_ids[gi], p_ids[pi], iou.astype(np.float64)


def box_iou_matrix(a_xywh: np.ndarray, b_xywh: np.ndarray) -> np.ndarray:
    """``(len(a), len(b))`` IoU of two sets of ``x, y, w, h`` boxes (pixel-corner convention)."""
    a = np.asarray(a_xywh, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b_xywh, dtype=np.float64).reshape(-1, 4)
    ax1, ay1 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx1, by1 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    w = np.minimum(ax1[:, None], bx1[None]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(ay1[:, None], by1[None]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def overlapping_box_pairs(
    a_xywh: np.ndarray, b_xywh: np.ndarray, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(i, j)`` of the boxes ``a[i]`` and ``b[j]`` that share a positive area.

    Compared ``chunk`` rows of ``a`` at a time, so thousands of boxes need little memory.
    """
    a = np.asarray(a_xywh, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b_xywh, dtype=np.float64).reshape(-1, 4)
    bx1, by1 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    found_i, found_j = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for start in range(0, len(a), chunk):
        part = a[start : start + chunk]
        hit = (
            (part[:, None, 0] < bx1[None])
            & (b[None, :, 0] < (part[:, 0] + part[:, 2])[:, None])
            & (part[:, None, 1] < by1[None])
            & (b[None, :, 1] < (part[:, 1] + part[:, 3])[:, None])
        )
        i, j = np.nonzero(hit)
        found_i.append(i + start)
        found_j.append(j)
    return np.concatenate(found_i), np.concatenate(found_j)


def pair_box_intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Shared area of ``a[k]`` and ``b[k]`` for every row ``k`` (``x, y, w, h`` boxes)."""
    w = np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    h = np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    return np.clip(w, 0, None) * np.clip(h, 0, None)


def _pair_box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of ``a[k]`` with ``b[k]`` for every row ``k`` (``x, y, w, h`` boxes)."""
    inter = pair_box_intersection(a, b)
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def match_pairs(
    gt_ids: np.ndarray, pred_ids: np.ndarray, iou: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matches among candidate pairs, greedily from the highest IoU down.

    Parameters
    ----------
    gt_ids, pred_ids, iou
        Candidate pairs (e.g. from :func:`mask_iou_pairs`).
    threshold
        Pairs with IoU below it are never matched.

    Returns
    -------
    matched_gt, matched_pred, matched_iou
        The ids of the matched pairs and their IoU.
    """
    keep = iou >= threshold
    gt_ids, pred_ids, iou = gt_ids[keep], pred_ids[keep], iou[keep]
    order = np.lexsort((pred_ids, gt_ids, -iou))  # ties broken by id: reproducible
    used_gt: set[int] = set()
    used_pred: set[int] = set()
    taken = []
    for k, g, p in zip(order.tolist(), gt_ids[order].tolist(), pred_ids[order].tolist()):
        if g in used_gt or p in used_pred:  # loop over pairs only
            continue
        used_gt.add(g)
        used_pred.add(p)
        taken.append(k)
    at = np.asarray(taken, dtype=np.int64)
    return (
        gt_ids[at].astype(np.int64),
        pred_ids[at].astype(np.int64),
        np.asarray(iou, dtype=np.float64)[at],
    )


# ------------------------------------------------------------------------------------------
# precision / recall / F1
# ------------------------------------------------------------------------------------------
def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den > 0 else None


def _prf(tp: int, n_gt: int, n_pred: int) -> dict[str, Any]:
    return {
        "precision": _ratio(tp, n_pred),
        "recall": _ratio(tp, n_gt),
        "f1": _ratio(2 * tp, n_gt + n_pred),
        "tp": int(tp),
        "fp": int(n_pred - tp),
        "fn": int(n_gt - tp),
        "gt": int(n_gt),
        "pred": int(n_pred),
    }


class _Objects:
    """Objects of one image on one side: ids and their classes."""

    def __init__(self, ids: ArrayLike, classes: ArrayLike) -> None:
        self.ids = np.asarray(ids, dtype=np.int64)
        self.classes = np.asarray(classes, dtype=np.int64)

    def class_of(self, ids: np.ndarray) -> np.ndarray:
        """Classes of ``ids`` (all of which are among ``self.ids``, kept sorted)."""
        return self.classes[np.searchsorted(self.ids, ids)]


def _tally(
    images: list[tuple[_Objects, _Objects, tuple[np.ndarray, np.ndarray, np.ndarray]]],
    class_set: ClassSet,
    threshold: float,
) -> dict[str, Any]:
    """Precision, recall and F1 overall (class-aware), per class, and class-agnostic."""
    n = len(class_set) + 1
    tp = np.zeros(n, dtype=np.int64)
    n_gt = np.zeros(n, dtype=np.int64)
    n_pred = np.zeros(n, dtype=np.int64)
    tp_agnostic = 0
    matched_iou: list[np.ndarray] = []
    for gt_objs, pred_objs, (gi, pi, iou) in images:
        n_gt += np.bincount(gt_objs.classes, minlength=n)[:n]
        n_pred += np.bincount(pred_objs.classes, minlength=n)[:n]
        g_cls, p_cls = gt_objs.class_of(gi), pred_objs.class_of(pi)
        same = g_cls == p_cls
        mg, _, _ = match_pairs(gi[same], pi[same], iou[same], threshold)
        tp += np.bincount(gt_objs.class_of(mg), minlength=n)[:n]
        _, _, agnostic_iou = match_pairs(gi, pi, iou, threshold)
        tp_agnostic += len(agnostic_iou)
        matched_iou.append(agnostic_iou)
    # unclassed objects (class 0) can never be a class-aware match but still count as misses
    out = _prf(int(tp.sum()), int(n_gt.sum()), int(n_pred.sum()))
    out["iou_threshold"] = float(threshold)
    ious = np.concatenate(matched_iou) if matched_iou else np.zeros(0)
    #: StarDist's "mean matched score": how well the found objects fit, beside how many
    out["mean_matched_iou"] = float(ious.mean()) if len(ious) else None
    out["per_class"] = {
        name: _prf(int(tp[c]), int(n_gt[c]), int(n_pred[c]))
        for c, name in zip(class_set.ids, class_set.names)
    }
    out["class_agnostic"] = _prf(tp_agnostic, int(n_gt.sum()), int(n_pred.sum()))
    return out


def _instance_objects(ann: Annotation) -> _Objects:
    ids = ann.instance_ids()
    return _Objects(ids, [ann.classes.get(int(i), 0) for i in ids])


def instance_prf(
    pairs: Sequence[tuple[Annotation, Annotation]], class_set: ClassSet, iou: float = 0.5
) -> dict[str, Any]:
    """Precision, recall and F1 of instance masks at IoU ``iou`` (see the module notes)."""
    images = []
    for truth, pred in pairs:
        gt_objs, pred_objs = _instance_objects(truth), _instance_objects(pred)
        if not (len(gt_objs.ids) or len(pred_objs.ids)):
            continue  # box-only image: its label grids need not even agree in size
        try:
            candidates = mask_iou_pairs(truth.labels, pred.labels)
        except InputError as exc:
            raise InputError(exc.problem, source=truth.image_name) from None
        images.append((gt_objs, pred_objs, candidates))
    return _tally(images, class_set, iou)


def _all_boxes(ann: Annotation) -> tuple[np.ndarray, np.ndarray]:
    """``(xywh, class_ids)`` of every object: instance bounding boxes, then box-only objects."""
    from scipy import ndimage as ndi

    ids, compact = _compact(ann.labels)
    slices = ndi.find_objects(compact.reshape(ann.labels.shape))
    xywh = np.array(
        [
            [s[1].start, s[0].start, s[1].stop - s[1].start, s[0].stop - s[0].start]
            for s in slices
            if s is not None
        ],
        dtype=np.float64,
    ).reshape(-1, 4)
    classes = np.array([ann.classes.get(int(i), 0) for i in ids[1:]], dtype=np.int64)
    return (
        np.concatenate([xywh, ann.boxes.xywh]),
        np.concatenate([classes, ann.boxes.class_ids.astype(np.int64)]),
    )


def box_prf(
    pairs: Sequence[tuple[Annotation, Annotation]], class_set: ClassSet, iou: float = 0.5
) -> dict[str, Any]:
    """Precision, recall and F1 of boxes (instance extents and box-only objects) at ``iou``."""
    images = []
    for truth, pred in pairs:
        g_xywh, g_cls = _all_boxes(truth)
        p_xywh, p_cls = _all_boxes(pred)
        gi, pi = overlapping_box_pairs(g_xywh, p_xywh)
        images.append(
            (
                _Objects(np.arange(len(g_cls)), g_cls),
                _Objects(np.arange(len(p_cls)), p_cls),
                (gi, pi, _pair_box_iou(g_xywh[gi], p_xywh[pi])),
            )
        )
    return _tally(images, class_set, iou)


# ------------------------------------------------------------------------------------------
# COCOeval
# ------------------------------------------------------------------------------------------
def _coco_pair(pairs: Sequence[tuple[Annotation, Annotation]]) -> tuple[dict, dict]:
    """COCO dicts of ground truth and predictions with the same image ids (RLE masks).

    Predictions without a score get score 1, as COCOeval needs one to rank them.
    """
    from .io.coco import coco_dict

    gt_dict = coco_dict([g for g, _ in pairs], encoding="rle")
    pred_dict = coco_dict([p for _, p in pairs], encoding="rle")
    for entry in pred_dict["annotations"]:
        entry.setdefault("score", 1.0)
    return gt_dict, pred_dict


#: Images with more objects than this (ground truth plus predictions) are split for COCOeval.
SPLIT_ABOVE = 200
#: About how many objects each part of a split image holds.
SPLIT_PART = 64


def _split_crowded(
    gt_dict: dict, pred_dict: dict, above: int = SPLIT_ABOVE, part: int = SPLIT_PART
) -> tuple[dict, dict]:
    """COCO dicts whose crowded images are cut into parts that COCOeval scores identically.

    ``COCOeval.evaluateImg`` matches every prediction against every ground-truth object of
    an image in Python (IoU thresholds x predictions x objects): minutes for a smear with
    thousands of cells. Objects whose boxes do not overlap can never be matched to each
    other, so each connected group of overlapping (ground truth, prediction) boxes is
    independent; grouping them into parts of about ``part`` objects, each a separate COCO
    image, leaves every match, and so AP, unchanged (``maxDets`` is raised above any image's
    object count, so no cap applies). Only the order among predictions of *equal* score
    may differ, which COCOeval leaves arbitrary anyway. Images with at most ``above``
    objects are left whole.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    by_image: dict[int, tuple[list[dict], list[dict]]] = {
        im["id"]: ([], []) for im in gt_dict["images"]
    }
    for side, data in enumerate((gt_dict, pred_dict)):
        for ann in data["annotations"]:
            by_image[ann["image_id"]][side].append(ann)
    next_id = max(by_image, default=0) + 1
    images = {im["id"]: im for im in gt_dict["images"]}
    out_images: list[dict] = []
    out_anns: tuple[list[dict], list[dict]] = ([], [])
    for image_id, (gts, dts) in by_image.items():
        if len(gts) + len(dts) <= above:
            out_images.append(images[image_id])
            out_anns[0].extend(gts)
            out_anns[1].extend(dts)
            continue
        gt_boxes = np.array([a["bbox"] for a in gts], dtype=np.float64)
        dt_boxes = np.array([a["bbox"] for a in dts], dtype=np.float64)
        gi, di = overlapping_box_pairs(gt_boxes, dt_boxes)
        n = len(gts) + len(dts)
        graph = coo_matrix((np.ones(len(gi)), (gi, di + len(gts))), shape=(n, n))
        _, component = connected_components(graph, directed=False)
        sizes = np.bincount(component)
        part_of_component = (np.cumsum(sizes) - sizes) // part  # consecutive groups
        node_part = part_of_component[component]
        for k in np.unique(node_part):
            out_images.append({**images[image_id], "id": next_id})
            for side, anns in enumerate((gts, dts)):
                offset = 0 if side == 0 else len(gts)
                members = np.flatnonzero(node_part[offset : offset + len(anns)] == k)
                out_anns[side].extend({**anns[m], "image_id": next_id} for m in members)
            next_id += 1
    return (
        {**gt_dict, "images": out_images, "annotations": out_anns[0]},
        {**pred_dict, "images": out_images, "annotations": out_anns[1]},
    )


def _coco_ap(gt_dict: dict, pred_dict: dict, iou_type: str, class_set: ClassSet) -> dict[str, Any]:
    """AP (IoU 0.50:0.95) and AP50 from pycocotools COCOeval, overall and per class.

    Read from ``COCOeval.eval["precision"]`` (area range "all", the largest max-detections
    setting, raised above the most objects in any image so none is dropped) exactly as
    ``COCOeval.summarize`` does, without its printing. Crowded images are first split into
    independent parts (:func:`_split_crowded`) so COCOeval's Python matching stays fast.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def none_if_empty(values: np.ndarray) -> float | None:
        valid = values[values > -1]
        return float(valid.mean()) if valid.size else None

    per_image = np.bincount(
        [a["image_id"] for a in pred_dict["annotations"] + gt_dict["annotations"]] or [0]
    )
    gt_dict, pred_dict = _split_crowded(gt_dict, pred_dict)
    # pycocotools prints its progress on stdout, which carries the CLI's JSON
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt, coco_pred = COCO(), COCO()
        coco_gt.dataset, coco_pred.dataset = gt_dict, pred_dict
        coco_gt.createIndex()
        coco_pred.createIndex()
        evaluator = COCOeval(coco_gt, coco_pred, iouType=iou_type)
        evaluator.params.maxDets = [1, 10, max(100, int(per_image.max()))]
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # (iou, recall, class)
    iou_50 = int(np.argmin(np.abs(evaluator.params.iouThrs - 0.5)))
    per_class = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        per_class[class_set.name_of(int(cat_id))] = {
            "ap": none_if_empty(precision[:, :, k]),
            "ap50": none_if_empty(precision[iou_50, :, k]),
        }
    return {
        "ap": none_if_empty(precision),
        "ap50": none_if_empty(precision[iou_50]),
        "ap_per_class": per_class,
    }


def _without_boxes(data: dict) -> dict:
    """A COCO dict keeping only the instance masks (no box-only objects)."""
    keep = [a for a in data["annotations"] if not a.get("attributes", {}).get("box_only")]
    return {**data, "annotations": keep}


def _box_only_truth(pairs: Sequence[tuple[Annotation, Annotation]]) -> bool:
    """Truth that holds boxes and no masks (VOC, YOLO, the NET boxes): masks cannot be scored."""
    return any(len(t.boxes) for t, _ in pairs) and not any(
        t.semantic is not None or t.labels.any() for t, _ in pairs
    )


def _instances_from(
    pairs: Sequence[tuple[Annotation, Annotation]],
    class_set: ClassSet,
    iou: float,
    coco: tuple[dict, dict],
) -> dict[str, Any]:
    if _box_only_truth(pairs):  # undefined, not 0: there is no mask to match
        return {
            "ap": None,
            "ap50": None,
            "ap_per_class": {},
            "precision": None,
            "recall": None,
            "f1": None,
            "tp": None,
            "fp": None,
            "fn": None,
            "per_class": {},
            "class_agnostic": None,
            "undefined": "box-only truth",
        }
    ap = _coco_ap(_without_boxes(coco[0]), _without_boxes(coco[1]), "segm", class_set)
    return {**ap, **instance_prf(pairs, class_set, iou)}


def _boxes_from(
    pairs: Sequence[tuple[Annotation, Annotation]],
    class_set: ClassSet,
    iou: float,
    coco: tuple[dict, dict],
) -> dict[str, Any]:
    ap = _coco_ap(coco[0], coco[1], "bbox", class_set)
    return {**ap, **box_prf(pairs, class_set, iou)}


def _check_iou(iou: float) -> float:
    if not 0.0 < float(iou) <= 1.0:
        raise InputError(f"IoU threshold must be in (0, 1], got {iou}")
    return float(iou)


def evaluate_instances(
    gt: Sequence[Annotation], pred: Sequence[Annotation], iou: float = 0.5
) -> dict[str, Any]:
    """Instance masks: COCO AP and AP50 (``segm``), precision, recall and F1 at ``iou``.

    Box-only objects are left out here (see :func:`evaluate_boxes`).

    Parameters
    ----------
    gt, pred
        Ground truth and predictions, one :class:`Annotation` per image, matched by image name.
    iou
        IoU at which a prediction counts as finding an object, for precision/recall/F1.

    Returns
    -------
    dict
        ``ap``, ``ap50``, ``ap_per_class`` ({class: {ap, ap50}}, ``None`` for classes without
        ground truth), ``precision``, ``recall``, ``f1``, ``tp``, ``fp``, ``fn``, ``gt``,
        ``pred``, ``iou_threshold``, ``mean_matched_iou`` (mean IoU of the class-agnostic
        matches), ``per_class`` ({class: the same counts and ratios}) and
        ``class_agnostic``. Ratios are ``None`` where undefined (0/0).

    Raises
    ------
    InputError
        Unmatched images, different class sets, label images of different shapes, or an
        instance without a class.
    """
    pairs = pair_annotations(gt, pred)
    class_set = pairs[0][0].class_set
    return _instances_from(pairs, class_set, _check_iou(iou), _coco_pair(pairs))


def evaluate_boxes(
    gt: Sequence[Annotation], pred: Sequence[Annotation], iou: float = 0.5
) -> dict[str, Any]:
    """Boxes: COCO AP and AP50 (``bbox``), precision, recall and F1 at ``iou``.

    Every instance counts by its bounding box, and every box-only object (e.g. the NET
    annotations) as it is. Same parameters and keys as :func:`evaluate_instances`.
    """
    pairs = pair_annotations(gt, pred)
    class_set = pairs[0][0].class_set
    return _boxes_from(pairs, class_set, _check_iou(iou), _coco_pair(pairs))


# ------------------------------------------------------------------------------------------
# semantic IoU
# ------------------------------------------------------------------------------------------
def _class_pixels(ann: Annotation) -> np.ndarray:
    """Class id per pixel: the annotation's semantic map, else its instances' classes."""
    return np.asarray(ann.semantic if ann.semantic is not None else ann.class_map())


def confusion_matrix(pairs: Sequence[tuple[Annotation, Annotation]], n_classes: int) -> np.ndarray:
    """``(n + 1, n + 1)`` pixel confusion (rows ground truth, columns prediction, 0 background)."""
    n = n_classes + 1
    total = np.zeros(n * n, dtype=np.int64)
    for truth, pred in pairs:
        g, p = _class_pixels(truth), _class_pixels(pred)
        if g.shape != p.shape and not (g.any() or p.any()):
            continue  # a box-only image (declared sizes may differ): no pixels to compare
        if g.shape != p.shape:
            raise InputError(
                f"class maps differ in shape: ground truth {g.shape}, prediction {p.shape}",
                source=truth.image_name,
            )
        for side, values in (("ground truth", g), ("prediction", p)):
            if values.size and (values.min() < 0 or values.max() >= n):
                raise InputError(
                    f"{side} class map holds ids outside 0..{n_classes}", source=truth.image_name
                )
        total += np.bincount(g.ravel().astype(np.int64) * n + p.ravel(), minlength=n * n)
    return total.reshape(n, n)


def _semantic_from(
    pairs: Sequence[tuple[Annotation, Annotation]], class_set: ClassSet
) -> dict[str, Any]:
    has_pixels = any(a.semantic is not None or a.labels.any() for pair in pairs for a in pair)
    if not has_pixels or _box_only_truth(pairs):  # box-only truth has no class map
        return {
            "per_class": {},
            "dice_per_class": {},
            "mean_iou": None,
            "mean_iou_foreground": None,
            "pixel_accuracy": None,
        }
    cm = confusion_matrix(pairs, len(class_set))
    inter = np.diag(cm).astype(np.float64)
    gt_px, pred_px = cm.sum(axis=1), cm.sum(axis=0)
    union = gt_px + pred_px - inter
    present = union > 0  # classes absent from both sides have no IoU
    names = ("background", *class_set.names)
    iou = {names[c]: float(inter[c] / union[c]) for c in np.flatnonzero(present)}
    dice = {
        names[c]: float(2 * inter[c] / (gt_px[c] + pred_px[c])) for c in np.flatnonzero(present)
    }
    foreground = [v for name, v in iou.items() if name != "background"]
    return {
        "per_class": iou,
        "dice_per_class": dice,
        "mean_iou": float(np.mean(list(iou.values()))),
        "mean_iou_foreground": float(np.mean(foreground)) if foreground else None,
        "pixel_accuracy": float(inter.sum() / cm.sum()) if cm.sum() else None,
    }


def semantic_iou(gt: Sequence[Annotation], pred: Sequence[Annotation]) -> dict[str, Any]:
    """Per-class IoU and Dice of class maps over all images (pixels pooled).

    Class maps are each annotation's ``semantic`` map when it has one, else the classes of its
    instances painted per pixel. Classes absent from both ground truth and prediction are
    left out, and so are not in the means.

    Returns
    -------
    dict
        ``per_class`` ({name: IoU}, ``background`` included), ``dice_per_class``, ``mean_iou``
        (over the classes listed, background included: for blood10 the 10 classes of the blood
        data), ``mean_iou_foreground`` (without background) and ``pixel_accuracy``. All
        ``None``/empty for box-only data.
    """
    pairs = pair_annotations(gt, pred)
    return _semantic_from(pairs, pairs[0][0].class_set)


# ------------------------------------------------------------------------------------------
# counts
# ------------------------------------------------------------------------------------------
def _net_percent(counts: np.ndarray, net_index: int) -> float | None:
    total = counts.sum()
    return float(100.0 * counts[net_index] / total) if total else None


def _counts_from(
    pairs: Sequence[tuple[Annotation, Annotation]], class_set: ClassSet
) -> dict[str, Any]:
    names = list(class_set.names)
    gt_counts = np.array([[t.counts()[n] for n in names] for t, _ in pairs], dtype=np.int64)
    pred_counts = np.array([[p.counts()[n] for n in names] for _, p in pairs], dtype=np.int64)
    errors = np.abs(gt_counts - pred_counts)
    out: dict[str, Any] = {
        "per_image": [
            {
                "image": truth.image_name,
                "gt": dict(zip(names, g.tolist())),
                "pred": dict(zip(names, p.tolist())),
            }
            for (truth, _), g, p in zip(pairs, gt_counts, pred_counts)
        ],
        "gt": dict(zip(names, gt_counts.sum(axis=0).tolist())),
        "pred": dict(zip(names, pred_counts.sum(axis=0).tolist())),
        "mae_per_class": dict(zip(names, errors.mean(axis=0).astype(float).tolist())),
        "mae_total": float(np.abs(gt_counts.sum(axis=1) - pred_counts.sum(axis=1)).mean()),
    }
    lowered = [n.lower() for n in names]
    if NET_CLASS in lowered:
        k = lowered.index(NET_CLASS)
        rows = []
        valid: list[float] = []
        for (truth, _), g, p in zip(pairs, gt_counts, pred_counts):
            gt_pct, pred_pct = _net_percent(g, k), _net_percent(p, k)
            error = abs(gt_pct - pred_pct) if gt_pct is not None and pred_pct is not None else None
            if error is not None:
                valid.append(error)
            rows.append(
                {"image": truth.image_name, "gt": gt_pct, "pred": pred_pct, "abs_error": error}
            )
        out["net_percent"] = rows
        out["net_percent_mae"] = float(np.mean(valid)) if valid else None
    return out


def count_errors(gt: Sequence[Annotation], pred: Sequence[Annotation]) -> dict[str, Any]:
    """Objects per class (instances and box-only objects) and how far the predicted counts are.

    Returns
    -------
    dict
        ``per_image`` (list of {image, gt: {class: n}, pred: {class: n}}), ``gt`` and ``pred``
        totals per class, ``mae_per_class`` (mean over images of ``|gt - pred|``),
        ``mae_total`` (the same for all objects of an image together). For class sets with a
        ``NET`` class (net4) also ``net_percent`` (per image: NET % = 100 * NET / all cells
        for gt and pred, ``abs_error`` in percentage points; ``None`` for an image without
        cells) and ``net_percent_mae``.
    """
    pairs = pair_annotations(gt, pred)
    return _counts_from(pairs, pairs[0][0].class_set)


# ------------------------------------------------------------------------------------------
# everything
# ------------------------------------------------------------------------------------------
def evaluate(
    gt: Sequence[Annotation], pred: Sequence[Annotation], iou: float = 0.5
) -> dict[str, Any]:
    """Every figure of this module in one JSON-ready dict (what ``cellquant evaluate`` prints).

    Returns
    -------
    dict
        ``images`` (number), ``image_names``, ``class_set``, ``iou_threshold``, and the
        results of :func:`evaluate_instances` (``instances``), :func:`evaluate_boxes`
        (``boxes``), :func:`semantic_iou` (``semantic``) and :func:`count_errors`
        (``counts``).
    """
    iou = _check_iou(iou)
    pairs = pair_annotations(gt, pred)
    class_set = pairs[0][0].class_set
    coco = _coco_pair(pairs)
    return {
        "images": len(pairs),
        "image_names": [t.image_name for t, _ in pairs],
        "class_set": class_set.name,
        "iou_threshold": iou,
        "instances": _instances_from(pairs, class_set, iou, coco),
        "boxes": _boxes_from(pairs, class_set, iou, coco),
        "semantic": _semantic_from(pairs, class_set),
        "counts": _counts_from(pairs, class_set),
    }

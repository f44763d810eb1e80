"""Accuracy of every built-in model on every annotated set in ../shared/data it applies to.

    python benchmarks/accuracy.py [--data ../shared/data] [--only txl_pbc_val] [--limit N]
                                  [--models blood-detector,blood-classical] [--json FILE]

Every prediction goes through ``core.predict.predict`` with its default scale handling (what
``cellquant predict`` does: no diameter given), and every figure is computed with
``core.metrics`` / ``Annotation.counts``. Side by side, one row per model and set:

- ``txl_pbc_val``: TXL-PBC val, 239 photographs (BCCD, PBC, Raabin-WBC), YOLO boxes with
  every RBC boxed. ``blood-detector`` never saw it (it trained on TXL-PBC train);
  ``blood-classical`` was tuned on BCCD, 39 of whose photographs are in this set: they are
  kept (so every model is scored on the same images) and the ``seen`` column counts them.
- ``txl_pbc_val_audited``: the same photographs and boxes with the class corrections of
  ``benchmarks/audits/txl_pbc_val_wbc.csv`` applied. Every WBC box of TXL-PBC val (253) was
  looked at in a crop, and every photograph (239) for WBCs without a box; 5 labels were
  wrong: four red cells boxed as WBCs and one WBC boxed as a red cell. Both rows are printed.
- ``bccd``: BCCD trainval, 292 photographs, WBC and platelet truth (its RBC boxes are
  incomplete, so no RBC figures). ``blood-classical`` was tuned on all of them, and
  ``blood-detector`` trained on those that TXL-PBC train holds (found by pixel content):
  figures are given on the photographs that each model never saw, and ``seen`` says how many
  were left out (``blood-unet`` trains on some TXL-PBC train photographs too).
- ``net_fluorescence``: the 2 NET images (boxes): NET AP50 and NET %; both NET models'
  rules were fitted to these very images, so these are figures on seen images (``seen`` = 2).
- ``dsb2018_val``: the fluorescence images of the DSB2018 validation split (every sixth id
  within each modality, ``scripts/fluo_nuclei.py``), instance masks; ``fluo-resunet`` never
  trained or tuned on them. Instance F1 at IoU 0.5, mean matched IoU, median per-image count
  error, and F1 on the crowded images (>= 50 nuclei) alone.
- ``net_fluorescence_loio``: ``net-classical`` and ``net-detector`` with their rule
  thresholds fitted on one NET image and scored on the other (``scripts/net_loio.py``): NET %
  and NET AP50 per image.
- ``coelho``: the 58 NET fields of Coelho et al. 2015 (20 samples), NET region masks.
  ``net-area`` is trained on all of them, so its row shows the figures of its card: each
  field predicted by a model that never saw its sample (``scripts/net_area.py``).
  ``net-classical`` (never tuned on them: its NET cells' area) and the second expert
  (``rois2``, 24 fields) are scored here against the first.
- ``wbc_types``: the WBC type classifier ``wbc-types`` (that ``blood-detector`` calls) is
  trained on every typed WBC there is, so its rows show its card's 4-fold figures
  (``scripts/wbc_types.py``, which recomputes them): accuracy and balanced accuracy over the
  five types, pooled and per source, and the same figures of the card it replaced
  ("before"). No other built-in model types WBCs in photographs.

Blood figures (class set blood3; blood10 predictions are mapped by name):
box mAP50 (pycocotools COCOeval, mean of the rbc, wbc and platelet AP50) of the objects a
model reports, and for detectors ``map50_ranked``, the same over every box it proposes down
to score 0.01 (how COCO and Ultralytics score detectors: a ranking, not an operating
point), WBC count exact
(share of images), platelet count MAE per image, RBC total error and median per-image error,
and, for models that name infected RBCs, the share of RBCs they called infected: these smears
hold no parasites, so every one is a false malaria signal.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
BLOOD_MODELS = ("blood-detector", "blood-classical", "blood-unet")
NET_MODELS = ("net-classical", "net-detector")
NUCLEI_MODELS = ("fluo-resunet", "fluo-classical")
#: class corrections of TXL-PBC val's labels, found by eye (``txl_pbc_val_audited``)
TXL_PBC_VAL_AUDIT = ROOT / "benchmarks" / "audits" / "txl_pbc_val_wbc.csv"
#: a crowded image, where touching nuclei must be split
CROWDED = 50
SETS = (
    "txl_pbc_val",
    "txl_pbc_val_audited",
    "bccd",
    "net_fluorescence",
    "net_fluorescence_loio",
    "dsb2018_val",
    "coelho",
    "wbc_types",
)


# ------------------------------------------------------------------------------------------
# prediction and figures
# ------------------------------------------------------------------------------------------
def predict_all(model_name, pairs: list) -> tuple[list, float]:
    """Predictions of a model (name or weights path) on ``(image, truth)`` pairs, in the
    truth's class set, and the seconds they took."""
    from napari_cellquant.core.predict import load_model, predict

    model = load_model(model_name, "cpu")
    out = []
    started = time.perf_counter()
    for image, truth in pairs:
        found = predict(image, model)
        counts = found.counts()  # before mapping: blood3 has no infected RBCs
        found = found.mapped_to(truth.class_set)
        found.meta["own_counts"] = counts
        found.image_name = truth.image_name
        out.append(found)
    return out, time.perf_counter() - started


#: score floor of the ranked detections behind ``map50_ranked``
RANKED_FLOOR = 0.01


def ranked_boxes(model_name, pairs: list, predictions: list) -> list | None:
    """Every box a detector proposes down to ``RANKED_FLOOR`` on ``(image, truth)`` pairs,
    for :func:`ranked_map50` (None for a model that is not a box detector). Each image runs at
    the scale its counted prediction measured, so the low-score boxes do not move the scale."""
    import dataclasses

    from napari_cellquant.core.predict import load_model, predict

    model = load_model(model_name, "cpu")
    card = model.card
    if not card.architecture.get("detector"):
        return None
    params = {k: v for k, v in card.params.items() if k != "wbc_types"}  # boxes: no typing
    postprocess = {**card.postprocess, "threshold": RANKED_FLOOR}
    ranked = dataclasses.replace(
        model,
        card=dataclasses.replace(card, task="boxes", params=params, postprocess=postprocess),
    )
    found = []
    for (image, truth), counted in zip(pairs, predictions):
        boxes = predict(image, ranked, diameter=counted.meta["diameter_px"])
        boxes = boxes.mapped_to(truth.class_set)
        boxes.image_name = truth.image_name
        found.append(boxes)
    return found


def ranked_map50(truth: list, ranked: list | None, classes: tuple[str, ...]) -> dict:
    """A detector's box mAP50 as COCO and Ultralytics measure it: every box of
    :func:`ranked_boxes`, ranked by score, not only those above the card's count thresholds
    (the operating point, which ``map50`` scores). This is the protocol behind published
    detector figures such as YOLOv8n's 0.90 on BCCD. Empty for a model with no ranking."""
    from napari_cellquant.core.metrics import evaluate_boxes

    if ranked is None:
        return {}
    per_class = evaluate_boxes(truth, ranked, iou=0.5).get("ap_per_class") or {}
    ap50 = {c: (per_class.get(c) or {}).get("ap50") for c in classes}
    valid = [v for v in ap50.values() if v is not None]
    return {"map50_ranked": float(np.mean(valid)) if valid else None, "ap50_ranked": ap50}


def _per_image_counts(annotations: list, name: str) -> np.ndarray:
    return np.array([a.counts()[name] for a in annotations], dtype=np.float64)


def infected_share(predictions: list) -> float | None:
    """Share of the red cells a model called ``infected_rbc``, pooled over the images (None
    for a model that does not name infected cells). On smears without parasites it is the
    false malaria signal."""
    counts = [p.meta.get("own_counts") or {} for p in predictions]
    if not any("infected_rbc" in c for c in counts):
        return None
    infected = sum(c.get("infected_rbc", 0) for c in counts)
    rbc = infected + sum(c.get("healthy_rbc", 0) for c in counts)
    return infected / rbc if rbc else 0.0


def blood_figures(truth: list, predictions: list, *, rbc: bool = True) -> dict:
    """The blood figures of the blood-detector issue, from ``core.metrics``."""
    from napari_cellquant.core.metrics import evaluate_boxes

    boxes = evaluate_boxes(truth, predictions, iou=0.5)
    per_class = boxes.get("ap_per_class") or {}
    classes = ("rbc", "wbc", "platelet") if rbc else ("wbc", "platelet")
    ap50 = {c: (per_class.get(c) or {}).get("ap50") for c in classes}
    valid = [v for v in ap50.values() if v is not None]
    wbc_gt, wbc_pred = _per_image_counts(truth, "wbc"), _per_image_counts(predictions, "wbc")
    plt_gt = _per_image_counts(truth, "platelet")
    plt_pred = _per_image_counts(predictions, "platelet")
    figures = {
        "images": len(truth),
        "map50": float(np.mean(valid)) if valid else None,
        "ap50": ap50,
        "wbc_exact": float(np.mean(wbc_gt == wbc_pred)),
        "wbc_gt": int(wbc_gt.sum()),
        "wbc_pred": int(wbc_pred.sum()),
        "platelet_mae": float(np.mean(np.abs(plt_gt - plt_pred))),
        "platelet_gt": int(plt_gt.sum()),
        "platelet_pred": int(plt_pred.sum()),
    }
    figures["infected_rbc_share"] = infected_share(predictions)
    if rbc:
        rbc_gt, rbc_pred = _per_image_counts(truth, "rbc"), _per_image_counts(predictions, "rbc")
        has = rbc_gt > 0
        figures.update(
            {
                "rbc_gt": int(rbc_gt.sum()),
                "rbc_pred": int(rbc_pred.sum()),
                "rbc_total_error": float(rbc_pred.sum() / max(rbc_gt.sum(), 1) - 1),
                "rbc_median_error": float(
                    np.median(np.abs(rbc_pred[has] - rbc_gt[has]) / rbc_gt[has])
                )
                if has.any()
                else None,
            }
        )
    return figures


def net_figures(truth: list, predictions: list) -> dict:
    from napari_cellquant.core.metrics import count_errors, evaluate_boxes

    boxes = evaluate_boxes(truth, predictions, iou=0.5)
    counts = count_errors(truth, predictions)
    net = (boxes.get("ap_per_class") or {}).get("NET") or {}
    return {
        "images": len(truth),
        "ap50_net": net.get("ap50"),
        "net_percent": [
            (round(r["gt"], 1), round(r["pred"], 1))
            for r in counts.get("net_percent") or []
            if r["gt"] is not None and r["pred"] is not None
        ],
        "net_percent_mae": counts.get("net_percent_mae"),
    }


def nuclei_figures(truth: list, predictions: list) -> dict:
    """Instance figures of the nuclei issue: F1 and mean matched IoU at IoU 0.5, count error,
    and F1 on the crowded images alone."""
    from napari_cellquant.core.metrics import evaluate_instances

    scores = evaluate_instances(truth, predictions, iou=0.5)
    gt = np.array([len(a.instance_ids()) for a in truth], dtype=np.float64)
    found = np.array([len(a.instance_ids()) for a in predictions], dtype=np.float64)
    crowded = [i for i, n in enumerate(gt) if n >= CROWDED]
    crowded_f1 = (
        evaluate_instances([truth[i] for i in crowded], [predictions[i] for i in crowded])["f1"]
        if crowded
        else None
    )
    has = gt > 0
    return {
        "images": len(truth),
        "f1": scores["f1"],
        "precision": scores["precision"],
        "recall": scores["recall"],
        "ap50": scores["ap50"],
        "mean_matched_iou": scores["mean_matched_iou"],
        "count_median_error": float(np.median(np.abs(found[has] - gt[has]) / gt[has])),
        "nuclei_gt": int(gt.sum()),
        "nuclei_pred": int(found.sum()),
        "crowded_images": len(crowded),
        "crowded_f1": crowded_f1,
    }


def net_area_figures(truth: dict[str, np.ndarray], predicted: dict[str, np.ndarray]) -> dict:
    """NET area figures over the fields both hold: pixel IoU (pooled over the fields and the
    mean per field), the NET share of each field and its absolute error in percentage
    points, and R^2 of the shares."""
    names = sorted(set(truth) & set(predicted))
    inter = np.array([(truth[n] & predicted[n]).sum() for n in names], dtype=np.float64)
    union = np.array([(truth[n] | predicted[n]).sum() for n in names], dtype=np.float64)
    share_gt = np.array([100 * truth[n].mean() for n in names])
    share_pred = np.array([100 * predicted[n].mean() for n in names])
    error = np.abs(share_pred - share_gt)
    total = ((share_gt - share_gt.mean()) ** 2).sum()
    return {
        "fields": len(names),
        "pixel_iou": float(inter.sum() / union.sum()) if union.sum() else None,
        "mean_field_iou": float(np.mean(inter[union > 0] / union[union > 0]))
        if (union > 0).any()
        else None,
        "share_abs_error_mean_pp": float(error.mean()),
        "share_abs_error_median_pp": float(np.median(error)),
        "share_abs_error_max_pp": float(error.max()),
        "fields_within_3pp": float(np.mean(error <= 3)),
        "share_r2": float(1 - ((share_pred - share_gt) ** 2).sum() / total) if total else None,
    }


# ------------------------------------------------------------------------------------------
# the sets
# ------------------------------------------------------------------------------------------
def _thumbnail(image: np.ndarray) -> np.ndarray:
    from skimage.transform import resize

    grey = image[..., :3].mean(axis=-1) if image.ndim == 3 else image
    return resize(grey.astype(np.float32), (24, 32), anti_aliasing=True).ravel()


def same_photographs(pairs: list, folder: Path) -> set[str]:
    """Names of the images in ``pairs`` that are also among the 640 x 480 photographs of
    ``folder`` (BCCD's size; TXL-PBC renames them), matched by pixel content."""
    from napari_cellquant.core.io.images import image_shape, read_image

    bank = [
        _thumbnail(read_image(p))
        for p in sorted(folder.glob("*.jpg"))
        if image_shape(p) == (480, 640)
    ]
    if not bank:
        return set()
    stacked = np.stack(bank)
    seen = set()
    for image, truth in pairs:
        if image.shape[:2] != (480, 640):
            continue
        distance = np.abs(stacked - _thumbnail(image)).mean(axis=1).min()
        if distance < 2.0:  # grey levels; different photographs differ by tens
            seen.add(truth.image_name)
    return seen


def dsb2018_val(data: Path, limit: int | None = None) -> list:
    """``(image, truth)`` of the fluorescence images of the DSB2018 validation split."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from fluo_nuclei import load_pair, split_ids

    split = split_ids(data)
    ids = [i for i in split["val"] if split["modality"][i] == "fluorescence"]
    return [load_pair(data, i) for i in ids[:limit]]


def audited(annotations: list, audit: Path) -> list:
    """Copies of ``annotations`` with the class corrections of ``audit`` applied.

    Each row names an image, a box (x, y, w, h in pixels) and its labelled and corrected
    class; a row whose box is not among that image's boxes of the labelled class (to within
    1 px) is an error, so an audit cannot silently drift from the data it corrects.
    """
    import csv

    by_name = {a.image_name: a.copy() for a in annotations}
    with audit.open(newline="", encoding="utf-8") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            target = by_name.get(row["image"])
            if target is None:
                continue  # an image left out (--limit)
            cs = target.class_set
            box = np.array([float(row[k]) for k in ("x", "y", "w", "h")])
            hits = np.flatnonzero(
                (np.abs(target.boxes.xywh - box).max(axis=1) <= 1.0)
                & (target.boxes.class_ids == cs.id_of(row["labelled"]))
            )
            if len(hits) != 1:
                raise ValueError(
                    f"{audit}:{line}: no single {row['labelled']} box {box.tolist()} "
                    f"in {row['image']}"
                )
            target.boxes.class_ids[hits[0]] = cs.id_of(row["corrected"])
    return [by_name[a.image_name] for a in annotations]


def load_set(name: str, data: Path, limit: int | None) -> list:
    from napari_cellquant.core.io import read_annotations
    from napari_cellquant.core.io.images import read_image

    if name == "dsb2018_val":
        return dsb2018_val(data, limit)
    if name.startswith("txl_pbc_val"):
        annotations = read_annotations(data / "txl_pbc" / "labels" / "val")
    elif name == "bccd":
        annotations = read_annotations(
            data / "bccd" / "voc", images_dir=data / "bccd" / "images", class_set="blood3"
        )
    else:
        annotations = read_annotations(data / "net_fluorescence" / "coco.json")
    annotations = annotations[:limit] if limit else annotations
    if name == "txl_pbc_val_audited":
        annotations = audited(annotations, TXL_PBC_VAL_AUDIT)
    return [(read_image(a.image_path), a) for a in annotations]


def coelho_rows(data: Path, models: list[str] | None) -> list[dict]:
    """net-area (its card's cross-validated figures), net-classical and the second expert
    on the Coelho NET fields."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from net_area import classical_masks, load_fields

    from napari_cellquant.core.models.registry import get_card

    fields = load_fields(data)
    truth = {f["name"]: f["rois"] for f in fields}
    rows = []
    metrics = get_card("net-area").metrics if not models or "net-area" in models else {}
    # DNA and histone stains, then the DNA stain alone (a card trained on DNA alone has one)
    for key, model in (("held_out", "net-area"), ("held_out_dna_only", "net-area DNA only")):
        held_out = dict(metrics.get(key) or {})
        if held_out:
            rows.append(
                {
                    "set": "coelho",
                    "model": model,
                    "seen": 0,
                    "source": "card: " + str(held_out.pop("scheme", "")),
                    **{k: v for k, v in held_out.items() if k != "source"},
                }
            )
    if not models or "net-classical" in models:
        rows.append(
            {
                "set": "coelho",
                "model": "net-classical",
                "seen": 0,
                **net_area_figures(truth, classical_masks(fields)),
            }
        )
    second = {f["name"]: f["rois2"] for f in fields if f["rois2"] is not None}
    rows.append(
        {
            "set": "coelho",
            "model": "second expert",
            "seen": 0,
            **net_area_figures({k: truth[k] for k in second}, second),
        }
    )
    return rows


def loio_rows(data: Path, models: list[str] | None) -> list[dict]:
    sys.path.insert(0, str(ROOT / "scripts"))
    from net_loio import MODELS, leave_one_image_out, measured_images

    rows = []
    for model in [m for m in MODELS if not models or m in models]:
        result = leave_one_image_out(measured_images(data, model))
        rows += [
            {"set": "net_fluorescence_loio", "model": model, "seen": 0, "images": 1, **image}
            for image in result["held_out"]
        ]
    return rows


def wbc_type_rows() -> list[dict]:
    from napari_cellquant.core.models.registry import get_card

    metrics = get_card("wbc-types").metrics
    rows = []
    for key, label in (("cross_validation", ""), ("cross_validation_before", " (before)")):
        figures = metrics.get(key) or {}
        rows += [
            {"set": f"wbc_types {part}{label}", "model": "wbc-types", "seen": 0, **figures[part]}
            for part in ("all", "bccd", "wbc_crops")
            if part in figures
        ]
    return rows


def run(data: Path, sets: list[str], models: list[str] | None, limit: int | None) -> list[dict]:
    rows = []
    # txl_pbc_val and txl_pbc_val_audited hold the same photographs: each model runs once
    txl_runs: dict[str, tuple[list, float, list | None]] = {}
    for set_name in sets:
        if set_name in ("coelho", "net_fluorescence_loio", "wbc_types"):
            if set_name == "wbc_types":
                extra = wbc_type_rows() if not models or "wbc-types" in models else []
            elif set_name == "coelho":
                extra = coelho_rows(data, models)
            else:
                extra = loio_rows(data, models)
            for row in extra:
                print(_line(row), flush=True)
            rows += extra
            continue
        pairs = load_set(set_name, data, limit)
        txl_pbc_val = set_name.startswith("txl_pbc_val")
        blood = txl_pbc_val or set_name == "bccd"
        family = {"net_fluorescence": NET_MODELS, "dsb2018_val": NUCLEI_MODELS}
        names = [m for m in family.get(set_name, BLOOD_MODELS) if not models or m in models]
        seen_by: dict[str, set[str]] = {}
        if set_name == "bccd":
            every = {a.image_name for _, a in pairs}
            in_txl_train = same_photographs(pairs, data / "txl_pbc" / "images" / "train")
            # blood-unet trains on a fifth of TXL-PBC train: every one of them is left out
            seen_by = {
                "blood-classical": every,
                "blood-detector": in_txl_train,
                "blood-unet": in_txl_train,
            }
        elif txl_pbc_val:  # BCCD's photographs, on which blood-classical was tuned
            seen_by = {"blood-classical": same_photographs(pairs, data / "bccd" / "images")}
        for model in names:
            seen = seen_by.get(model, set())
            if set_name == "net_fluorescence":
                seen = {a.image_name for _, a in pairs}
            # bccd: each model on the photographs it never saw; txl_pbc_val: every model on
            # every image (the seen column says how many blood-classical was tuned on)
            kept = (
                [p for p in pairs if p[1].image_name not in seen] if set_name == "bccd" else pairs
            )
            if not kept:
                rows.append({"set": set_name, "model": model, "seen": len(seen), "images": 0})
                continue
            if txl_pbc_val and model in txl_runs:
                predictions, seconds, ranked = txl_runs[model]
            else:
                predictions, seconds = predict_all(model, kept)
                ranked = ranked_boxes(model, kept, predictions) if blood else None
                if txl_pbc_val:
                    txl_runs[model] = (predictions, seconds, ranked)
            truth = [a for _, a in kept]
            if blood:
                figures = blood_figures(truth, predictions, rbc=txl_pbc_val)
                figures.update(ranked_map50(truth, ranked, tuple(figures["ap50"])))
            elif set_name == "dsb2018_val":
                figures = nuclei_figures(truth, predictions)
            else:
                figures = net_figures(truth, predictions)
            rows.append(
                {
                    "set": set_name,
                    "model": model,
                    "seen": len(seen),
                    "s_per_image": seconds / len(kept),
                    **figures,
                }
            )
            print(_line(rows[-1]), flush=True)
    return rows


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _line(row: dict) -> str:
    keys = (
        "map50",
        "map50_ranked",
        "wbc_exact",
        "platelet_mae",
        "rbc_total_error",
        "rbc_median_error",
        "infected_rbc_share",
        "ap50_net",
        "net_percent_mae",
        "f1",
        "mean_matched_iou",
        "count_median_error",
        "crowded_f1",
        "net_percent_gt",
        "net_percent_pred",
        "pixel_iou",
        "share_abs_error_mean_pp",
        "fields_within_3pp",
        "share_r2",
        "accuracy",
        "balanced_accuracy",
    )
    shown = " ".join(f"{k}={_fmt(row.get(k))}" for k in keys if k in row)
    count = row.get("images", row.get("fields", row.get("cells")))
    return (
        f"{row['set']:<17} {row['model']:<16} images={count} "
        f"seen={row['seen']} {shown} s/img={_fmt(row.get('s_per_image'))}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--only", action="append", choices=[*SETS])
    parser.add_argument("--models", help="comma-separated model names (default: all)")
    parser.add_argument("--limit", type=int, help="first N images of each set (quick checks)")
    parser.add_argument("--json", type=Path, help="write every row here")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"no data at {args.data}", file=sys.stderr)
        return 2
    sets = args.only or list(SETS)
    models = args.models.split(",") if args.models else None
    rows = run(args.data, sets, models, args.limit)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train the bundled WBC type classifier ``wbc-types`` and measure it by k-fold.

    python scripts/wbc_types.py [--data ../shared/data] [--folds 4] [--no-bundle]

Data (class counts are printed and written into the card):
- ``bccd/``: each BCCD trainval photograph whose WBC boxes (VOC) and WBC types
  (``wbc_types.csv``) agree: as many boxes as types and one type for all of them;
- ``wbc_crops/dataset1`` and ``dataset2``: one typed WBC per crop, its box the bounding box
  of its nucleus + cytoplasm mask. GPL-3.0 data: trained on, never shipped.
- ``blood_smear_224/``: the typed WBCs of the 14 composites (LISC and IUMC cells, 4 of them
  basophils, the rarest type), by their boxes in ``labels/``. Training only, in every fold:
  they are pasted cells, not photographs, so no figure is measured on them.

Split: ``--folds`` folds fixed before training. BCCD photographs go to folds in contiguous
blocks of their sorted names (neighbouring photographs may share a slide), wbc_crops by crop
index (``i % folds``). Each fold's model trains on the other folds only, with the same fixed
recipe (``RECIPE``: epochs, zoom, stain jitter, class-balanced sampling; nothing is chosen on
held-out crops), and predicts its held-out WBCs through ``core.wbc_types`` (the path
``blood-detector`` uses). The pooled held-out predictions give the figures; the bundled model
is then trained on everything with the same recipe.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "src" / "napari_cellquant" / "core" / "models" / "bundled"
DEFAULT_DATA = ROOT.parent / "shared" / "data"
NAME = "wbc-types"
log = logging.getLogger("wbc_types")


def bccd_cells(data: Path) -> list[tuple[str, np.ndarray, np.ndarray, str]]:
    """``(group, image, box, type)`` for each BCCD WBC whose type is known without doubt."""
    from skimage.io import imread

    from napari_cellquant.core.io import read_annotations

    types = {}
    with open(data / "bccd" / "wbc_types.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            types[row["image"]] = [t.strip().lower() for t in row["wbc_types"].split(",")]
    annotations = read_annotations(
        data / "bccd" / "voc", class_set="blood3", images_dir=data / "bccd" / "images"
    )
    cells = []
    for annotation in sorted(annotations, key=lambda a: a.image_name):
        stem = Path(annotation.image_name).stem
        boxes = annotation.boxes.select(annotation.boxes.class_ids == 2)  # blood3: wbc
        named = types.get(stem, [])
        if not len(boxes) or len(named) != len(boxes) or len(set(named)) != 1:
            continue
        image = imread(data / "bccd" / "images" / f"{stem}.jpg")[..., :3]
        cells += [(f"bccd/{stem}", image, box, named[0]) for box in boxes.xywh]
    return cells


def read_wbc_crops(data: Path) -> list[tuple[str, np.ndarray, np.ndarray, str]]:
    """``(group, image, mask, type)`` for each crop of ``wbc_crops``: the mask is the cell
    (nucleus and cytoplasm)."""
    from skimage.io import imread

    crops = []
    for folder in sorted((data / "wbc_crops").glob("dataset*")):
        with open(folder / "classes.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            image = imread(folder / "images" / f"{row['image']}.bmp")[..., :3]
            mask = imread(folder / "masks" / f"{row['image']}.png") > 0
            crops.append((f"{folder.name}/{row['image']}", image, mask, row["class"].lower()))
    return crops


def wbc_crop_cells(data: Path) -> list[tuple[str, np.ndarray, np.ndarray, str]]:
    """``(group, image, box, type)`` for each crop of ``wbc_crops``."""
    cells = []
    for group, image, mask, kind in read_wbc_crops(data):
        ys, xs = np.nonzero(mask)
        box = np.array([xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1], np.float64)
        cells.append((group, image, box, kind))
    return cells


#: blood_smear_224 JSON class names of the typed WBCs -> wbc5 names
COMPOSITE_TYPES = {
    "Neutrophil": "neutrophil",
    "Lymphocytes": "lymphocyte",
    "Monocytes": "monocyte",
    "Eosinophil": "eosinophil",
    "Basophil": "basophil",
}


def composite_cells(data: Path) -> list[tuple[str, np.ndarray, np.ndarray, str]]:
    """``(group, image, box, type)`` for each typed WBC of the blood_smear_224 composites."""
    from skimage.io import imread

    cells = []
    for labels in sorted((data / "blood_smear_224" / "labels").glob("*.json")):
        objects = json.loads(labels.read_text(encoding="utf-8")).values()
        typed = [o for o in objects if o["className"] in COMPOSITE_TYPES]
        if not typed:
            continue
        image = imread(data / "blood_smear_224" / "images" / f"{labels.stem}.bmp")[..., :3]
        for o in typed:
            box = np.array([o["tlX"], o["tlY"], o["bboxW"], o["bboxH"]], np.float64)
            cells.append((f"composites/{labels.stem}", image, box, COMPOSITE_TYPES[o["className"]]))
    return cells


def assign_folds(groups: list[str], folds: int) -> np.ndarray:
    """BCCD photographs in contiguous blocks of sorted names; crops by index; composites in
    no fold (-1: trained on by every fold, never held out)."""
    fold = np.zeros(len(groups), dtype=np.int64)
    bccd = sorted({g for g in groups if g.startswith("bccd/")})
    block = {g: min(folds - 1, i * folds // max(len(bccd), 1)) for i, g in enumerate(bccd)}
    crop_index: dict[str, int] = {}
    for i, g in enumerate(groups):
        if g in block:
            fold[i] = block[g]
        elif g.startswith("composites/"):
            fold[i] = -1
        else:
            source = g.split("/")[0]
            crop_index[source] = crop_index.get(source, -1) + 1
            fold[i] = crop_index[source] % folds
    return fold


def main(argv: list[str] | None = None) -> int:
    from napari_cellquant.core.classes import WBC5
    from napari_cellquant.core.training.classify import CONTEXT, ClassifierRecipe
    from napari_cellquant.core.wbc_types import CROP_MARGIN, crop_around

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=BUNDLED)
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=ClassifierRecipe.epochs)
    parser.add_argument("--no-bundle", action="store_true")
    parser.add_argument("--report", type=Path, default=ROOT / "build" / "wbc-types-report.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    recipe = ClassifierRecipe(epochs=args.epochs)
    started = time.perf_counter()
    cells = bccd_cells(args.data) + wbc_crop_cells(args.data) + composite_cells(args.data)
    groups = [c[0] for c in cells]
    labels = np.array([WBC5.id_of(c[3]) - 1 for c in cells])
    stored_px = round(recipe.input_px * CONTEXT)
    stored = np.stack(
        [crop_around(c[1], c[2], size=stored_px, margin=CROP_MARGIN * CONTEXT) for c in cells]
    )
    shown = np.stack([crop_around(c[1], c[2], size=recipe.input_px) for c in cells])
    source = np.array([g.split("/")[0] for g in groups])
    counts = {
        s: {n: int(np.sum((source == s) & (labels == k))) for k, n in enumerate(WBC5.names)}
        for s in ("bccd", "dataset1", "dataset2", "composites")
    }
    log.info("%d WBCs in %.0f s: %s", len(cells), time.perf_counter() - started, counts)
    fold = assign_folds(groups, args.folds)
    predicted = np.full(len(cells), -1)
    one_view = np.full(len(cells), -1)  # without the dihedral views, for the record
    for k in range(args.folds):
        held_out = fold == k
        network = fit(stored[~held_out], labels[~held_out], recipe, f"fold {k + 1}/{args.folds}")
        predicted[held_out] = classify(network, recipe, shown[held_out]).argmax(axis=1)
        one_view[held_out] = classify(network, recipe, shown[held_out], False).argmax(axis=1)
    scored = fold >= 0
    crops = scored & (source != "bccd")
    figures = {
        "measured_on": f"{args.folds}-fold cross-validation, held-out WBCs pooled (BCCD "
        "photographs in contiguous blocks, wbc_crops by crop; the composites' WBCs are "
        "trained on in every fold and never scored)",
        "all": scores(labels[scored], predicted[scored]),
        "bccd": scores(labels[source == "bccd"], predicted[source == "bccd"]),
        "wbc_crops": scores(labels[crops], predicted[crops]),
        "all_one_view": scores(labels[scored], one_view[scored]),
    }
    log.info("held-out figures: %s", json.dumps(figures, indent=1))
    report = {"counts": counts, "figures": figures, "cv_s": time.perf_counter() - started}
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2), encoding="utf-8")
    if args.no_bundle:
        return 0
    network = fit(stored, labels, recipe, "final")
    save(network, recipe, counts, figures, args.out)
    return 0


def fit(crops: np.ndarray, labels: np.ndarray, recipe, what: str):
    from napari_cellquant.core.classes import WBC5
    from napari_cellquant.core.models.registry import IMAGENET_MEAN_STD
    from napari_cellquant.core.training.classify import train_crop_classifier

    def report(epoch: int, epochs: int, loss: float) -> None:
        log.info("%s: epoch %d/%d, loss %.4f", what, epoch, epochs, loss)

    return train_crop_classifier(
        crops, labels, len(WBC5), IMAGENET_MEAN_STD, recipe, progress=report
    )


def classify(network, recipe, crops: np.ndarray, dihedral: bool | None = None) -> np.ndarray:
    from napari_cellquant.core.predict import Model
    from napari_cellquant.core.wbc_types import classify_crops

    model = Model(card=make_card(network, recipe), network=network)
    return classify_crops(crops, model, dihedral=dihedral)


def make_card(network, recipe):
    from napari_cellquant.core.models.card import ModelCard
    from napari_cellquant.core.models.registry import IMAGENET_MEAN_STD
    from napari_cellquant.core.wbc_types import CROP_MARGIN

    return ModelCard(
        name=NAME,
        kind="learned",
        task="classify",
        class_set="wbc5",
        description="WBC type (neutrophil, lymphocyte, monocyte, eosinophil, basophil) "
        "from a crop around each WBC: ImageNet-pretrained EfficientNet-Lite0",
        input_channels=3,
        normalization=dict(IMAGENET_MEAN_STD),
        tile=recipe.input_px,
        architecture=dict(network.arch),
        params={"crop_px": recipe.input_px, "margin": CROP_MARGIN, "dihedral_views": True},
    )


def scores(truth: np.ndarray, predicted: np.ndarray) -> dict:
    """Accuracy, balanced accuracy (mean recall over the classes present) and the confusion
    matrix (rows truth, columns predicted, in wbc5 order)."""
    from napari_cellquant.core.classes import WBC5

    n = len(WBC5)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    present = confusion.sum(axis=1) > 0
    recall = np.diag(confusion)[present] / confusion.sum(axis=1)[present]
    return {
        "cells": int(len(truth)),
        "accuracy": round(float(np.mean(truth == predicted)), 4),
        "balanced_accuracy": round(float(recall.mean()), 4),
        "recall": {
            name: round(float(confusion[k, k] / confusion[k].sum()), 4)
            for k, name in enumerate(WBC5.names)
            if confusion[k].sum()
        },
        "classes": list(WBC5.names),
        "confusion": confusion.tolist(),
    }


def save(network, recipe, counts: dict, figures: dict, out: Path) -> None:
    import dataclasses

    import pooch
    from blood_detector import save_bundled, save_fp16

    from napari_cellquant.core.models.card import WeightsSource

    weights = out / f"{NAME}.pt"
    save_fp16(network.state_dict(), weights)
    card = make_card(network, recipe)
    card.weights = WeightsSource(file=weights.name, sha256=pooch.file_hash(str(weights), "sha256"))
    card.training = {
        "pretrained": "imagenet" if recipe.from_imagenet else None,
        "recipe": dataclasses.asdict(recipe),
        "objects": counts,
        "images": "bccd trainval photographs with one known WBC type, wbc_crops dataset1 and "
        "dataset2 (all of them; the figures are k-fold), and the typed WBCs of the 14 "
        "blood_smear_224 composites (trained on, never scored)",
        "script": "scripts/train_bundled.py --only wbc-types",
    }
    card.metrics = {"cross_validation": figures, **figures_before(card, out)}
    save_bundled(card, out)


def figures_before(card, out: Path) -> dict:
    """``{"cross_validation_before": ...}``: the figures of the card this one replaces (in
    ``out``, else the bundled one) when its data, recipe or prediction differ, so that the
    change is shown next to what it replaced; a plain re-run keeps the earlier record."""
    from napari_cellquant.core.models.card import ModelCard

    path = next((p for p in (out / f"{NAME}.json", BUNDLED / f"{NAME}.json") if p.is_file()), None)
    if path is None:
        return {}
    earlier = ModelCard.load(path)
    how = ("training", "params")
    if all(getattr(earlier, k) == getattr(card, k) for k in how):
        before = earlier.metrics.get("cross_validation_before")
        return {"cross_validation_before": before} if before else {}
    training = {k: earlier.training.get(k) for k in ("images", "recipe")}
    return {
        "cross_validation_before": {
            "training": training,
            "params": earlier.params,
            **earlier.metrics["cross_validation"],
        }
    }


if __name__ == "__main__":
    sys.exit(main())

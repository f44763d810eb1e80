"""Train the bundled ``blood-detector`` on TXL-PBC and measure it on TXL-PBC val.

    python scripts/blood_detector.py [--data ../shared/data] [--epochs 30] [--from-scratch]

Split (fixed, written into the card):
- ``txl_pbc/images/train`` (823 photographs): training. Every tenth of them by sorted name is
  held back as the *inner* validation set, which picks the epoch (best box F1) and the
  detection threshold. The network never trains on those 83.
- ``txl_pbc/images/val`` (239 photographs): never trained or tuned on; the card's figures.
  ``bccd/`` is not added: TXL-PBC re-labels BCCD's own photographs, some of which are in its
  val split, so BCCD images in training would leak val images.

Scale: each training photograph is resized so that its median RBC box is
``BLOOD_DETECTOR_RBC_PX`` (40 px) wide, from its own boxes (the three sources differ: 71 to
125 px), then scale-jittered 0.7-1.4x. That median counts the small boxes of cells cut by
the edge, so a whole RBC is larger at model scale (44 px): the card states that
(:func:`whole_cell_diameter`). At prediction the detector measures the scale itself
(``core.detector_scale``), so val figures come from the same path as ``cellquant predict``.

Truth is boxes. The network learns boxes only (CenterNet heatmap, size, offset); the masks
it reports are ellipses inscribed in its boxes (``core.postprocess.instances_from_boxes``).

The decoded, resized training images are cached in ``$CELLQUANT_CACHE/train-cache`` (one
``.npz`` per split), so a second run starts training within seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "src" / "napari_cellquant" / "core" / "models" / "bundled"
DEFAULT_DATA = ROOT.parent / "shared" / "data"
NAME = "blood-detector"
SETTINGS = {
    # 48 epochs tried 2026-12-07 (62 min, best epoch 30): on the 83 inner photographs through
    # predict, mAP50 0.900 against 0.900, ranked 0.933 against 0.935, WBC exact 94.0 % both,
    # platelet MAE 0.084 against 0.096, RBC total -2.0 % against -1.1 %: no gain, so 36 stay
    "epochs": 36,
    "batch_size": 8,
    "crop": 192,
    "lr": 1.5e-3,
    "weight_decay": 1e-4,
    "scale_range": (0.7, 1.4),
    # class-balanced crops tried 2026-12-03: inner-val platelet F1 0.830 against 0.857
    # without (rbc 0.863 both, wbc 0.971 vs 0.966), so the bundled recipe keeps them off
    "balance_classes": False,
    # training at 48 px per RBC tried 2026-12-03 (74 min, 1 thread, best epoch 32): inner box
    # F1 in training 0.890 against 0.857, but through predict inner mAP50 0.887 against
    # 0.900 (platelet AP 0.80 against 0.82) at 1.4x the pixels, so the scale stays 40 px
    "seed": 0,
    "inner_val_every": 10,
    # a moving average of the weights (core.training.loop.ramped_ema, decay 0.998: about 5
    # epochs) tried 2026-12-07 (best epoch 25; inner box F1 in training 0.870 against 0.857),
    # but through predict on the 83 inner photographs mAP50 0.865 against 0.900 (platelet AP
    # 0.72 against 0.82), ranked 0.914 against 0.935, WBC exact 94.0 % both: so none
    "ema_decay": None,
}
#: thresholds tried, per class, on the inner validation images (never on val)
THRESHOLDS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6)
#: a box this much inside a surer one of its class is its duplicate (core.postprocess.
#: suppress_nested). Chosen 2026-12-03 on the inner images through predict, against none:
#: 0.6, 0.7 and 0.8 for WBCs alone and 0.7 and 0.8 for every class all mended one of the six
#: wrong WBC counts (exact 92.8 -> 94.0 %); 0.7 for every class had the best mAP50 (0.898
#: against 0.881)
NESTED_OVERLAP = 0.7
#: cell diameters of neutral frame around each image at prediction (core.predict.
#: _edge_border), so the image's edge looks as it did at the edge of training crops. One
#: value tried, 2026-12-03, on train photographs through predict: the 83 inner ones, mAP50
#: 0.898 -> 0.900, and 82 trained-on ones, 0.878 -> 0.920 (platelet AP 0.74 -> 0.85: the
#: lost platelets were slivers cut by the edge)
EDGE_BORDER = 0.5

log = logging.getLogger("blood_detector")


def rbc_diameter(annotation, *, uncut: bool = False) -> float | None:
    """Median sqrt(w h) of an image's RBC boxes (None with fewer than 3); ``uncut``: only
    those of whole cells, not cut by the image's edge."""
    rbc = annotation.boxes.select(annotation.boxes.class_ids == annotation.class_set.id_of("rbc"))
    x, y, w, h = rbc.xywh.T
    if uncut:  # TXL-PBC's boxes of cut cells end up to 2 px inside the edge
        rows, cols = annotation.shape[:2]
        whole = (x > 2) & (y > 2) & (x + w < cols - 2) & (y + h < rows - 2)
        w, h = w[whole], h[whole]
    return float(np.median(np.sqrt(w * h))) if len(w) >= 3 else None


def whole_cell_diameter(annotations: list, target: float) -> float:
    """The diameter of a whole RBC at model scale, for the card.

    Training brings each photograph's median RBC box, cut cells at the edge included, to
    ``target``. Whole cells are larger than that median (cut boxes are small), and whole cells
    are what the detector measures on its central probe (``core.detector_scale``) and what a
    user means by ``--diameter``. Taking ``target`` as their size ran photographs about 7 %
    too small: RBCs were missed in clumps (TXL-PBC val RBC total -6 %)."""
    ratios = [
        whole / every
        for a in annotations
        if (whole := rbc_diameter(a, uncut=True)) and (every := rbc_diameter(a))
    ]
    return round(target * float(np.median(ratios)), 1)


def load_split(data: Path, split: str) -> list:
    """``(image, Annotation)`` pairs of a txl_pbc split at their own size, sorted by name."""
    from napari_cellquant.core.io import read_annotations
    from napari_cellquant.core.io.images import read_image

    annotations = read_annotations(data / "txl_pbc" / "labels" / split)
    return [(read_image(a.image_path), a) for a in annotations]


def to_model_scale(pairs: list, target: float) -> list:
    """Each photograph resized so its median RBC is ``target`` px; images with too few RBCs
    take the median zoom of photographs of the same size."""
    from napari_cellquant.core.predict import _resize

    zooms = {}
    by_size: dict[tuple, list[float]] = {}
    for _, ann in pairs:
        d = rbc_diameter(ann)
        if d:
            zooms[ann.image_name] = target / d
            by_size.setdefault(ann.shape, []).append(target / d)
    fallback = float(np.median([z for v in by_size.values() for z in v]))
    out = []
    for image, ann in pairs:
        zoom = zooms.get(ann.image_name) or float(np.median(by_size.get(ann.shape, [fallback])))
        small = _resize(image, zoom)
        scaled = ann.copy(
            labels=np.zeros(small.shape[:2], dtype=np.int32),
            boxes=ann.boxes.scaled(small.shape[1] / ann.shape[1], small.shape[0] / ann.shape[0]),
        )
        scaled.meta["zoom"] = zoom
        out.append((small, scaled))
    return out


def cached_training_pairs(data: Path, target: float) -> list:
    """Training pairs at model scale, from the cache when it holds this data and scale."""
    from napari_cellquant.core.annotation import Annotation, Boxes
    from napari_cellquant.core.classes import get_class_set
    from napari_cellquant.core.models.registry import cache_dir

    labels = sorted((data / "txl_pbc" / "labels" / "train").glob("*.txt"))
    key = hashlib.sha256(
        "".join(f"{p.name}{p.stat().st_size}" for p in labels).encode() + str(target).encode()
    ).hexdigest()[:12]
    path = cache_dir() / "train-cache" / f"txl_pbc-train-{key}.npz"
    blood3 = get_class_set("blood3")
    if path.is_file():
        stored = np.load(path, allow_pickle=False)
        names = stored["names"].tolist()
        pairs = []
        for i, name in enumerate(names):
            image = stored[f"image{i}"]
            boxes = stored[f"boxes{i}"]
            pairs.append(
                (
                    image,
                    Annotation(
                        np.zeros(image.shape[:2], np.int32),
                        blood3,
                        boxes=Boxes(boxes[:, :4], boxes[:, 4].astype(int)),
                        image_name=name,
                    ),
                )
            )
        log.info("training images from the cache %s", path)
        return pairs
    pairs = to_model_scale(load_split(data, "train"), target)
    arrays = {"names": np.array([a.image_name for _, a in pairs])}
    for i, (image, ann) in enumerate(pairs):
        arrays[f"image{i}"] = image
        arrays[f"boxes{i}"] = np.column_stack([ann.boxes.xywh, ann.boxes.class_ids])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return pairs


def log_epochs(event) -> None:
    """Training progress for a script's log: one line per epoch."""
    if event.phase == "epoch":
        log.info("%s", event.describe())


def tune_thresholds(weights: Path, pairs: list) -> tuple[list[float], list]:
    """Per class, the threshold with the best box F1 at IoU 0.5 on ``pairs`` (model scale):
    rare platelets and large WBCs need other thresholds than the many RBCs."""
    from napari_cellquant.core.inference import predict_maps
    from napari_cellquant.core.postprocess import boxes_from_heatmap
    from napari_cellquant.core.predict import load_model
    from napari_cellquant.core.training import make_sample
    from napari_cellquant.core.training.validation import match_boxes

    model = load_model(weights, "cpu")
    card = model.card
    n_classes = len(card.classes)
    tallies = np.zeros((n_classes, len(THRESHOLDS), 3))
    for image, annotation in pairs:
        sample = make_sample(image, annotation, card)
        maps = predict_maps(
            sample.pixels, model.network, tile=card.tile, overlap=card.overlap, device="cpu"
        )
        for row, threshold in enumerate(THRESHOLDS):
            found = boxes_from_heatmap(
                maps["heatmap"],
                maps["size"],
                maps.get("offset"),
                stride=4,
                threshold=threshold,
                max_detections=card.postprocess["max_detections"],
            )
            for k in range(n_classes):
                mine = found.select(found.class_ids == k + 1)
                truth = sample.boxes.select(sample.boxes.class_ids == k + 1)
                tallies[k, row] += (match_boxes(mine, truth, 0.5), len(mine), len(truth))
    f1 = 2 * tallies[..., 0] / np.maximum(tallies[..., 1] + tallies[..., 2], 1)
    return [float(THRESHOLDS[int(i)]) for i in f1.argmax(axis=1)], f1.round(4).tolist()


def train_detector(
    data: Path, workdir: Path, *, epochs: int, from_scratch: bool, trained: dict | None = None
) -> dict:
    """Train (or, given an earlier run's ``trained`` record, only re-tune its thresholds)."""
    import torch

    from napari_cellquant.core.models.registry import BLOOD_DETECTOR_RBC_PX
    from napari_cellquant.core.training import TrainingConfig, train

    started = time.perf_counter()
    pairs = cached_training_pairs(data, BLOOD_DETECTOR_RBC_PX)
    loaded = time.perf_counter() - started
    every = SETTINGS["inner_val_every"]
    inner_val = list(range(0, len(pairs), every))
    log.info(
        "%d training photographs (%d held back for the epoch and threshold), loaded in %.0f s",
        len(pairs),
        len(inner_val),
        loaded,
    )
    s = SETTINGS
    tag = "scratch" if from_scratch else "imagenet"
    config = TrainingConfig(
        base=NAME,
        images=[p[0] for p in pairs],
        annotations=[p[1] for p in pairs],
        output=workdir / f"{NAME}-{tag}.pt",
        val_indices=inner_val,
        epochs=epochs,
        batch_size=s["batch_size"],
        crop=s["crop"],
        lr=s["lr"],
        weight_decay=s["weight_decay"],
        seed=s["seed"],
        device="cpu",
        patience=None,
        from_scratch=from_scratch,
        from_imagenet=True,  # never the bundled weights: they saw the whole data set
        scale_range=s["scale_range"],
        balance_classes=s["balance_classes"],
        ema_decay=s["ema_decay"],
        name=NAME,
        overwrite=True,
    )
    if trained is None:
        result = train(config, progress=log_epochs)
        trained = {
            "weights": result.weights,
            "card": result.card,
            "history": result.history,
            "best_epoch": result.best_epoch,
            "train_s": time.perf_counter() - started,
            "load_s": loaded,
            "threads": torch.get_num_threads(),
            "pretrained": not from_scratch,
        }
    threshold, f1s = tune_thresholds(Path(trained["weights"]), [pairs[i] for i in inner_val])
    from napari_cellquant.core.models.card import ModelCard

    card = ModelCard.load(trained["card"])
    card.postprocess["threshold"] = threshold
    card.postprocess["nested_overlap"] = NESTED_OVERLAP
    card.params["edge_border"] = EDGE_BORDER
    card.diameter_px = {"rbc": whole_cell_diameter([a for _, a in pairs], BLOOD_DETECTOR_RBC_PX)}
    card.save(trained["card"], overwrite=True)
    return {
        **trained,
        "threshold": threshold,
        "threshold_f1": f1s,
        "inner_val": [pairs[i][1].image_name for i in inner_val],
    }


def evaluate_on_val(weights: Path, data: Path, *, model_name: str | None = None) -> dict:
    """Figures of a model on txl_pbc val, predicted through ``core.predict.predict``."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from accuracy import (
        TXL_PBC_VAL_AUDIT,
        audited,
        blood_figures,
        predict_all,
        ranked_boxes,
        ranked_map50,
    )

    pairs = load_split(data, "val")
    model = model_name or weights
    predictions, seconds = predict_all(model, pairs)
    ranked = ranked_boxes(model, pairs, predictions)

    def scored(truth: list) -> dict:
        figures = blood_figures(truth, predictions)
        return {**figures, **ranked_map50(truth, ranked, tuple(figures["ap50"]))}

    truth = [a for _, a in pairs]
    figures = scored(truth)
    figures["seconds_per_image"] = seconds / len(pairs)
    # the same predictions against the labels with the audit's corrections
    figures["labels_audited"] = scored(audited(truth, TXL_PBC_VAL_AUDIT))
    return figures


def to_fp16(path: Path, target: Path) -> None:
    """The weights in ``path`` written to ``target`` as fp16 (:func:`save_fp16`)."""
    import torch

    save_fp16(torch.load(path, map_location="cpu", weights_only=True), target)


def save_fp16(state: dict, target: Path) -> None:
    """Float tensors stored as fp16 (half the size; loading casts back to fp32)."""
    import torch

    from napari_cellquant.core.io.atomic import atomic_path

    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    with atomic_path(target, overwrite=True) as tmp:
        torch.save(half, tmp)


def halve(weights: Path, card_path: Path) -> None:
    """Store ``weights`` as fp16 in place and record the new hash in the card beside them."""
    import pooch

    from napari_cellquant.core.models.card import ModelCard

    to_fp16(weights, weights)
    card = ModelCard.load(card_path)
    card.weights.sha256 = pooch.file_hash(str(weights), alg="sha256")
    card.save(card_path, overwrite=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=BUNDLED)
    parser.add_argument("--workdir", type=Path, default=ROOT / "build" / "blood-detector")
    parser.add_argument("--epochs", type=int, default=SETTINGS["epochs"])
    parser.add_argument("--from-scratch", action="store_true")
    parser.add_argument(
        "--no-bundle",
        action="store_true",
        help="train and measure, but do not write into the package",
    )
    parser.add_argument(
        "--no-val",
        action="store_true",
        help="stop after training: only the inner validation score (for "
        "comparisons such as --from-scratch)",
    )
    parser.add_argument(
        "--skip-training",
        action="store_true",
        help="take the network of an earlier run in --workdir (trained.json)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.workdir.mkdir(parents=True, exist_ok=True)
    earlier = None
    if args.skip_training:
        earlier = json.loads((args.workdir / "trained.json").read_text(encoding="utf-8"))
    trained = train_detector(
        args.data, args.workdir, epochs=args.epochs, from_scratch=args.from_scratch, trained=earlier
    )
    log.info("trained in %.0f s; thresholds %s", trained["train_s"], trained["threshold"])
    record = {k: v for k, v in trained.items() if k not in ("threshold", "threshold_f1")}
    (args.workdir / "trained.json").write_text(json.dumps(record, indent=2, default=str))
    if not args.no_val:  # the figures are those of the weights that ship: fp16 on disk
        halve(Path(trained["weights"]), Path(trained["card"]))
    report = {k: v for k, v in trained.items() if k not in ("weights", "card")}
    if args.no_val:
        print(json.dumps(report, indent=2, default=str))
        return 0
    figures = evaluate_on_val(trained["weights"], args.data)
    report["val"] = figures
    text = json.dumps(report, indent=2, default=str)
    print(text)
    (args.workdir / f"report-{'scratch' if args.from_scratch else 'imagenet'}.json").write_text(
        text + "\n", encoding="utf-8"
    )
    if not args.no_bundle:
        write_card(trained, figures, args)
    return 0


def bundled_card(weights: Path, card_path: Path, out: Path, name: str, description: str):
    """Copy trained ``weights`` into the package as ``out/<name>.pt`` and return their card,
    renamed, described and pointing at the copy; finish it with :func:`save_bundled`."""
    import pooch

    from napari_cellquant.core.io.atomic import atomic_path
    from napari_cellquant.core.models.card import ModelCard, WeightsSource

    target = out / f"{name}.pt"
    with atomic_path(target, overwrite=True) as tmp:
        shutil.copyfile(weights, tmp)
    card = ModelCard.load(card_path)
    card.name, card.description = name, description
    card.weights = WeightsSource(
        file=target.name, sha256=pooch.file_hash(str(target), alg="sha256")
    )
    for key in ("images", "validation_images", "validated_on_training_data"):
        card.training.pop(key, None)
    return card


def save_bundled(card, out: Path) -> None:
    """Write a bundled card beside its weights (if it has any); both readable by everyone
    (package data)."""
    path = card.save(out / f"{card.name}.json", overwrite=True)
    for written in (path, out / f"{card.name}.pt"):
        if written.exists():  # a classical card has no weights
            written.chmod(0o644)


def write_card(trained: dict, figures: dict, args: argparse.Namespace) -> None:
    from napari_cellquant.core.models.card import ModelCard

    card = bundled_card(
        Path(trained["weights"]),
        Path(trained["card"]),
        args.out,
        NAME,
        "RBC / WBC / platelets in smear photographs: ImageNet-pretrained "
        "EfficientNet-Lite0 detector trained on TXL-PBC (823 photographs); each WBC typed "
        "by wbc-types (5-part differential)",
    )
    n_inner = len(trained["inner_val"])
    card.training["images"] = (
        f"txl_pbc train: {823 - n_inner} photographs trained on and "
        f"{n_inner} held back (823), each resized so that the median of its RBC boxes is "
        f"40 px; cut cells at the edge pull that median down, so a whole RBC is "
        f"{card.diameter_px['rbc']} px at that scale (the card's diameter)"
    )
    card.training["objects_note"] = "objects counted over all 823 txl_pbc train photographs"
    card.training["epoch_and_threshold_chosen_on"] = (
        f"{len(trained['inner_val'])} txl_pbc train photographs held back from training "
        f"(every {SETTINGS['inner_val_every']}th by sorted name)"
    )
    card.training["masks"] = (
        "none learned: truth is boxes; each instance is the ellipse "
        "inscribed in its detected box, overlaps given to the nearer centre"
    )
    card.training["time_s"] = round(trained["train_s"])
    card.training["script"] = "scripts/train_bundled.py --only blood-detector"
    card.params["wbc_types"] = "wbc-types"  # each WBC typed (scripts/wbc_types.py)
    val = {
        "measured_on": "txl_pbc val, 239 photographs never trained or tuned on",
        "source": "core.metrics via benchmarks/accuracy.py, predicted by core.predict.predict "
        "(scale measured by the detector)",
        **figures,
    }
    card.metrics = {"txl_pbc_val": val}
    bundled = args.out / f"{NAME}.json"
    earlier = ModelCard.load(bundled).metrics if bundled.is_file() else {}
    # kept: the weight-free sibling on the same images, which retraining does not change, and
    # a recipe comparison at a short budget, which is not a figure of these weights
    if "blood_classical_same_images" in earlier.get("txl_pbc_val", {}):
        val["blood_classical_same_images"] = earlier["txl_pbc_val"]["blood_classical_same_images"]
    if "pretrained_vs_scratch" in earlier:
        card.metrics["pretrained_vs_scratch"] = earlier["pretrained_vs_scratch"]
    save_bundled(card, args.out)


if __name__ == "__main__":
    sys.exit(main())

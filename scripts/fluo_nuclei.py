"""Train the bundled ``fluo-resunet`` nuclei model on DSB2018 and measure it on held-out images.

    python scripts/fluo_nuclei.py [--data ../shared/data] [--arch both|resunet|efficientnet]

Split (fixed by rule, every id written into the card):
- ``dsb2018`` images are sorted by id within each modality; every sixth (index 0, 6, 12, ...)
  is **validation** (17 %, stratified by modality) and never trained or tuned on.
- The rest is training. Of its fluorescence images every tenth is held back as the *inner*
  validation set, which picks the epoch, the network (c-ResUnet-like or the ImageNet
  EfficientNet-Lite0 U-Net) and the post-processing (foreground threshold, seed distance).

Only fluorescence images are trained on (the DSB2018 brightfield and histology images are
other stains; they were not tried).

Scale: each training image is resized so its median nucleus (equivalent diameter) is
``NUCLEUS_PX`` wide, then scale-jittered 0.6-1.6x, so the estimator's error at prediction is
inside what the network has seen. Validation goes through ``core.predict.predict`` with the
diameter estimated from the image (``core.scale.estimate_diameter``), as ``cellquant
predict`` does. (Measuring the scale with the network itself, as ``blood-detector`` does,
was tried: on some images it found background texture at a 4x zoom, F1 0.39.)

Instances come from the predicted distance map (peaks, or cores above a distance, seed a
watershed of the foreground). When the diameter is estimated, predict runs again at the
scale of the network's own nuclei while it is off by more than 15 % (``refine_scale``).

The first reading of the scale is the network's size model (``core.size_model``): a ridge
regression of log(diameter) on its pooled encoder features, fitted on the images it trained
on (``fit_size``), adopted on the inner images by the rule in :func:`choose_size_model`;
``--refit-size-model`` fits it again for the bundled network and bundles it if the rule holds.
The post-processing, first chosen at the true scale, is then chosen again through ``predict``
at the scale the model reads (:func:`retune_through_predict`; ``--retune-postprocess``).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
BUNDLED = ROOT / "src" / "napari_cellquant" / "core" / "models" / "bundled"
DEFAULT_DATA = ROOT.parent / "shared" / "data"
NAME = "fluo-resunet"
#: the nucleus diameter the network works at (DSB2018 fluorescence: median 15 px, 9-49 px)
NUCLEUS_PX = 24.0
VAL_EVERY, INNER_VAL_EVERY = 6, 10
ARCHS = {
    "resunet": None,  # the registry's c-ResUnet-like network
    "efficientnet": {
        "type": "efficientnet-unet",
        "in_channels": 3,
        "decoder": [64, 48, 32, 24, 16],
        "heads": ["classes", "distance"],
        "n_classes": 1,
    },
}
SETTINGS = {
    # 14 epochs (both networks side by side, inner-val F1 0.834 EfficientNet / 0.832
    # c-ResUnet, best epoch the last for both), then 50 for the EfficientNet alone (best
    # epoch 42 by inner-val IoU, 0.913 against 0.911)
    "epochs": 50,
    "steps_per_epoch": 100,
    "batch_size": 8,
    "crop": 192,
    "weight_decay": 1e-4,
    "scale_range": (0.6, 1.6),
    "seed": 0,
    "lr": {"resunet": 3e-3, "efficientnet": 1.5e-3},
    # run again at the scale of the network's own nuclei when the weight-free estimate is
    # off by > 15 %, up to 3 times; chosen on the inner validation images at their own size
    # with the 14-epoch model: F1 0.783 with the estimate, 0.803 with one round at 30 %,
    # 0.809 with these, 0.836 with the true diameters
    "refine_scale": {"tolerance": 1.15, "rounds": 3},
    # the distance error weighs 1 + this near borders two nuclei share (U-Net's weight map;
    # most misses on the inner images are touching nuclei taken for one). 10 was tried
    # (2026-12-07, 50 epochs, 2 threads, 62 min) and not adopted: inner F1 at the true scale
    # 0.858 against 0.851 (merged nuclei 146 against 163), but through predict with the
    # diameter estimated 0.833 against 0.833; the rule set before was "better on both"
    "contact_weight": 0.0,
    # the network's maps averaged over the image and its three mirror images at prediction
    # (core.inference flip_views), decided 2026-12-07 on the inner images through predict by
    # the rule "better with the diameter estimated and at the true one": F1 0.841 against
    # 0.833 and 0.855 against 0.848, at 4 network passes
    "flip_views": 4,
}
#: apparent nucleus diameters (px) each training image is shown at to fit the size model
SIZE_MODEL_DIAMETERS = (8, 12, 17, 24, 34, 48, 68)
#: the two networks side by side at 14 epochs (one thread each), which chose the EfficientNet
NETWORKS_AT_14_EPOCHS = {
    "resunet": {"inner_val_iou": 0.9076, "inner_val_f1": 0.8323, "train_s": 4443},
    "efficientnet": {"inner_val_iou": 0.911, "inner_val_f1": 0.8339, "train_s": 4397},
}
#: post-processing tried on the inner validation images (never on validation)
FOREGROUND = (0.3, 0.4, 0.5, 0.6, 0.7)
#: seeds: distance peaks this far apart (pixels), or cores above a distance (normalised)
SEEDS = [{"min_distance": d, "seed_threshold": None} for d in (5, 7, 9, 11, 13, 15)] + [
    {"min_distance": 0, "seed_threshold": t} for t in (0.3, 0.4, 0.5, 0.6, 0.7)
]

log = logging.getLogger("fluo_nuclei")


def split_ids(data: Path) -> dict[str, list[str]]:
    """``train`` / ``val`` ids of dsb2018 by the fixed rule, and ``inner_val`` (train,
    fluorescence), with each id's modality under ``modality``."""
    with open(data / "dsb2018" / "modality.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    by_modality: dict[str, list[str]] = {}
    for row in rows:
        by_modality.setdefault(row["modality"], []).append(row["id"])
    train, val = [], []
    for ids in by_modality.values():
        for i, image_id in enumerate(sorted(ids)):
            (val if i % VAL_EVERY == 0 else train).append(image_id)
    modality = {row["id"]: row["modality"] for row in rows}
    fluo_train = sorted(i for i in train if modality[i] == "fluorescence")
    inner = fluo_train[::INNER_VAL_EVERY]
    return {"train": sorted(train), "val": sorted(val), "inner_val": inner, "modality": modality}  # type: ignore[dict-item]


def load_pair(data: Path, image_id: str) -> tuple[np.ndarray, object]:
    """An image and its instance Annotation (class set ``cell``), at its own size."""
    import tifffile

    from napari_cellquant.core.annotation import Annotation
    from napari_cellquant.core.classes import get_class_set
    from napari_cellquant.core.io.images import read_image

    image = read_image(data / "dsb2018" / "images" / f"{image_id}.png")
    if image.ndim == 3 and image.shape[-1] == 4:
        image = image[..., :3]
    labels = tifffile.imread(data / "dsb2018" / "labels" / f"{image_id}.tif").astype(np.int32)
    ids = np.unique(labels)
    ids = ids[ids > 0]
    return image, Annotation(
        labels, get_class_set("cell"), classes=dict.fromkeys(ids.tolist(), 1), image_name=image_id
    )


def nucleus_diameter(labels: np.ndarray) -> float:
    from napari_cellquant.core.scale import median_object_diameter

    return median_object_diameter(labels) or NUCLEUS_PX


def to_model_scale(image: np.ndarray, annotation) -> tuple[np.ndarray, object]:
    """Image and labels resized so the median nucleus is ``NUCLEUS_PX`` across."""
    from skimage.transform import resize

    from napari_cellquant.core.predict import _resize

    zoom = NUCLEUS_PX / nucleus_diameter(annotation.labels)
    small = _resize(image, zoom)
    labels = resize(
        annotation.labels, small.shape[:2], order=0, preserve_range=True, anti_aliasing=False
    ).astype(np.int32)
    present = set(np.unique(labels).tolist()) - {0}
    return small, annotation.copy(labels=labels, classes=dict.fromkeys(sorted(present), 1))


def base_card(arch: str, workdir: Path) -> str:
    """The registry name or a card JSON in ``workdir`` for one of :data:`ARCHS`."""
    if ARCHS[arch] is None:
        return NAME
    from napari_cellquant.core.models.registry import get_card

    card = get_card(NAME)
    card.architecture = dict(ARCHS[arch])
    card.description = (
        "fluorescent nuclei: ImageNet-pretrained EfficientNet-Lite0 U-Net, "
        "foreground and distance map"
    )
    path = workdir / f"base-{arch}.json"
    card.save(path, overwrite=True)
    return str(path)


def train_one(
    arch: str, data: str, workdir: str, epochs: int, steps: int, threads: int = 1
) -> dict:
    """One training (own process, ``threads`` threads) on the fluorescence train split."""
    import torch

    torch.set_num_threads(threads)
    from blood_detector import log_epochs

    from napari_cellquant.core.training import TrainingConfig, train

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {arch} %(message)s")
    started = time.perf_counter()
    split = split_ids(Path(data))
    modality = split["modality"]
    ids = [i for i in split["train"] if modality[i] == "fluorescence"]  # type: ignore[index]
    pairs = [to_model_scale(*load_pair(Path(data), i)) for i in ids]
    inner = [ids.index(i) for i in split["inner_val"]]
    s = SETTINGS
    config = TrainingConfig(
        base=base_card(arch, Path(workdir)),
        from_imagenet=True,  # never the bundled weights: they saw the validation images
        images=[p[0] for p in pairs],
        annotations=[p[1] for p in pairs],
        output=Path(workdir) / f"{NAME}-{arch}.pt",
        val_indices=inner,
        epochs=epochs,
        batch_size=s["batch_size"],
        crop=s["crop"],
        lr=s["lr"][arch],
        weight_decay=s["weight_decay"],
        seed=s["seed"],
        device="cpu",
        patience=None,
        steps_per_epoch=steps,
        scale_range=s["scale_range"],
        contact_weight=s["contact_weight"],
        name=NAME,
        overwrite=True,
    )
    result = train(config, progress=log_epochs)
    return {
        "arch": arch,
        "weights": str(result.weights),
        "card": str(result.card),
        "inner_val_iou": result.score,
        "best_epoch": result.best_epoch,
        "history": result.history,
        "train_s": time.perf_counter() - started,
        "n_train": len(ids) - len(inner),
        "n_inner_val": len(inner),
    }


def tune_postprocess(weights: Path, data: Path, inner_ids: list[str]) -> dict:
    """Foreground threshold and seed distance with the best instance F1 at IoU 0.5 on the
    inner validation images (at model scale)."""
    from napari_cellquant.core.inference import predict_maps
    from napari_cellquant.core.metrics import evaluate_instances
    from napari_cellquant.core.postprocess import instances_from_maps
    from napari_cellquant.core.predict import load_model
    from napari_cellquant.core.training import make_sample

    model = load_model(weights, "cpu")
    card = model.card
    truth, maps = [], []
    for image_id in inner_ids:
        image, annotation = to_model_scale(*load_pair(data, image_id))
        sample = make_sample(image, annotation, card)
        maps.append(
            predict_maps(
                sample.pixels, model.network, tile=card.tile, overlap=card.overlap, device="cpu"
            )
        )
        truth.append(annotation)
    tuned = ("foreground_threshold", "min_distance", "seed_threshold")
    settings = {k: v for k, v in card.postprocess.items() if k not in tuned}
    table = []
    for fg in FOREGROUND:
        for seeds in SEEDS:
            found = []
            for t, m in zip(truth, maps):
                labels, classes, scores = instances_from_maps(
                    m["classes"],
                    distance=m.get("distance"),
                    foreground=m["classes_foreground"],
                    foreground_threshold=fg,
                    **seeds,
                    **settings,
                )
                found.append(t.copy(labels=labels, classes=classes, scores=scores))
            f1 = evaluate_instances(truth, found)["f1"] or 0.0
            table.append({"foreground_threshold": fg, **seeds, "f1": round(f1, 4)})
    best = max(table, key=lambda row: row["f1"])
    return {
        "best": {k: best[k] for k in tuned},
        "inner_val_f1": best["f1"],
        "table": table,
    }


def size_model_ids(split: dict) -> list[str]:
    """The images the size model is fitted on: those the network trained on (fluorescence
    train without the inner images, which decide whether it is used)."""
    inner = set(split["inner_val"])
    return [i for i in split["train"] if split["modality"][i] == "fluorescence" and i not in inner]


def inner_figures(model, data: Path, ids: list[str]) -> dict:
    """Nuclei figures of ``model`` on the inner images through ``predict`` (diameter
    estimated, as at prediction)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from accuracy import nuclei_figures

    from napari_cellquant.core.predict import predict

    truth, found = [], []
    for image_id in ids:
        image, annotation = load_pair(data, image_id)
        result = predict(image, model)
        result.image_name = annotation.image_name
        truth.append(annotation)
        found.append(result)
    figures = nuclei_figures(truth, found)
    return {k: figures[k] for k in ("f1", "count_median_error", "nuclei_pred", "nuclei_gt")}


#: the rule that adopts a size model, set before it was first tried (2026-12-07)
SIZE_MODEL_RULE = "higher F1 and a median count error no worse than with the weight-free estimate"


def choose_size_model(model, weights: Path, data: Path, split: dict) -> dict | None:
    """The size model fitted for ``model`` (loaded from ``weights``, its card without one),
    with the inner figures that decided it, if it meets :data:`SIZE_MODEL_RULE` on the inner
    images through ``predict``; None if not."""
    import dataclasses

    from napari_cellquant.core.predict import Model

    fitted = fit_size(weights, data, size_model_ids(split))
    sized = Model(
        card=dataclasses.replace(model.card, params={**model.card.params, "size_model": fitted}),
        network=model.network,
        device=model.device,
    )
    decision = {
        "weight_free": inner_figures(model, data, split["inner_val"]),
        "size_model": inner_figures(sized, data, split["inner_val"]),
    }
    adopt = (
        decision["size_model"]["f1"] > decision["weight_free"]["f1"]
        and decision["size_model"]["count_median_error"]
        <= decision["weight_free"]["count_median_error"]
    )
    log.info("size model on the inner images: %s; adopted: %s", decision, adopt)
    if not adopt:
        return None
    fitted["decided_on"] = {
        "images": f"the {len(split['inner_val'])} inner images, through predict",
        "rule": SIZE_MODEL_RULE,
        **decision,
    }
    return fitted


def refit_size_model(data: Path) -> None:
    """Fit the bundled network's size model again and, if the rule holds, bundle it with
    validation figures measured with and without it."""
    from blood_detector import save_bundled

    from napari_cellquant.core.models.registry import get_card, resolve_weights
    from napari_cellquant.core.predict import load_model

    card = get_card(NAME)
    card.params.pop("size_model", None)
    save_bundled(card, BUNDLED)  # the network alone until the rule says otherwise
    fitted = choose_size_model(
        load_model(NAME, "cpu"), Path(resolve_weights(card)), data, split_ids(data)
    )
    if fitted is None:
        return
    without = evaluate_on_val(NAME, data)
    card.params["size_model"] = fitted
    save_bundled(card, BUNDLED)
    card.metrics["dsb2018_val"] = {
        **card.metrics["dsb2018_val"],
        **evaluate_on_val(NAME, data),
        "without_size_model": without,
    }
    save_bundled(card, BUNDLED)


def fit_size(weights: Path, data: Path, ids: list[str]) -> dict:
    """``params.size_model`` for the network of ``weights``: its pooled encoder features of
    each image of ``ids`` at the zooms that show its nuclei ``SIZE_MODEL_DIAMETERS`` wide
    (within 0.2-5x), regressed on those diameters (``core.size_model``)."""
    from napari_cellquant.core.predict import load_model
    from napari_cellquant.core.size_model import fit_size_model, pooled_features

    model = load_model(weights, "cpu")
    rows, diameters, groups = [], [], []
    for index, image_id in enumerate(ids):
        image, annotation = load_pair(data, image_id)
        true = nucleus_diameter(annotation.labels)
        for shown in SIZE_MODEL_DIAMETERS:
            if 0.2 <= shown / true <= 5.0:
                rows.append(pooled_features(image, model, shown / true))
                diameters.append(shown)
                groups.append(index)
    fitted = fit_size_model(np.array(rows), np.array(diameters), np.array(groups))
    fitted["images"] = len(ids)
    log.info(
        "size model: %d views of %d images, penalty %g, CV median |log error| %.3f",
        len(rows),
        len(ids),
        fitted["penalty"],
        fitted["cv_median_log_error"],
    )
    return fitted


#: the rule that adopts post-processing chosen through predict, set before it was first
#: tried (2026-12-07)
RETUNE_RULE = "higher inner F1 than the card's settings and a median count error no worse"


def retune_through_predict(model, data: Path, inner_ids: list[str]) -> dict:
    """The foreground threshold and seeds (the :func:`tune_postprocess` grid) with the best
    F1 on the inner images through ``predict`` as it runs: at the scale the model reads,
    not at the true one. Returns the best point, the card's own and whether the rule holds."""
    import dataclasses

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from accuracy import nuclei_figures

    from napari_cellquant.core import predict as predicting

    run_postprocess = predicting._maps_to_annotation
    kept: list = []

    def keeping(maps, card, shape, border=0):
        kept.append((maps, card, shape, border))
        return run_postprocess(maps, card, shape, border)

    truth, runs = [], []
    predicting._maps_to_annotation = keeping  # each image's maps, kept to post-process again
    try:
        for image_id in inner_ids:
            image, annotation = load_pair(data, image_id)
            kept.clear()
            found = predicting.predict(image, model)
            runs.append((kept[-1], found.meta["zoom"], image.shape[:2]))
            truth.append(annotation)
    finally:
        predicting._maps_to_annotation = run_postprocess

    def scored(settings: dict) -> dict:
        found = []
        for ((maps, card, shape, border), zoom, image_shape), annotation in zip(runs, truth):
            card = dataclasses.replace(card, postprocess={**card.postprocess, **settings})
            result = run_postprocess(maps, card, shape, border)
            if zoom != 1.0:
                result = predicting._annotation_to_shape(result, image_shape, zoom)
            result.image_name = annotation.image_name
            found.append(result)
        figures = nuclei_figures(truth, found)
        return {
            **settings,
            "f1": figures["f1"],
            "count_median_error": figures["count_median_error"],
        }

    tuned = ("foreground_threshold", "min_distance", "seed_threshold")
    own = scored({k: model.card.postprocess.get(k) for k in tuned})
    table = [scored({"foreground_threshold": fg, **seeds}) for fg in FOREGROUND for seeds in SEEDS]
    best = max(table, key=lambda row: row["f1"])
    adopt = best["f1"] > own["f1"] and best["count_median_error"] <= own["count_median_error"]
    log.info("post-processing through predict: card %s, best %s; adopted: %s", own, best, adopt)
    return {"best": {k: best[k] for k in tuned}, "card": own, "chosen": best, "adopted": adopt}


def retune_bundled(data: Path) -> None:
    """Choose the bundled model's post-processing through ``predict`` on the inner images
    and, if the rule holds, bundle it with validation figures measured again."""
    from blood_detector import save_bundled

    from napari_cellquant.core.models.registry import get_card
    from napari_cellquant.core.predict import load_model

    split = split_ids(data)
    retuned = retune_through_predict(load_model(NAME, "cpu"), data, split["inner_val"])
    if not retuned["adopted"]:
        return
    card = get_card(NAME)
    before = card.metrics["dsb2018_val"]
    card.postprocess.update(retuned["best"])
    card.training["postprocess_chosen_through_predict"] = {
        "images": f"the {len(split['inner_val'])} inner images",
        "rule": RETUNE_RULE,
        "card_before": retuned["card"],
        "chosen": retuned["chosen"],
    }
    save_bundled(card, BUNDLED)
    card.metrics["dsb2018_val"] = {
        **before,
        **evaluate_on_val(NAME, data),
        "before_retuning": {k: v for k, v in before.items() if not isinstance(v, dict)},
    }
    save_bundled(card, BUNDLED)


#: fluo-classical settings tried on training images (``DEFAULT_PARAMS`` overrides): a
#: coarse grid, then a finer one below it, where the coarse best sat on the grid's lower
#: edge in three of the four settings
CLASSICAL_GRIDS = (
    {
        "otsu_floor": (0.5, 0.75, 1.0),
        "min_snr": (3.0, 5.0),
        "min_distance": (0.3, 0.5),
        "block_size": (3.0, 6.0),
    },
    {
        "otsu_floor": (0.3, 0.5),
        "min_snr": (1.5, 3.0),
        "min_distance": (0.2, 0.3),
        "block_size": (3.0,),
    },
)


def tune_classical(data: Path, every: int = 5) -> dict:
    """The ``fluo-classical`` settings with the best instance F1 at IoU 0.5 on every
    ``every``-th fluorescence training image (diameter estimated, as at prediction)."""
    import itertools

    from napari_cellquant.core.classical import DEFAULT_PARAMS
    from napari_cellquant.core.metrics import evaluate_instances
    from napari_cellquant.core.models.registry import get_card
    from napari_cellquant.core.predict import Model, predict

    split = split_ids(data)
    modality = split["modality"]
    ids = [i for i in split["train"] if modality[i] == "fluorescence"][::every]  # type: ignore
    pairs = [load_pair(data, i) for i in ids]
    table = []
    points = {
        tuple(zip(grid, values))
        for grid in CLASSICAL_GRIDS
        for values in itertools.product(*grid.values())
    }
    for point in sorted(points):
        overrides = dict(point)
        card = get_card("fluo-classical")
        card.params = {**DEFAULT_PARAMS["fluo-classical"], **overrides}
        model = Model(card=card, network=None, device="cpu")
        found = []
        for image, truth in pairs:
            result = predict(image, model)
            result.image_name = truth.image_name
            found.append(result)
        f1 = evaluate_instances([t for _, t in pairs], found)["f1"] or 0.0
        table.append({**overrides, "f1": round(f1, 4)})
        log.info("fluo-classical %s: F1 %.4f", overrides, f1)
    best = max(table, key=lambda row: row["f1"])
    return {
        "images": len(pairs),
        "best": {k: best[k] for k in CLASSICAL_GRIDS[0]},
        "train_f1": best["f1"],
        "table": table,
    }


def evaluate_on_val(model: str | Path, data: Path) -> dict:
    """Figures of a model on the fluorescence images of the validation split, predicted
    through ``core.predict.predict`` (diameter estimated)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from accuracy import dsb2018_val, nuclei_figures, predict_all

    pairs = dsb2018_val(data)
    predictions, seconds = predict_all(model, pairs)
    return {
        **nuclei_figures([a for _, a in pairs], predictions),
        "seconds_per_image": seconds / len(pairs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=BUNDLED)
    parser.add_argument("--workdir", type=Path, default=ROOT / "build" / NAME)
    parser.add_argument(
        "--arch",
        choices=[*ARCHS, "both"],
        default="efficientnet",
        help="both: train the two side by side and keep the better on inner validation "
        "(the EfficientNet won at 14 epochs; the bundled model is it, at 50)",
    )
    parser.add_argument("--epochs", type=int, default=SETTINGS["epochs"])
    parser.add_argument(
        "--steps",
        type=int,
        default=SETTINGS["steps_per_epoch"],
        help="optimisation steps per epoch",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per training process (one process per network)",
    )
    parser.add_argument(
        "--skip-training",
        action="store_true",
        help="take the networks of an earlier run in --workdir (trained.json)",
    )
    parser.add_argument("--no-bundle", action="store_true")
    parser.add_argument(
        "--refit-size-model",
        action="store_true",
        help="only fit the size model of the bundled network again, and measure it",
    )
    parser.add_argument(
        "--retune-postprocess",
        action="store_true",
        help="only choose the bundled model's post-processing again through predict on the "
        "inner images, and measure it",
    )
    parser.add_argument(
        "--tune-classical",
        action="store_true",
        help="only re-tune fluo-classical on training images and print it",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.tune_classical:
        print(json.dumps(tune_classical(args.data), indent=2))
        return 0
    if args.refit_size_model:
        refit_size_model(args.data)
        return 0
    if args.retune_postprocess:
        retune_bundled(args.data)
        return 0
    archs = list(ARCHS) if args.arch == "both" else [args.arch]
    record_path = args.workdir / "trained.json"
    if args.skip_training:
        trained = json.loads(record_path.read_text(encoding="utf-8"))
    else:  # two one-thread processes beat one two-thread process on this 2-core CPU
        with ProcessPoolExecutor(len(archs), mp_context=get_context("spawn")) as pool:
            futures = [
                pool.submit(
                    train_one,
                    a,
                    str(args.data),
                    str(args.workdir),
                    args.epochs,
                    args.steps,
                    args.threads,
                )
                for a in archs
            ]
            trained = {f.result()["arch"]: f.result() for f in futures}
        record_path.write_text(json.dumps(trained, indent=2, default=str), encoding="utf-8")
    split = split_ids(args.data)
    for arch, run in trained.items():
        run["postprocess"] = tune_postprocess(Path(run["weights"]), args.data, split["inner_val"])  # type: ignore[arg-type]
        log.info(
            "%s: inner-val IoU %.4f, F1 %.4f with %s",
            arch,
            run["inner_val_iou"],
            run["postprocess"]["inner_val_f1"],
            run["postprocess"]["best"],
        )
    chosen = max(trained, key=lambda a: trained[a]["postprocess"]["inner_val_f1"])
    report = {"trained": trained, "chosen": chosen}
    from blood_detector import halve

    from napari_cellquant.core.models.card import ModelCard

    run = trained[chosen]
    card = ModelCard.load(run["card"])
    card.postprocess.update(run["postprocess"]["best"])
    # the weight-free estimate reads nuclei at their size (median ratio 1.01 on DSB2018)
    card.diameter_px = {"cell": NUCLEUS_PX, "objects": NUCLEUS_PX}
    card.params["refine_scale"] = SETTINGS["refine_scale"]
    card.params["flip_views"] = SETTINGS["flip_views"]
    card.save(run["card"], overwrite=True)
    halve(Path(run["weights"]), Path(run["card"]))  # the figures are those of fp16 weights
    from napari_cellquant.core.predict import load_model

    fitted = choose_size_model(
        load_model(run["card"], "cpu"), Path(run["weights"]), args.data, split
    )
    if fitted is not None:
        card = ModelCard.load(run["card"])
        card.params["size_model"] = fitted
        card.save(run["card"], overwrite=True)
    retuned = retune_through_predict(load_model(run["card"], "cpu"), args.data, split["inner_val"])
    if retuned["adopted"]:
        card = ModelCard.load(run["card"])
        card.postprocess.update(retuned["best"])
        card.save(run["card"], overwrite=True)
    report["val"] = evaluate_on_val(run["weights"], args.data)
    text = json.dumps(report, indent=2, default=str)
    print(text)
    (args.workdir / "report.json").write_text(text + "\n", encoding="utf-8")
    if not args.no_bundle:
        write_card(run, report, split, args.out)
    return 0


def write_card(run: dict, report: dict, split: dict, out: Path) -> None:
    from blood_detector import bundled_card, save_bundled

    kind = (
        "ImageNet-pretrained EfficientNet-Lite0 U-Net"
        if run["arch"] == "efficientnet"
        else "c-ResUnet-like residual U-Net"
    )
    card = bundled_card(
        Path(run["weights"]),
        Path(run["card"]),
        out,
        NAME,
        f"fluorescent nuclei and cells: {kind} trained on DSB2018 "
        "fluorescence (foreground + distance map, watershed)",
    )
    card.training["images"] = (
        f"dsb2018 fluorescence train: {run['n_train']} images trained "
        f"on, {run['n_inner_val']} held back, resized to "
        f"{NUCLEUS_PX:g} px per nucleus"
    )
    card.training["split"] = (
        f"dsb2018 sorted by id within each modality: every "
        f"{VAL_EVERY}th (index 0, {VAL_EVERY}, ...) is validation; of the "
        f"fluorescence rest, every {INNER_VAL_EVERY}th is inner validation"
    )
    card.training["validation_ids"] = split["val"]
    card.training["epoch_network_postprocess_chosen_on"] = "inner validation (train split)"
    card.training["compared"] = {
        a: {
            "inner_val_iou": r["inner_val_iou"],
            "inner_val_f1": r["postprocess"]["inner_val_f1"],
            "train_s": round(r["train_s"]),
        }
        for a, r in report["trained"].items()
    }
    card.training["networks_compared_at_14_epochs"] = NETWORKS_AT_14_EPOCHS
    card.training["time_s"] = round(run["train_s"])
    card.training["script"] = "scripts/train_bundled.py --only fluo-resunet"
    card.metrics = {
        "dsb2018_val": {
            "measured_on": "dsb2018 validation split (ids in training.validation_ids), never "
            "trained or tuned on",
            "source": "core.metrics via benchmarks/accuracy.py, predicted by core.predict.predict "
            "(diameter estimated)",
            **report["val"],
        }
    }
    save_bundled(card, out)


if __name__ == "__main__":
    sys.exit(main())

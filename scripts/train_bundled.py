"""Train the bundled models and measure them on images they never saw.

    python scripts/train_bundled.py [--data ../shared/data] [--only blood-unet] [--jobs 2]

``blood-detector`` has a fixed split instead of folds (see ``scripts/blood_detector.py``):
trained on ``txl_pbc`` train (a tenth of it held back to pick the epoch and the threshold),
measured on ``txl_pbc`` val, which it never sees. ``fluo-resunet`` likewise on DSB2018 (a
fixed split by modality, ``scripts/fluo_nuclei.py``); ``net-area`` by folds of whole samples
of Coelho et al. 2015 (``scripts/net_area.py``); ``wbc-types``, the WBC type classifier that
``blood-detector`` calls, by 4 folds of BCCD photographs and wbc_crops (the composites' typed
WBCs in every fold's training; ``scripts/wbc_types.py``); ``net-detector`` trains nothing (it
classes ``fluo-resunet``'s nuclei by rules whose thresholds ``scripts/net_loio.py`` fits,
leave-one-image-out on the 2 NET fluorescence images for its figures).

``blood-unet`` here: k-fold cross-validation (14 images of blood_smear_224, colour maps read as
blood10): a model is trained on the other images only, predicts the held-out ones through
``core.predict.predict`` (the same path as ``cellquant predict``), and the held-out predictions
of all folds are scored with ``core.metrics`` (what ``cellquant evaluate`` prints). Then the
final model is trained on all images with the same settings and written, with the held-out
figures in its card's ``metrics``, to ``src/napari_cellquant/core/models/bundled/<name>.pt``
and ``.json``. The blood images themselves are never copied into the package.

Each training runs in its own process on one thread (``--jobs`` at a time): on a 2-core CPU
two one-thread processes beat one two-thread process. Wall and CPU time per job and in total
are printed and written to the report.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "src" / "napari_cellquant" / "core" / "models" / "bundled"
DEFAULT_DATA = ROOT.parent / "shared" / "data"

#: training settings per model (same for every fold and for the final model)
SETTINGS: dict[str, dict] = {
    "blood-unet": {
        "data": "blood_smear_224",
        "folds": 3,
        "crop": 112,
        "batch_size": 6,
        "epochs": 60,
        "steps_per_epoch": 40,
        "lr": 3e-3,
        "scale_range": (0.85, 1.15),
        "seed": 0,
        # composites of real cells (core.composites) from the fold's training images and
        # wbc_crops' typed WBCs: 1500 of them (45 epochs, 3 parts ordinary smears) were tried
        # and not adopted; see the README
        "composites": 0,
        # ordinary smears (TXL-PBC train, every n-th photograph; never its val): without them
        # the network called most RBCs of any other smear infected (the composites' infected
        # and healthy RBCs come from smears that look different)
        "plain_smears_every": 5,
        "plain_repeats": 1,
        # every n-th of those photographs is held back to pick the epoch (validating on the
        # composites would cost more than training)
        "plain_val_every": 10,
        # the 14 seed composites themselves, repeated to give about as many training crops as
        # the photographs (crops are drawn by area)
        "composite_repeats": 12,
        # the prior against false malaria (params.class_logit_bias): the smallest shift of the
        # infected-RBC logit, in steps of 0.1, that calls at most this share of the RBCs of
        # ordinary smears infected, on TXL-PBC train photographs blood-unet never trains on
        # (every 8th from the 2nd of those that are not every plain_smears_every-th); half
        # the goal of 1 %, since one set of smears is a small sample of a lab's
        "infected_tuning_share": 0.005,
    },
}

#: models whose recipe is a script of its own (its split and figures are its own)
OWN_SCRIPTS = {
    "wbc-types": "wbc_types",
    "blood-detector": "blood_detector",
    "fluo-resunet": "fluo_nuclei",
    "net-area": "net_area",
    "net-detector": "net_loio",  # no training: rule thresholds fitted on the 2 NET images
}

DESCRIPTIONS = {
    "blood-unet": "U-Net: 5-part WBC differential, platelets, clumps, infected and healthy RBCs "
    "(trained on the 14 blood_smear_224 composites)",
}

log = logging.getLogger("train_bundled")


def load_pairs(name: str, data: Path) -> list:
    """(image, Annotation) pairs of a model's data set."""
    from napari_cellquant.core.training import load_training_pairs

    folder = data / SETTINGS[name]["data"]
    return load_training_pairs(folder / "images", folder / "segments", class_set="blood10")


def plain_smear_pairs(data: Path, every: int, rbc_px: float) -> list:
    """Ordinary smear photographs for blood-unet, resized so a whole RBC is ``rbc_px``.

    Every ``every``-th TXL-PBC train photograph (by name). Its truth is boxes, so each object
    becomes the ellipse inscribed in its box (``instances_from_boxes``): every RBC healthy
    (these smears hold no parasites), every platelet a platelet, every WBC an object of
    unknown type (it shapes the distance head; its class is ignored by the loss).
    """
    import numpy as np
    from blood_detector import to_model_scale, whole_cell_diameter

    from napari_cellquant.core.annotation import Annotation
    from napari_cellquant.core.classes import get_class_set
    from napari_cellquant.core.io import read_annotations
    from napari_cellquant.core.io.images import read_image
    from napari_cellquant.core.postprocess import instances_from_boxes

    chosen = read_annotations(data / "txl_pbc" / "labels" / "train")[::every]
    # TXL-PBC's median RBC box includes cells cut by the edge: a whole cell is larger
    target = rbc_px / whole_cell_diameter(chosen, 1.0)
    blood10 = get_class_set("blood10")
    to_blood10 = np.zeros(4, dtype=np.int64)  # blood3 id -> blood10 id (0: WBC, unknown type)
    to_blood10[[1, 3]] = blood10.id_of("healthy_rbc"), blood10.id_of("platelet")
    pairs = []
    for image, scaled in to_model_scale([(read_image(a.image_path), a) for a in chosen], target):
        labels, classes, _ = instances_from_boxes(scaled.boxes, image.shape[:2])
        typed = {i: int(to_blood10[c]) for i, c in classes.items() if to_blood10[c]}
        pairs.append((image, Annotation(labels, blood10, typed, image_name=scaled.image_name)))
    return pairs


def folds_of(pairs: list, k: int) -> list[list[int]]:
    """Held-out image indices of ``k`` folds, every image held out once.

    Images are sorted by their dominant foreground class (in the blood set: infected or
    healthy RBCs, a property of the whole image) and dealt out in turn, so every fold holds
    out, and trains on, both kinds.
    """
    import numpy as np

    def dominant(index: int) -> int:
        annotation = pairs[index][1]
        classes = annotation.class_map()
        counts = np.bincount(classes.ravel(), minlength=2)[1:]
        if not counts.any():
            counts = np.bincount(annotation.boxes.class_ids, minlength=2)[1:]
        return int(np.argmax(counts))

    n = len(pairs)
    k = min(k, n)
    order = sorted(range(n), key=lambda i: (dominant(i), annotation_name(pairs[i])))
    return [sorted(order[i::k]) for i in range(k)]


def annotation_name(pair: tuple) -> str:
    return pair[1].image_name


def infected_tuning_photos(data: Path) -> list:
    """TXL-PBC train photographs (no parasites) that blood-unet never trains on, to calibrate
    its prior against false malaria: every 8th, from the 2nd, of those that are not every
    ``plain_smears_every``-th (TXL-PBC val is never used)."""
    from napari_cellquant.core.io import read_annotations

    every = SETTINGS["blood-unet"]["plain_smears_every"]
    train = read_annotations(data / "txl_pbc" / "labels" / "train")
    return [a for i, a in enumerate(train) if i % every][1::8]


def infected_bias(card_path: Path, data: Path, share: float) -> float:
    """The smallest shift (0, -0.1, -0.2, ...) of blood-unet's infected-RBC logit that calls
    at most ``share`` of the RBCs of :func:`infected_tuning_photos` infected.

    Each composite's RBCs are all infected or all healthy, cut from smears that look
    different, so the network's margin between the two is thin and its false calls on other
    smears need a prior. Each photograph's scale is measured once (by the card's
    ``scale_from`` detector) and reused for every shift."""
    from napari_cellquant.core.io.images import read_image
    from napari_cellquant.core.models.card import ModelCard
    from napari_cellquant.core.predict import load_model, predict

    photos = [read_image(a.image_path) for a in infected_tuning_photos(data)]
    card = ModelCard.load(card_path)
    diameters = None
    for step in range(31):
        bias = 0.0 - step / 10
        card.params["class_logit_bias"] = {"infected_rbc": bias}
        card.save(card_path, overwrite=True)
        model = load_model(card_path, "cpu")
        found = [
            predict(p, model, diameter=None if diameters is None else diameters[k])
            for k, p in enumerate(photos)
        ]
        diameters = diameters or [f.meta["diameter_px"] for f in found]
        infected = sum(f.counts()["infected_rbc"] for f in found)
        rbc = infected + sum(f.counts()["healthy_rbc"] for f in found)
        log.info("infected-RBC logit %+.1f: %d of %d RBCs called infected", bias, infected, rbc)
        if infected <= share * max(rbc, 1):
            return bias
    return bias


def wbc_crop_cutouts(data: Path) -> list:
    """Every typed WBC of ``wbc_crops`` as a cut-out with its mask."""
    import numpy as np
    from wbc_types import read_wbc_crops

    from napari_cellquant.core.composites import Cell
    from napari_cellquant.core.postprocess import boxes_from_labels

    cells = []
    for group, image, mask, kind in read_wbc_crops(data):
        x, y, w, h = boxes_from_labels(mask.astype(np.int32), {1: 1}).xywh[0].astype(int)
        box = np.s_[y : y + h, x : x + w]
        cells.append(Cell(image[box], mask[box], kind, group))
    return cells


def composite_pairs(train_pairs: list, data: Path, n: int, seed: int) -> list:
    """``n`` composite smears (``core.composites``) of the cells of ``train_pairs`` (never a
    held-out image's) and of ``wbc_crops``' typed WBCs, on the backgrounds of ``train_pairs``.

    Each wbc_crops folder is resized as a whole so its median WBC is as large as the median
    WBC of ``train_pairs``: the types keep their sizes relative to each other.
    """
    import numpy as np

    from napari_cellquant.core.composites import (
        WBC_KINDS,
        cells_from_annotation,
        composite_smear,
        resized_cell,
        smear_background,
    )

    cells, backgrounds = [], []
    for image, annotation in train_pairs:
        cells += cells_from_annotation(image, annotation)
        backgrounds.append(smear_background(image, annotation))

    def diameter(cell) -> float:
        return float(2 * np.sqrt(cell.mask.sum() / np.pi))

    target = float(np.median([diameter(c) for c in cells if c.class_name in WBC_KINDS]))
    crops = wbc_crop_cutouts(data)
    for folder in sorted({c.source.split("/")[0] for c in crops}):
        mine = [c for c in crops if c.source.startswith(folder + "/")]
        factor = target / float(np.median([diameter(c) for c in mine]))
        cells += [resized_cell(c, factor) for c in mine]
    rng = np.random.default_rng(seed)
    return [
        composite_smear(cells, backgrounds, rng, name=f"composite-{seed}-{i}") for i in range(n)
    ]


def blood_unet_training_set(name: str, train_pairs: list, data: Path) -> tuple[list, list[int]]:
    """blood-unet's training images for a fold whose seed composites are ``train_pairs``:
    those, composites made of their cells, and ordinary smear photographs; and the indices of
    the photographs held back to pick the epoch."""
    from napari_cellquant.core.models.registry import get_card

    s = SETTINGS[name]
    plain = plain_smear_pairs(data, s["plain_smears_every"], get_card(name).diameter_px["rbc"])
    plain_val = plain[:: s["plain_val_every"]]
    plain_train = [p for i, p in enumerate(plain) if i % s["plain_val_every"]]
    made = composite_pairs(train_pairs, data, s["composites"], s["seed"]) if s["composites"] else []
    pairs = (
        train_pairs * s["composite_repeats"] + made + plain_train * s["plain_repeats"] + plain_val
    )
    return pairs, list(range(len(pairs) - len(plain_val), len(pairs)))


def run_job(
    name: str,
    data: str,
    held_out: list[int] | None,
    workdir: str,
    tag: str,
    epochs_scale: float = 1.0,
) -> dict:
    """Train on all images but ``held_out`` and predict those (one process, one thread)."""
    import torch

    torch.set_num_threads(1)
    from napari_cellquant.core.predict import load_model, predict
    from napari_cellquant.core.training import TrainingConfig, train

    logging.basicConfig(level=logging.WARNING)
    started, cpu0 = time.perf_counter(), time.process_time()
    pairs = load_pairs(name, Path(data))
    held = set(held_out or [])
    train_pairs = [p for i, p in enumerate(pairs) if i not in held]
    s = SETTINGS[name]
    validation: dict = {"val_fraction": 0.0}
    if s.get("plain_smears_every"):
        train_pairs, held_back = blood_unet_training_set(name, train_pairs, Path(data))
        validation = {"val_indices": held_back}
    config = TrainingConfig(
        base=name,
        images=[p[0] for p in train_pairs],
        annotations=[p[1] for p in train_pairs],
        output=Path(workdir) / f"{name}-{tag}.pt",
        **validation,
        epochs=max(1, round(s["epochs"] * epochs_scale)),
        batch_size=s["batch_size"],
        crop=s["crop"],
        lr=s["lr"],
        seed=s["seed"],
        device="cpu",
        patience=None,
        steps_per_epoch=s["steps_per_epoch"],
        from_scratch=True,
        scale_range=s["scale_range"],
        name=name,
        overwrite=True,
    )
    result = train(config)
    if s.get("infected_tuning_share"):
        from napari_cellquant.core.models.card import ModelCard

        card = ModelCard.load(result.card)
        card.params["class_logit_bias"] = {
            "infected_rbc": infected_bias(result.card, Path(data), s["infected_tuning_share"])
        }
        card.save(result.card, overwrite=True)
    predictions = []
    if held:
        model = load_model(result.weights, "cpu")
        for i in sorted(held):
            image, truth = pairs[i]
            found = predict(image, model)
            found.image_name = truth.image_name
            predictions.append(found)
    return {
        "name": name,
        "tag": tag,
        "held_out": sorted(held),
        "held_out_names": [pairs[i][1].image_name for i in sorted(held)],
        "weights": str(result.weights),
        "card": str(result.card),
        "predictions": predictions,
        "history": result.history,
        "wall_s": time.perf_counter() - started,
        "cpu_s": time.process_time() - cpu0,
    }


def figures(truth: list, predictions: list) -> dict:
    """The held-out figures of ``blood-unet``, from ``core.metrics``."""
    from napari_cellquant.core.metrics import evaluate

    scores = evaluate(truth, predictions, iou=0.5)
    semantic = scores["semantic"]
    return {
        "mean_iou": semantic["mean_iou"],
        "per_class_iou": semantic["per_class"],
        "mean_iou_foreground": semantic["mean_iou_foreground"],
        "pixel_accuracy": semantic["pixel_accuracy"],
        "instance_f1@0.5": scores["instances"]["f1"],
        "count_mae_total": scores["counts"]["mae_total"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--only", choices=[*SETTINGS, *OWN_SCRIPTS], action="append")
    parser.add_argument("--jobs", type=int, default=2, help="trainings at a time (1 thread each)")
    parser.add_argument(
        "--folds-only",
        action="store_true",
        help="cross-validate only; do not train or write the final models",
    )
    parser.add_argument(
        "--epochs-scale",
        type=float,
        default=1.0,
        help="multiply every model's epochs (quick checks of the script)",
    )
    parser.add_argument(
        "--fold", type=int, action="append", help="run only these folds (1-based; experiments)"
    )
    parser.add_argument("--report", type=Path, help="write the JSON report here")
    parser.add_argument("--out", type=Path, default=BUNDLED, help="where the final models go")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    names = args.only or [*SETTINGS, *OWN_SCRIPTS]
    for name in [n for n in names if n in OWN_SCRIPTS]:
        import importlib

        names.remove(name)
        script = importlib.import_module(OWN_SCRIPTS[name])
        script.main(["--data", str(args.data), "--out", str(args.out)])
    if not names:
        return 0
    workdir = tempfile.mkdtemp(prefix="cellquant-bundled-")
    started = time.perf_counter()

    jobs = []
    for name in names:
        pairs = load_pairs(name, args.data)
        for k, held in enumerate(folds_of(pairs, SETTINGS[name]["folds"])):
            if args.fold and k + 1 not in args.fold:
                continue
            jobs.append((name, held, f"fold{k + 1}"))
        if not args.folds_only:
            jobs.append((name, None, "final"))
    log.info("%d trainings, %d at a time, in %s", len(jobs), args.jobs, workdir)
    done: dict[tuple[str, str], dict] = {}
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        futures = [
            pool.submit(run_job, name, str(args.data), held, workdir, tag, args.epochs_scale)
            for name, held, tag in jobs
        ]
        for future in futures:
            out = future.result()
            done[(out["name"], out["tag"])] = out
            log.info(
                "%s %s: wall %.0f s, cpu %.0f s, last loss %.4f",
                out["name"],
                out["tag"],
                out["wall_s"],
                out["cpu_s"],
                out["history"][-1]["loss"],
            )
    wall = time.perf_counter() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    report: dict = {
        "wall_s": wall,
        "cpu_s": children.ru_utime + children.ru_stime,
        "jobs": args.jobs,
        "models": {},
    }
    for name in names:
        pairs = load_pairs(name, args.data)
        truth = {a.image_name: a for _, a in pairs}
        folds = [v for (n, tag), v in sorted(done.items()) if n == name and tag != "final"]
        per_fold = []
        pooled_truth, pooled_pred = [], []
        for fold in folds:
            gt = [truth[p.image_name] for p in fold["predictions"]]
            per_fold.append(
                {
                    "fold": fold["tag"],
                    "held_out": fold["held_out_names"],
                    **figures(gt, fold["predictions"]),
                }
            )
            pooled_truth += gt
            pooled_pred += fold["predictions"]
        held_out = figures(pooled_truth, pooled_pred)
        scheme = "leave-one-image-out" if len(folds) == len(pairs) else f"{len(folds)}-fold"
        entry = {
            "scheme": scheme,
            "pooled": held_out,
            "per_fold": per_fold,
            "train_cpu_s": sum(v["cpu_s"] for (n, _), v in done.items() if n == name),
            "train_wall_s": sum(v["wall_s"] for (n, _), v in done.items() if n == name),
        }
        if (name, "final") in done:
            entry["files"] = write_bundled(
                name, done[(name, "final")], entry, args.out, len(pairs), args.data
            )
        report["models"][name] = entry
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.report:
        args.report.write_text(text + "\n", encoding="utf-8")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def write_bundled(
    name: str, final: dict, entry: dict, out: Path, n_images: int, data: Path
) -> dict:
    """Copy the final weights into the package and write their card with held-out figures."""
    from blood_detector import bundled_card, save_bundled

    out.mkdir(parents=True, exist_ok=True)
    card = bundled_card(Path(final["weights"]), Path(final["card"]), out, name, DESCRIPTIONS[name])
    card.training["images"] = f"all {n_images} images of shared/data/{SETTINGS[name]['data']}"
    if SETTINGS[name].get("plain_smears_every"):
        s = SETTINGS[name]
        card.training["images"] += (
            f", each repeated {s['composite_repeats']} times, and every "
            f"{s['plain_smears_every']}th TXL-PBC train photograph by name (ordinary smears: "
            "RBC boxes as healthy-RBC ellipses, platelets, WBCs of unknown type ignored; every "
            f"{s['plain_val_every']}th of them held back to pick the epoch); TXL-PBC val never"
        )
        card.training["objects_note"] = "objects counted with the repeats"
        card.params["scale_from"] = "blood-detector"
        card.training["class_logit_bias_chosen_on"] = (
            f"{len(infected_tuning_photos(data))} TXL-PBC train photographs blood-unet "
            "never trains on (every 8th, from the 2nd, of those that are not every "
            f"{s['plain_smears_every']}th): the smallest shift of the infected-RBC logit, in "
            f"steps of 0.1, that calls at most {100 * s['infected_tuning_share']:.1f} % of "
            "their RBCs infected"
        )
    card.training["script"] = "scripts/train_bundled.py"
    card.metrics = {
        "held_out": {
            "scheme": entry["scheme"],
            "source": "core.metrics.evaluate on predictions of models that never saw the image",
            **entry["pooled"],
        },
        "per_fold": entry["per_fold"],
    }
    save_bundled(card, out)
    weights = out / f"{name}.pt"
    return {
        "weights": str(weights),
        "weights_bytes": weights.stat().st_size,
        "card": str(out / f"{name}.json"),
    }


if __name__ == "__main__":
    sys.exit(main())

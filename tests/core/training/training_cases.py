"""Tiny cards, images and configurations the training tests share (not a test module)."""

from __future__ import annotations

import numpy as np

from napari_cellquant.core.annotation import Annotation, Boxes
from napari_cellquant.core.classes import NET4
from napari_cellquant.core.models.card import ModelCard
from napari_cellquant.core.training import (
    TrainingConfig,
)

BLOOD_NORM = {
    "mode": "meanstd",
    "mean": [233.9, 224.0, 233.2],
    "std": [40.6, 53.7, 40.4],
    "range": 255,
}


def dense_card(tmp_path, class_set="cell", n_classes=1, name="tiny-seg") -> str:
    """A tiny two-level U-Net card (classes + distance heads), saved beside the tests' files."""
    card = ModelCard(
        name=name,
        kind="learned",
        task="instances",
        class_set=class_set,
        normalization=BLOOD_NORM,
        tile=96,
        diameter_px={"rbc": 20.0},
        architecture={"widths": [8, 16], "n_classes": n_classes, "heads": ["classes", "distance"]},
        postprocess={"min_size": 10, "min_distance": 4},
    )
    path = tmp_path / f"{name}.json"
    card.save(path)
    return str(path)


def detector_card(tmp_path) -> str:
    card = ModelCard(
        name="tiny-det",
        kind="learned",
        task="boxes",
        class_set="net4",
        normalization={"mode": "percentile", "low": 1.0, "high": 99.8},
        tile=128,
        architecture={
            "widths": [8, 16, 32],
            "heads": [],
            "detector": {"n_classes": 4, "stride": 4, "head_width": 16},
        },
        postprocess={"threshold": 0.3, "max_detections": 50},
    )
    path = tmp_path / "tiny-det.json"
    card.save(path)
    return str(path)


def config(card, smear, output, **changes) -> TrainingConfig:
    image, annotation = smear
    settings = {
        "epochs": 2,
        "crop": 64,
        "batch_size": 2,
        "steps_per_epoch": 3,
        "lr": 3e-3,
        "patience": None,
        "augment": False,
        "val_fraction": 0.0,
    }
    settings.update(changes)
    return TrainingConfig(
        base=card, images=[image], annotations=[annotation], output=output, **settings
    )


def foreground_iou(found: Annotation, truth: Annotation) -> float:
    a, b = found.labels > 0, truth.labels > 0
    return float((a & b).sum() / (a | b).sum())


def fluorescent_nuclei(seed: int = 3) -> tuple[np.ndarray, Annotation]:
    """Bright discs (NET-sized 14-20 px) on a dark, noisy background, with their boxes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:128, 0:128]
    image = rng.normal(20, 4, (128, 128))
    rows = []
    for cy, cx in [(24, 26), (28, 92), (70, 54), (100, 22), (104, 100), (62, 108)]:
        r = rng.uniform(7, 10)
        image += 180 * ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)
        rows.append((cx - r, cy - r, 2 * r, 2 * r))
    pixels = np.clip(image, 0, 255).astype(np.uint8)
    boxes = Boxes(rows, [NET4.id_of("NET")] * len(rows))
    return np.stack([pixels * 0, pixels, pixels // 4], axis=-1), Annotation.empty(
        (128, 128), NET4, boxes=boxes, image_name="nuclei.png"
    )

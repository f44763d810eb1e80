"""A segmentation network reads the size of its own objects: a size model on its features.

The weight-free estimate (:func:`~napari_cellquant.core.scale.estimate_diameter`) thresholds
the image and measures the blobs. On fluorescence fields it misreads textured nuclei (large
nuclei with bright speckles read as many small ones: 40 px read as 15) and gives up on
fields of few or touching nuclei. Cellpose's answer is a size model: a linear regression
from the network's own image summary to the object diameter. Here the summary is the mean
and the standard deviation of each of the five encoder feature maps of the network
(EfficientNet-Lite0: 512 channels, 1,024 numbers) over a central crop of the image at its
own size, and the regression is ridge regression on log(diameter), fitted on training
images shown at many zooms (:func:`fit_size_model`). The card keeps the coefficients
(``params.size_model``), so predicting needs nothing but the weights.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InputError
from .scale import DiameterEstimate, weight_free_estimate

if TYPE_CHECKING:
    from .predict import Model

log = logging.getLogger(__name__)

#: edge, in pixels, of the central crop whose features are pooled
SIDE = 384
#: ridge penalties tried by grouped cross-validation on the training images
LAMBDAS = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0)


def pooled_features(
    image: np.ndarray, model: Model, zoom: float = 1.0, side: int = SIDE
) -> np.ndarray:
    """Mean and standard deviation of each encoder feature map of ``model``'s network over
    the central ``side``-pixel crop of ``image`` shown at ``zoom``."""
    import torch

    from .detector_scale import central_batch

    encode = getattr(model.network, "encode", None)
    if encode is None:
        raise InputError(f"{model.name}: a size model needs a network with an encoder")
    batch = central_batch(image, model, side, zoom, min_source=32)
    with torch.inference_mode():
        taps = encode(batch)
    summaries = [t.mean(dim=(2, 3)) for t in taps] + [t.std(dim=(2, 3)) for t in taps]
    return torch.cat(summaries, dim=1)[0].float().cpu().numpy()


def _ridge(x: np.ndarray, y: np.ndarray, penalty: float) -> tuple[np.ndarray, float]:
    """Weights and intercept of ridge regression on standardised ``x`` (intercept free)."""
    centred = y - y.mean()
    weights = np.linalg.solve(x.T @ x + penalty * np.eye(x.shape[1]), x.T @ centred)
    return weights, float(y.mean())


def fit_size_model(
    features: np.ndarray,
    diameters: np.ndarray,
    groups: np.ndarray,
    *,
    folds: int = 5,
    lambdas: Sequence[float] = LAMBDAS,
) -> dict[str, Any]:
    """Ridge regression of log(diameter) on ``features`` (one row per image and zoom).

    The penalty is the one with the smallest median absolute log error in ``folds``-fold
    cross-validation that keeps each image's zooms (``groups``) together. Returns the
    card's ``params.size_model``: ``weights`` and ``bias`` on the raw features (the
    standardisation folded in), ``side``, the ``range`` of diameters it was fitted on (a
    reading outside it is not trusted), ``penalty`` and ``cv_median_log_error``.
    """
    features = np.asarray(features, dtype=np.float64)
    target = np.log(np.asarray(diameters, dtype=np.float64))
    groups = np.asarray(groups)
    if len(np.unique(groups)) < folds:
        raise InputError(f"a size model needs images of at least {folds} groups to fit")
    mean, std = features.mean(axis=0), features.std(axis=0) + 1e-6
    x = (features - mean) / std
    fold_of = np.searchsorted(np.unique(groups), groups) % folds
    errors = {}
    for penalty in lambdas:
        residuals = []
        for fold in range(folds):
            held = fold_of == fold
            weights, bias = _ridge(x[~held], target[~held], penalty)
            residuals.append(np.abs(x[held] @ weights + bias - target[held]))
        errors[penalty] = float(np.median(np.concatenate(residuals)))
    penalty = min(errors, key=errors.__getitem__)
    weights, bias = _ridge(x, target, penalty)
    raw_weights = weights / std
    return {
        "side": SIDE,
        "range": [float(np.min(diameters)), float(np.max(diameters))],
        "weights": [float(f"{w:.6g}") for w in raw_weights],
        "bias": float(bias - mean @ raw_weights),
        "penalty": penalty,
        "cv_median_log_error": round(errors[penalty], 4),
    }


def regress_diameter(image: np.ndarray, model: Model) -> DiameterEstimate | None:
    """The diameter of ``model``'s reference objects in ``image`` by its card's size model
    (``params.size_model``); the weight-free estimate where the model reads a size outside
    the range it was fitted on; None when the image is too small to summarise."""
    started = time.perf_counter()
    fitted = model.card.params["size_model"]
    if min(np.shape(image)[:2]) < 16:
        return None
    features = pooled_features(image, model, side=int(fitted.get("side", SIDE)))
    weights = np.asarray(fitted["weights"], dtype=np.float64)
    if features.shape != weights.shape:
        raise InputError(
            f"{model.name}: params.size_model has {len(weights)} weights but the network "
            f"gives {len(features)} features"
        )
    diameter = math.exp(float(features @ weights) + float(fitted["bias"]))
    low, high = fitted.get("range", (0.0, math.inf))
    if not low <= diameter <= high:
        # a linear model outside the sizes it was fitted on is guessing (a field unlike its
        # training images: 6.6 px read for 30-px nuclei of a colour NET image)
        log.info(
            "%s's size model reads %.1f px, outside the %g-%g px it was fitted on: "
            "using the weight-free estimate",
            model.name,
            diameter,
            low,
            high,
        )
        return weight_free_estimate(image, model.card)
    seconds = time.perf_counter() - started
    log.info("%s's size model reads its objects at %.1f px (%.2f s)", model.name, diameter, seconds)
    return DiameterEstimate(
        diameter=diameter, n_objects=math.nan, shrink=1.0, seconds=seconds, reader="size model"
    )

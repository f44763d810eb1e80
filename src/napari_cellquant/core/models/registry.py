"""The model registry: built-in model cards, trained cards on disk, and where weights come from.

Weights are found, in order: a local file named by the card (bundled in the package or beside
a user's card), then the user cache, then the card's URL through pooch (sha256 checked; a file
with the wrong hash is never used).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import CellquantError, InputError
from .card import ModelCard, WeightsSource

log = logging.getLogger(__name__)

BUNDLED_DIR = Path(__file__).with_name("bundled")
CACHE_ENV = "CELLQUANT_CACHE"


class WeightsError(CellquantError):
    """Weights are missing, cannot be fetched, or fail their checksum."""


def cache_dir() -> Path:
    """Folder for downloaded weights: ``$CELLQUANT_CACHE`` or the OS user cache."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override)
    import pooch

    return Path(pooch.os_cache("napari-cellquant"))


# --- built-in cards ---------------------------------------------------------------------------
# ``diameter_px`` (see core/scale.py): the reference object's diameter first, measured on the
# data in ../shared/data, then ``objects``, what ``estimate_diameter`` reads on that data.
# - blood_smear_224 (blood-unet's data): single RBCs in the colour maps (solidity > 0.93, not
#   cut by the border), median equivalent diameter 37.8 px (major axis 40.3); estimate median
#   over the 14 images 36.9.
# - blood-classical: tuned at diameter 90 on BCCD's 640x480 photographs (RBC boxes not cut by
#   the border: median sqrt(w h) 104 px, shorter side 98) and at 40 on blood_smear_224, where
#   the estimate reads 36.9, so ``objects`` = 90 x 36.9 / 40. (On BCCD itself the estimate
#   mostly gives up: its RBCs touch in one mass; the card's 90 is used then.)
# - net_fluorescence 1024x768 (boxes in the image grid): unstimulated nucleus box median 29.4
#   px (a box is ~1-2 px wider than the nucleus), the pipeline's tuned 28; dead 41, NET 108;
#   the estimate reads 32.3 and 34.6 on the two images (dead cells count too), geometric
#   mean 33.5. Calibrated on the same two images it is tested on: there are no others.
# - fluorescence (Fluorescent Neuronal Cells, 1600x1200): about 40 px, as fluo-classical's
#   parameters; that data set is not in ../shared/data, so this one is not re-measured.
#: the blood U-Net's training statistics (SEEDS.md), on the 0-255 scale
#: ImageNet statistics on the 0-255 scale (the pretrained EfficientNet encoder's input)
IMAGENET_MEAN_STD = {
    "mode": "meanstd",
    "mean": [123.675, 116.28, 103.53],
    "std": [58.395, 57.12, 57.375],
    "range": 255,
}
BLOOD_MEAN_STD = {
    "mode": "meanstd",
    "mean": [233.9, 224.0, 233.2],
    "std": [40.6, 53.7, 40.4],
    "range": 255,
}


#: the blood detector's scale: training images are resized so that their median RBC box is
#: this wide (sqrt(w h)); txl_pbc's photographs hold RBCs of 71-125 px at their own size.
#: Cut cells at the edge count in that median; the trained card states the whole cell's size.
BLOOD_DETECTOR_RBC_PX = 40.0


def _classical_card(
    name: str,
    class_set: str,
    description: str,
    channels: int,
    diameter: dict[str, float],
    *,
    pipeline: str | None = None,
    cells_from: str | None = None,
) -> ModelCard:
    from ..classical import DEFAULT_PARAMS

    pipeline = pipeline or name
    params: dict = dict(DEFAULT_PARAMS[pipeline])
    if cells_from:
        params["cells_from"] = cells_from
    return ModelCard(
        name=name,
        kind="classical",
        task="instances",
        class_set=class_set,
        description=description,
        input_channels=channels,
        diameter_px=diameter,
        pipeline=pipeline,
        params=params,
    )


def _learned_card(
    name: str,
    task: str,
    class_set: str,
    description: str,
    channels: int,
    normalization: dict,
    diameter: dict[str, float],
    tile: int,
    postprocess: dict,
) -> ModelCard:
    from .networks import DEFAULT_ARCHS

    return ModelCard(
        name=name,
        kind="learned",
        task=task,
        class_set=class_set,
        description=description,
        input_channels=channels,
        normalization=normalization,
        diameter_px=diameter,
        tile=tile,
        architecture=dict(DEFAULT_ARCHS[name]),
        postprocess=postprocess,
    )


def builtin_cards() -> dict[str, ModelCard]:
    """The built-in models; a bundled card (trained weights shipped in the package) wins."""
    cards = {
        "blood-classical": _classical_card(
            "blood-classical",
            "blood3",
            "RBC / WBC / platelets in Giemsa or Leishman smears from stain colour (no weights)",
            3,
            {"rbc": 90.0, "objects": 83.0},
        ),
        "blood-detector": _learned_card(
            "blood-detector",
            "instances",
            "blood3",
            "Pretrained detector: RBC / WBC / platelets in smear photographs, boxes and masks",
            3,
            IMAGENET_MEAN_STD,
            {"rbc": BLOOD_DETECTOR_RBC_PX},
            512,
            {"threshold": 0.3, "max_detections": 200000},
        ),
        "blood-unet": _learned_card(
            "blood-unet",
            "instances",
            "blood10",
            "U-Net: 5-part WBC differential, platelets, clumps, infected and healthy RBCs",
            3,
            BLOOD_MEAN_STD,
            {"rbc": 38.0, "objects": 37.0},
            256,
            {"foreground_threshold": 0.5, "min_size": 30, "max_hole": 100, "min_distance": 8},
        ),
        "fluo-classical": _classical_card(
            "fluo-classical",
            "cell",
            "bright cells on a dark background: adaptive threshold + distance watershed",
            1,
            {"cell": 40.0},
        ),
        "fluo-resunet": _learned_card(
            "fluo-resunet",
            "instances",
            "cell",
            "c-ResUnet: fluorescent cells (1x1 colour stem, residual U-Net)",
            3,
            {"mode": "percentile", "low": 1.0, "high": 99.8},
            {"cell": 40.0},
            512,
            {"foreground_threshold": 0.5, "min_size": 50, "max_hole": 150, "min_distance": 8},
        ),
        "net-classical": _classical_card(
            "net-classical",
            "net4",
            "NETs, dead, unstimulated, decondensed neutrophils from the DNA channel",
            3,
            {"nucleus": 28.0, "objects": 33.5},
        ),
        "net-area": _learned_card(
            "net-area",
            "instances",
            "net-area",
            "NET-covered area from the DNA stain (histone stain optional, second channel): NET "
            "regions, their area and share of the field",
            2,
            {"mode": "percentile", "low": 1.0, "high": 99.8},
            {},
            512,
            {"foreground_threshold": 0.5, "min_size": 20, "max_hole": 50, "split": False},
        ),
        "net-detector": _classical_card(
            "net-detector",
            "net4",
            "NETs, dead, unstimulated, decondensed neutrophils: fluo-resunet's nuclei grown "
            "over their DNA, classed by rules fitted on other images",
            3,
            {"nucleus": 28.0, "objects": 33.5},
            pipeline="net-classical",
            cells_from="fluo-resunet",
        ),
        "net-centernet": _learned_card(
            "net-centernet",
            "boxes",
            "net4",
            "CenterNet box detector for NETs and neutrophil states: no weights ship (2 "
            "annotated images are too few); train it on your own NET boxes",
            3,
            {"mode": "percentile", "low": 1.0, "high": 99.8},
            {"nucleus": 28.0, "objects": 33.5},
            512,
            {"threshold": 0.3, "max_detections": 300},
        ),
    }
    if BUNDLED_DIR.is_dir():
        for path in sorted(BUNDLED_DIR.glob("*.json")):
            card = ModelCard.load(path)
            cards[card.name] = card
    return cards


# --- lookup ------------------------------------------------------------------------------------
def get_card(name_or_path: str | os.PathLike[str]) -> ModelCard:
    """A card by registry name, by card JSON path, or by weights path (card beside it)."""
    text = str(name_or_path)
    cards = builtin_cards()
    if text in cards:
        return cards[text]
    path = Path(text)
    if path.suffix.lower() == ".json" and path.is_file():
        return ModelCard.load(path)
    if path.is_file():
        card_path = path.with_suffix(".json")
        if not card_path.is_file():
            raise InputError(
                f"weights file has no model card beside it ({card_path.name})", source=path
            )
        card = ModelCard.load(card_path)
        card.weights = WeightsSource(
            file=path.name, sha256=card.weights.sha256 if card.weights.file == path.name else None
        )
        return card
    raise InputError(
        f"unknown model {text!r}: not a built-in model ({', '.join(cards)}) "
        "and no such card or weights file"
    )


def weights_status(card: ModelCard) -> str:
    """``none`` (classical), ``missing`` (no weights yet), ``bundled``, ``local``, ``cached``
    or ``remote`` (will download on first use)."""
    if card.kind == "classical":
        return "none"
    source = card.weights
    if source.file:
        path = _local_path(card)
        if path.is_file():
            return "bundled" if path.parent.resolve() == BUNDLED_DIR.resolve() else "local"
    if source.url:
        return "cached" if _cached_path(card).is_file() else "remote"
    return "missing"


def _local_path(card: ModelCard) -> Path:
    assert card.weights.file
    file = Path(card.weights.file)
    return file if file.is_absolute() or card.location is None else card.location / file


def _cached_path(card: ModelCard) -> Path:
    digest = (card.weights.sha256 or "nohash")[:12]
    return cache_dir() / f"{card.name}-{digest}.pt"


def resolve_weights(card: ModelCard) -> Path:
    """Path of verified weights for ``card``, downloading them into the cache if needed."""
    source = card.weights
    if card.kind == "classical":
        raise WeightsError(f"{card.name} is a classical pipeline and has no weights")
    if source.file:
        path = _local_path(card)
        if not path.is_file():
            raise WeightsError(f"{card.name}: weights file {path} does not exist")
        _check_sha256(path, source.sha256, card.name)
        return path
    if source.url:
        return _download(card)
    raise WeightsError(
        f"{card.name} has no trained weights yet: train them with `cellquant train` "
        "(or the Train widget), or pass a weights file with --weights PATH"
    )


def _check_sha256(path: Path, expected: str | None, name: str) -> None:
    if not expected:
        return
    import pooch

    actual = pooch.file_hash(str(path), alg="sha256")
    if actual != expected:
        raise WeightsError(
            f"{name}: weights {path} have sha256 {actual}, the card expects {expected}; "
            "the file was not used"
        )


def _download(card: ModelCard) -> Path:
    import pooch

    source = card.weights
    if not source.sha256:
        raise WeightsError(f"{card.name}: remote weights need a sha256 in the card")
    target = _cached_path(card)
    try:
        fetched = pooch.retrieve(
            source.url,
            known_hash=f"sha256:{source.sha256}",
            fname=target.name,
            path=target.parent,
            progressbar=False,
        )
    except ValueError as exc:  # pooch's hash mismatch; it deletes the download itself
        target.unlink(missing_ok=True)
        raise WeightsError(
            f"{card.name}: downloaded weights from {source.url} failed the sha256 check; "
            f"the file was not used ({exc})"
        ) from None
    except Exception as exc:  # requests' connection and HTTP errors
        raise WeightsError(
            f"{card.name}: could not download weights from {source.url} "
            f"({type(exc).__name__}: {exc}); check the network or pass --weights PATH"
        ) from None
    log.info("weights for %s at %s", card.name, fetched)
    return Path(fetched)

"""Scale awareness: the diameter estimate, the scale decision, and predict at 0.5x-4x."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import numpy as np
import pytest
from skimage import io
from skimage.measure import regionprops
from skimage.transform import rescale, resize

from napari_cellquant.core.errors import InputError
from napari_cellquant.core.models.registry import get_card
from napari_cellquant.core.predict import load_model, predict
from napari_cellquant.core.scale import describe_scale, estimate_diameter, image_scale
from napari_cellquant.core.synthetic import synthetic_blood_smear

FACTORS = (0.5, 2.0, 4.0)


def _resized(image: np.ndarray, factor: float) -> np.ndarray:
    """The image as a camera at ``factor`` x the magnification would see it (uint8)."""
    if factor == 1.0:
        return image
    out = rescale(
        image.astype(np.float32),
        factor,
        order=1,
        channel_axis=-1,
        anti_aliasing=factor < 1,
        preserve_range=True,
    )
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _fluorescent_disks(diameter: int, shape=(600, 800), n=40, seed=0) -> np.ndarray:
    """Non-overlapping bright disks of one diameter on a dark, noisy field."""
    rng = np.random.default_rng(seed)
    image = np.zeros(shape, np.float32)
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    placed = 0
    for _ in range(2000):
        cy = rng.uniform(diameter, shape[0] - diameter)
        cx = rng.uniform(diameter, shape[1] - diameter)
        disk = (rows - cy) ** 2 + (cols - cx) ** 2 <= (0.75 * diameter) ** 2  # apart
        if image[disk].any():
            continue
        image[(rows - cy) ** 2 + (cols - cx) ** 2 <= (0.5 * diameter) ** 2] = 1.0
        placed += 1
        if placed == n:
            break
    return (image * 180 + rng.normal(15, 4, shape)).clip(0, 255).astype(np.uint8)


# --- the estimate on images of known size ------------------------------------------------
@pytest.mark.parametrize(
    ("radius", "shape"), [(8, (384, 384)), (17, (512, 512)), (40, (1024, 1024))]
)
def test_estimate_finds_the_rbc_diameter_of_synthetic_smears(radius, shape):
    for seed in (0, 1):
        pixels, _ = synthetic_blood_smear(shape=shape, seed=seed, rbc_radius=radius, n_platelets=3)
        estimate = estimate_diameter(pixels)
        assert estimate is not None
        # a digital disk of radius r is 2 r + 1 pixels across; measured 17.5-17.9,
        # 34.1-35.3, 78.7-80.7
        assert abs(estimate.diameter / (2 * radius + 1) - 1) <= 0.1, estimate


@pytest.mark.parametrize("diameter", [12, 30, 80])
def test_estimate_finds_bright_disks_on_a_dark_field(diameter):
    estimate = estimate_diameter(_fluorescent_disks(diameter))
    assert estimate is not None
    # measured 13.5, 33.2, 88.8: sharp disks read ~11% wide (blurred rim at the working scale;
    # real cells have soft edges, and the cards calibrate what the estimate reads)
    assert 0.95 * diameter <= estimate.diameter <= 1.2 * diameter, estimate


def test_estimate_is_the_same_for_grey_rgb_and_channel_first_images():
    grey = _fluorescent_disks(30)
    rgb = np.stack([grey // 4, grey, grey // 2], axis=-1)
    values = [estimate_diameter(a).diameter for a in (grey, rgb, np.moveaxis(rgb, -1, 0))]
    assert max(values) / min(values) < 1.1, values


@pytest.mark.parametrize(
    "image", [np.zeros((200, 300), np.uint8), np.full((200, 300, 3), 200, np.uint8)]
)
def test_blank_image_has_no_estimate(image):
    assert estimate_diameter(image) is None


def test_estimate_rejects_what_is_not_an_image():
    with pytest.raises(InputError, match="shape"):
        estimate_diameter(np.zeros((4, 4)))
    with pytest.raises(InputError, match="numeric"):
        estimate_diameter(np.zeros((50, 50), dtype=bool))


# --- the scale decision --------------------------------------------------------------------
def test_given_model_pixel_size_and_estimated_scales():
    pixels, _ = synthetic_blood_smear(shape=(384, 384), seed=2, rbc_radius=8, n_platelets=3)
    card = get_card("blood-unet")  # rbc 38 px; the estimate reads 37 on its data
    given = image_scale(pixels, card, diameter=19.0)
    assert (given.source, given.diameter, given.zoom) == ("given", 19.0, 2.0)
    model = image_scale(pixels, card, diameter="model")
    assert (model.source, model.zoom) == ("model", 1.0)
    estimated = image_scale(pixels, card)
    assert estimated.source == "estimated" and estimated.estimate is not None
    # the weight-free estimate reads 37 px where the card's RBCs are 38: taken in RBC units
    raw = estimate_diameter(pixels)
    assert (
        estimated.diameter == estimated.estimate.diameter == pytest.approx(raw.diameter * 38 / 37)
    )
    assert 1.8 < estimated.zoom < 2.4  # RBCs of ~16 px brought to ~37
    # a red cell is 7.5 um in every lab: a pixel size sets the RBC diameter without the card's
    by_rbc = image_scale(pixels, card, pixel_size_um=0.25)
    assert (by_rbc.source, by_rbc.diameter) == ("pixel_size", pytest.approx(7.5 / 0.25))
    # an object with no fixed physical size needs the card's own pixel size
    nuclei = replace(card, diameter_px={"nucleus": 38.0, "objects": 37.0})
    assert image_scale(pixels, nuclei, pixel_size_um=0.25).source == "estimated"
    sized = replace(nuclei, pixel_size_um=0.1)
    by_size = image_scale(pixels, sized, pixel_size_um=0.25)
    assert by_size.source == "pixel_size"
    assert by_size.diameter == pytest.approx(38 * 0.1 / 0.25)
    assert by_size.zoom == pytest.approx(2.5)
    # a given diameter wins over the pixel size
    assert image_scale(pixels, sized, diameter=38.0, pixel_size_um=0.25).zoom == 1.0


@pytest.mark.parametrize("bad", [0, -3.0, float("nan"), "auto"])
def test_bad_diameter_is_a_clear_error(bad):
    with pytest.raises(InputError, match="diameter"):
        image_scale(np.zeros((50, 50)), get_card("blood-unet"), diameter=bad)


def test_blank_image_falls_back_to_the_model_scale_and_says_so(caplog):
    with caplog.at_level(logging.WARNING):
        scale = image_scale(np.zeros((100, 100, 3), np.uint8), get_card("net-classical"))
    assert (scale.source, scale.diameter, scale.zoom) == ("model", 28.0, 1.0)
    assert "could not estimate" in caplog.text


# --- real data: the same objects at 0.5x, 1x, 2x, 4x --------------------------------------
def _brought_back(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return resize(labels, shape, order=0, preserve_range=True, anti_aliasing=False).astype(int)


def _matched_share(reference, other) -> float:
    """Share of ``reference``'s objects whose centroid lies in an object of the same class in
    ``other`` (brought to the reference's grid)."""
    labels = _brought_back(other.labels, reference.shape)
    hits = 0
    for region in regionprops(reference.labels):
        r, c = (int(round(v)) for v in region.centroid)
        found = int(labels[r, c])
        hits += found != 0 and other.classes.get(found) == reference.classes[region.label]
    return hits / max(len(reference.classes), 1)


def _check_same_objects(results: dict[float, list]) -> None:
    """Counts per class (summed over the images) within 5% (at least 2) of 1x, and 90% of
    the 1x objects found again with their class."""

    def totals(found_list):
        out: dict[str, int] = {}
        for a in found_list:
            for name, n in a.counts().items():
                out[name] = out.get(name, 0) + n
        return out

    base = totals(results[1.0])
    for factor, found_list in results.items():
        got = totals(found_list)
        for name, n in base.items():
            assert abs(got[name] - n) <= max(2, 0.05 * n), (factor, name, got, base)
        share = np.mean([_matched_share(a, b) for a, b in zip(results[1.0], found_list)])
        assert share >= 0.9, (factor, share)


def test_blood_smears_give_the_same_objects_at_any_scale(shared_data):
    from napari_cellquant.core.classes import BLOOD10
    from napari_cellquant.core.io.masks import read_color_map

    root = shared_data / "blood_smear_224"
    paths = sorted((root / "images").glob("*.bmp"))[::3]
    model = load_model("blood-classical")
    results: dict[float, list] = {f: [] for f in (1.0, *FACTORS)}
    truth = []
    for path in paths:
        image = io.imread(path)[..., :3]
        for factor in results:
            found = predict(_resized(image, factor), model)
            assert found.shape == _resized(image, factor).shape[:2]
            assert found.meta["diameter_source"] == "estimated"
            results[factor].append(found)
        colours = read_color_map(root / "segments" / path.name, BLOOD10)
        truth += [
            r.equivalent_diameter_area
            for r in regionprops(colours.labels)
            if BLOOD10.name_of(colours.classes[r.label]).endswith("rbc")
            and r.solidity > 0.93
            and min(r.bbox[:2]) > 0
            and max(r.bbox[2:]) < 224
        ]
    _check_same_objects(results)
    # the estimate, in RBC diameters at 1x, against single RBCs in the colour maps (37.8 px)
    true_diameter = float(np.median(truth))
    for factor, found_list in results.items():
        estimate = np.median([a.meta["diameter_px"] for a in found_list]) / factor
        assert abs(estimate / true_diameter - 1) <= 0.15, (factor, estimate, true_diameter)


def test_net_images_give_the_same_objects_at_any_scale(shared_data):
    root = shared_data / "net_fluorescence"
    coco = json.loads((root / "coco.json").read_text())
    unstimulated = [c["id"] for c in coco["categories"] if c["name"] == "unstimulated"]
    # boxes lie in the 1024 x 768 image grid; a box is ~1-2 px wider than its nucleus
    true_nucleus = float(
        np.median(
            [
                np.sqrt(a["bbox"][2] * a["bbox"][3])
                for a in coco["annotations"]
                if a["category_id"] in unstimulated
            ]
        )
    )
    model = load_model("net-classical")
    images = [io.imread(p)[..., :3] for p in sorted((root / "images").glob("*.jpg"))]
    results: dict[float, list] = {f: [] for f in (1.0, 0.5, 2.0)}
    for image in images:
        for factor in results:
            results[factor].append(predict(_resized(image, factor), model))
    # 4x on the central quarter of each image (12 megapixels each would be slow for a test)
    crops = [image[192:576, 256:768] for image in images]
    results_4x = {
        1.0: [predict(c, model) for c in crops],
        4.0: [predict(_resized(c, 4.0), model) for c in crops],
    }
    _check_same_objects(results)
    _check_same_objects(results_4x)
    for factor, found_list in results.items():
        for found in found_list:
            nucleus = found.meta["diameter_px"] / factor
            assert abs(nucleus / true_nucleus - 1) <= 0.15, (factor, nucleus, true_nucleus)
    # a quarter of an image holds a handful of cells: its own 1x estimate is the reference
    for at_1x, at_4x in zip(*results_4x.values()):
        ratio = at_4x.meta["diameter_px"] / 4 / at_1x.meta["diameter_px"]
        assert abs(ratio - 1) <= 0.15, ratio


def test_packed_bccd_fields_fall_back_on_the_model_scale(shared_data):
    """BCCD's RBCs touch in one mass: the estimate must give up rather than read fragments,
    and predict then runs blood-classical at its own scale (tuned on BCCD)."""
    import xml.etree.ElementTree as ET

    root = shared_data / "bccd"
    paths = sorted((root / "images").glob("*.jpg"))[::24][:6]
    card = get_card("blood-classical")
    sources = [image_scale(io.imread(p)[..., :3], card).source for p in paths]
    assert sources.count("model") >= 5, sources  # measured: 6 of 6
    model = load_model("blood-classical")
    for path in paths[:3]:
        found = predict(io.imread(path)[..., :3], model)
        assert found.meta["diameter_px"] == 90.0 and found.meta["diameter_source"] == "model"
        wbc = [
            o.findtext("name") for o in ET.parse(root / "voc" / f"{path.stem}.xml").iter("object")
        ].count("WBC")
        assert abs(found.counts()["wbc"] - wbc) <= 1, (path.name, found.counts(), wbc)


def test_bundled_blood_unet_finds_the_same_rbcs_when_enlarged(shared_data, tmp_path):
    """The learned model through the same scale path: the image is brought back to the
    network's scale, so 2x and 4x give the 1x RBCs. (Measured on these 5 images with the
    earlier 26-epoch weights: RBCs 181 / 182 / 180 at 1x / 2x / 4x, 168 at 0.5x where detail
    is lost; WBC instances, which this small network fragments, 63 / 57 / 55 and 52.)

    The network runs without its card's prior against false malaria
    (``params.class_logit_bias``): that shift puts the parasitised RBCs of these composites
    at the infected / healthy margin, where any resampling flips some of them, and a constant
    logit shift has nothing to do with scale. Measured 2026-12-07 on these images, share of
    1x objects found again with their class at 2x: 0.952 without the prior, 0.895 with it
    (0.967 with it when both RBC kinds count as one)."""
    from napari_cellquant.core.models.registry import resolve_weights, weights_status

    card = get_card("blood-unet")
    if weights_status(card) != "bundled":
        pytest.skip("blood-unet has no bundled weights")
    card.params = {k: v for k, v in card.params.items() if k != "class_logit_bias"}
    card.save(tmp_path / "blood-unet-raw.json", overwrite=True)
    model = load_model(tmp_path / "blood-unet-raw.json", "cpu", weights=resolve_weights(card))
    paths = sorted((shared_data / "blood_smear_224" / "images").glob("*.bmp"))[::3]
    results: dict[float, list] = {1.0: [], 2.0: [], 4.0: []}
    for path in paths:
        image = io.imread(path)[..., :3]
        for factor in results:
            results[factor].append(predict(_resized(image, factor), model))
    rbc = {
        f: sum(a.counts()["healthy_rbc"] + a.counts()["infected_rbc"] for a in found)
        for f, found in results.items()
    }
    for factor in (2.0, 4.0):
        assert abs(rbc[factor] / rbc[1.0] - 1) <= 0.05, rbc
        assert results[factor][0].meta["zoom"] < 0.6  # it did run at the network's scale
        share = np.mean([_matched_share(a, b) for a, b in zip(results[1.0], results[factor])])
        assert share >= 0.9, (factor, share)


def test_a_scale_is_described_with_how_it_was_decided():
    meta = {"diameter_px": 31.04, "diameter_source": "estimated", "diameter_reader": "detector"}
    assert describe_scale(meta) == "diameter 31.0 px, estimated by the detector's own boxes"
    assert describe_scale({"diameter_px": 12.0, "diameter_source": "given"}) == (
        "diameter 12.0 px, given"
    )
    assert describe_scale({"diameter_px": float("nan"), "diameter_source": "model"}) == ""
    assert describe_scale({}) == ""

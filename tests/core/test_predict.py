"""The public API: load_model + predict, for learned and classical models alike."""

import numpy as np
import pytest
import torch

from napari_cellquant.core.annotation import Annotation, Boxes
from napari_cellquant.core.classes import BLOOD3, NET4
from napari_cellquant.core.errors import CancelledError, InputError
from napari_cellquant.core.models.networks import build_network
from napari_cellquant.core.models.registry import get_card
from napari_cellquant.core.predict import _annotation_to_shape, load_model, predict
from napari_cellquant.core.synthetic import synthetic_blood_smear


@pytest.fixture(autouse=True)
def _cpu_and_seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def smear():
    pixels, truth = synthetic_blood_smear(shape=(200, 260), seed=3)
    return pixels, truth


def test_learned_model_with_random_weights_gives_an_annotation_on_the_input_grid(smear):
    pixels, _ = smear
    model = load_model("blood-unet", "cpu", weights="random")
    assert isinstance(model.network, torch.nn.Module) and model.card.class_set == "blood10"
    steps = []
    result = predict(pixels, model, tile=128, progress=lambda d, t: steps.append((d, t)))
    assert isinstance(result, Annotation) and result.shape == pixels.shape[:2]
    assert result.class_set.name == "blood10"
    assert steps[-1][0] == steps[-1][1] and steps[-1][1] >= 6  # 2 x 3 tiles at least
    assert all(result.origins[i] == "model" for i in result.classes)


def test_net_detector_finds_the_same_cells_at_half_size():
    """net-detector (fluo-resunet's nuclei grown over their DNA, classed by rules) on the
    bundled NET sample (75 % NETs by the expert) and on it shrunk to half size: the same
    cells, half as wide, in the half-size image's pixels, most of them NETs both times."""
    from importlib.resources import files

    from skimage.transform import rescale

    from napari_cellquant.core.io.images import read_image
    from napari_cellquant.core.postprocess import boxes_from_labels

    full = read_image(files("napari_cellquant.samples") / "K.Fiok3_1Per2h006_scale.jpg")
    half = (rescale(full, 0.5, channel_axis=-1, anti_aliasing=True) * 255).astype(np.uint8)
    model = load_model("net-detector", "cpu")
    at_full = predict(full, model, diameter="model")
    at_half = predict(half, model)  # the nuclei are half the size: found by the estimate
    assert at_half.shape == half.shape[:2] and at_half.class_set.name == "net4"
    assert at_half.meta["diameter_source"] == "estimated"
    boxes = [boxes_from_labels(a.labels, a.classes) for a in (at_full, at_half)]
    assert len(boxes[0]) >= 10 and 0.7 * len(boxes[0]) <= len(boxes[1]) <= 1.3 * len(boxes[0])
    x, y, w, h = boxes[1].xywh.T
    assert (x >= 0).all() and (y >= 0).all()
    assert (x + w <= half.shape[1]).all() and (y + h <= half.shape[0]).all()
    ratio = np.median(boxes[1].xywh[:, 2]) / np.median(boxes[0].xywh[:, 2])
    assert 0.35 < ratio < 0.7
    for found in (at_full, at_half):
        counts = found.counts()
        assert counts["NET"] >= 0.5 * sum(counts.values()), counts
        assert all(0 < s <= 1 for s in found.scores.values())


def test_the_cell_finder_takes_a_given_scale_and_estimates_its_own(monkeypatch):
    """net-detector's nuclei model runs at the diameter the user gives (or a pixel size
    sets), and measures its own otherwise (it checks its estimate on its nuclei)."""
    from importlib.resources import files

    import napari_cellquant.core.predict as predict_module
    from napari_cellquant.core.io.images import read_image

    image = read_image(files("napari_cellquant.samples") / "K.Fiok3_1Per2h006_scale.jpg")
    model = load_model("net-detector", "cpu")
    asked = []
    original = predict_module.predict

    def recording(pixels, model, **kwargs):
        if model.card.name == "fluo-resunet":
            asked.append(kwargs.get("diameter"))
        return original(pixels, model, **kwargs)

    monkeypatch.setattr(predict_module, "predict", recording)
    predict(image, model, diameter=30.0)
    predict(image, model)
    assert asked == [30.0, None]


def test_cancel_stops_with_cancelled_error(smear):
    pixels, _ = smear
    model = load_model("blood-unet", "cpu", weights="random")
    calls = []
    with pytest.raises(CancelledError):
        predict(
            pixels,
            model,
            tile=64,
            progress=lambda d, t: calls.append(d),
            cancel=lambda: len(calls) >= 1,
        )
    assert len(calls) == 1


def test_classical_models_use_the_same_two_calls(smear):
    pixels, truth = smear
    result = predict(pixels, load_model("blood-classical"), diameter=34)
    assert result.class_set.name == "blood3"
    assert result.meta["diameter_source"] == "given" and result.meta["params"]["diameter"] == 34
    true_rbc = truth.counts()["healthy_rbc"] + truth.counts()["infected_rbc"]
    assert abs(result.counts()["rbc"] - true_rbc) <= 0.2 * true_rbc


def test_diameter_brings_learned_result_back_to_the_input_grid(smear):
    pixels, _ = smear
    model = load_model("blood-unet", "cpu", weights="random")
    result = predict(pixels, model, tile=128, diameter=19)  # zoom 38/19 = 2 for the network
    assert result.shape == pixels.shape[:2]
    assert (result.meta["diameter_source"], result.meta["zoom"]) == ("given", 2.0)


def test_without_a_diameter_predict_estimates_it_and_says_so():
    pixels, truth = synthetic_blood_smear(shape=(320, 320), seed=4, rbc_radius=12, n_platelets=2)
    result = predict(pixels, load_model("blood-classical"))
    assert result.meta["diameter_source"] == "estimated"
    # the RBCs are 25 px across; the card runs at 90 (estimate reads 83 on its data)
    assert abs(result.meta["diameter_px"] / (25 * 90 / 83) - 1) <= 0.12
    assert result.meta["params"]["diameter"] == result.meta["diameter_px"]
    true_rbc = truth.counts()["healthy_rbc"] + truth.counts()["infected_rbc"]
    assert abs(result.counts()["rbc"] - true_rbc) <= 0.2 * true_rbc


def test_model_scale_runs_the_image_as_it_is(smear):
    pixels, _ = smear
    result = predict(
        pixels, load_model("blood-unet", "cpu", weights="random"), tile=128, diameter="model"
    )
    assert (result.meta["diameter_source"], result.meta["zoom"]) == ("model", 1.0)
    assert result.meta["diameter_px"] == 38.0


def test_pixel_size_sets_the_zoom_when_the_card_has_one(smear):
    pixels, _ = smear
    model = load_model("blood-unet", "cpu", weights="random")
    model.card.pixel_size_um = 0.2
    result = predict(pixels, model, tile=128, pixel_size_um=0.4)  # pixels twice as large
    assert result.meta["diameter_source"] == "pixel_size"
    assert result.meta["zoom"] == pytest.approx(2.0) and result.shape == pixels.shape[:2]


def test_result_found_zoomed_comes_back_to_the_image_grid():
    zoomed = np.zeros((150, 201), np.int32)
    zoomed[30:60, 90:120] = 1  # a 30 x 30 object found at 1.5x
    boxes = Boxes(
        np.array([[90.0, 30.0, 30.0, 30.0]]), np.array([NET4.id_of("NET")]), np.array([0.9])
    )
    found = Annotation(zoomed, BLOOD3, classes={1: BLOOD3.id_of("rbc")}, boxes=boxes)
    back = _annotation_to_shape(found, (100, 134), 1.5)
    assert back.shape == (100, 134) and back.classes == {1: BLOOD3.id_of("rbc")}
    rows, cols = np.nonzero(back.labels == 1)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (20, 39, 60, 79)
    np.testing.assert_allclose(back.boxes.xywh, [[90 * 134 / 201, 20, 30 * 134 / 201, 20]])


def test_weights_file_with_its_card_beside_it(tmp_path, smear):
    card = get_card("fluo-resunet")
    network = build_network(card.architecture)
    torch.save(network.state_dict(), tmp_path / "mine.pt")
    card.name = "mine"
    card.weights.file, card.weights.sha256 = "mine.pt", None  # a card written by hand
    card.save(tmp_path / "mine.json")
    model = load_model(tmp_path / "mine.pt", "cpu")
    loaded = model.network.state_dict()
    for key, value in network.state_dict().items():
        assert torch.equal(loaded[key], value)
    pixels, _ = smear
    assert predict(pixels[..., 1], model, tile=128).shape == pixels.shape[:2]


def _blood_unet_card_with_random_weights(tmp_path, bias):
    card = get_card("blood-unet")
    network = build_network(card.architecture)
    torch.manual_seed(0)
    torch.save(network.state_dict(), tmp_path / "biased.pt")
    card.name, card.weights.file, card.weights.sha256 = "biased", "biased.pt", None
    card.params = {**card.params, "class_logit_bias": bias}
    card.params.pop("scale_from", None)  # measured by blood-detector: not the point here
    card.save(tmp_path / "biased.json", overwrite=True)
    return network


@pytest.mark.parametrize("shift", [-50.0, 50.0])
def test_a_cards_class_logit_bias_shifts_that_class_and_no_other(tmp_path, smear, shift):
    network = _blood_unet_card_with_random_weights(tmp_path, {"infected_rbc": shift})
    model = load_model(tmp_path / "biased.json", "cpu")
    infected = get_card("blood-unet").classes.id_of("infected_rbc")
    before, after = network.heads.classes.bias, model.network.heads.classes.bias
    assert after[infected].item() == pytest.approx(before[infected].item() + shift)
    others = [c for c in range(len(before)) if c != infected]
    assert torch.equal(before[others], after[others])
    pixels, _ = smear
    found = predict(pixels, model, diameter="model")
    called = found.counts()["infected_rbc"]
    assert len(found.classes) > 0
    # a prior of e^-50 silences the class, one of e^50 makes it the only one
    assert called == (0 if shift < 0 else len(found.classes)), found.counts()


def test_a_class_logit_bias_for_a_class_the_model_lacks_is_a_clear_error(tmp_path):
    _blood_unet_card_with_random_weights(tmp_path, {"malaria": -1.0})
    with pytest.raises(InputError, match="class_logit_bias names 'malaria'"):
        load_model(tmp_path / "biased.json", "cpu")


def test_corrupt_weights_are_a_clear_error(tmp_path):
    card = get_card("fluo-resunet")
    (tmp_path / "bad.pt").write_bytes(b"definitely not a checkpoint")
    card.name, card.weights.file, card.weights.sha256 = "bad", "bad.pt", None
    card.save(tmp_path / "bad.json")
    with pytest.raises(Exception, match="not a readable PyTorch weights file"):
        load_model(tmp_path / "bad.pt", "cpu")


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4, 5)])
def test_image_of_wrong_dimensions_is_rejected(shape):
    with pytest.raises(InputError, match="2-D image"):
        predict(np.zeros(shape), load_model("blood-classical"))


def test_load_model_and_predict_are_the_package_api():
    import napari_cellquant
    from napari_cellquant.core import predict as core_predict

    assert napari_cellquant.load_model is core_predict.load_model
    assert napari_cellquant.predict is core_predict.predict
    assert {"load_model", "predict"} <= set(napari_cellquant.__all__)


def test_zooming_matches_skimage_and_needs_no_full_size_float_copy():
    """predict's resize is scikit-image's rescale (anti-aliased bilinear) to one grey level,
    done in bands: a 12-megapixel uint8 photo is shrunk with far less than its float32 size."""
    import tracemalloc

    from skimage.transform import rescale

    from napari_cellquant.core.io.images import read_image
    from napari_cellquant.core.predict import _resize
    from napari_cellquant.demo import SAMPLES_DIR

    photo = read_image(SAMPLES_DIR / "BloodImage_00000.jpg")
    for zoom in (0.41, 1.6):
        expected = rescale(
            photo.astype(np.float32),
            zoom,
            order=1,
            channel_axis=-1,
            preserve_range=True,
            anti_aliasing=zoom < 1,
        )
        ours = _resize(photo, zoom)
        assert ours.dtype == np.uint8 and ours.shape == expected.shape
        inner = np.abs(ours.astype(float) - np.rint(expected))[3:-3, 3:-3]
        assert inner.max() <= 1
    big = np.tile(photo, (6, 6, 1))  # 2880 x 3840 RGB
    tracemalloc.start()
    try:
        _resize(big, 0.41)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 0.3 * big.size * 4  # float32 copy: 133 MB; skimage's path peaked at 294 MB


def test_a_misread_scale_is_refined_on_the_models_own_objects(monkeypatch):
    """The weight-free estimate reads these 48-px nuclei as half their size (as it misreads
    textured fields); with ``refine_scale`` the segmenter measures its own objects and runs
    again at their scale, and never second-guesses a diameter the user gave."""
    import dataclasses

    from scipy import ndimage as ndi
    from skimage.draw import disk

    from napari_cellquant.core import scale
    from napari_cellquant.core.predict import Model

    image = np.zeros((300, 300), np.float32)
    for centre in [(70, 70), (70, 200), (200, 80), (210, 210)]:
        image[disk(centre, 24, shape=image.shape)] = 1
    noise = np.random.default_rng(0).normal(0, 3, image.shape)
    image = np.clip(ndi.gaussian_filter(image, 2) * 180 + 20 + noise, 0, 255).astype(np.uint8)
    misread = scale.estimate_diameter(image)
    assert misread is not None and 40 < misread.diameter < 60
    monkeypatch.setattr(
        scale, "estimate_diameter", lambda _: dataclasses.replace(misread, diameter=24.0)
    )
    bundled = load_model("fluo-resunet", "cpu")
    card = dataclasses.replace(
        bundled.card, params={"refine_scale": {"tolerance": 1.15, "rounds": 3}}
    )
    model = Model(card=card, network=bundled.network, device=bundled.device)
    refined = predict(image, model)
    assert refined.meta["diameter_source"] == "refined"
    assert 40 < refined.meta["diameter_px"] < 60  # the nuclei's own size
    assert len(refined.instance_ids()) == 4
    given = predict(image, model, diameter=24.0)
    assert (given.meta["diameter_source"], given.meta["diameter_px"]) == ("given", 24.0)


def test_predict_makes_no_full_size_float_copy_of_a_grey_image_for_an_rgb_network():
    """The grey image becomes the RGB network's input band by band: when inference starts,
    what is allocated is the compact outputs, not a (H, W, 3) float32 copy of the input."""
    import tracemalloc

    from napari_cellquant.core.predict import iter_predict

    model = load_model("fluo-resunet", "cpu", weights="random")
    assert model.card.input_channels == 3
    grey = np.random.default_rng(0).integers(0, 256, (2048, 2048), dtype=np.uint8)
    tracemalloc.start()
    try:
        steps = iter_predict(grey, model, diameter="model")
        next(steps)  # the first progress event, before the first batch of tiles
        allocated = tracemalloc.get_traced_memory()[0]
        steps.close()
    finally:
        tracemalloc.stop()
    assert allocated < 0.75 * grey.size * 3 * 4  # the float32 RGB copy: 50 MB


def test_a_detectors_frame_is_taken_off_its_boxes() -> None:
    """Boxes found on the framed image come back in the image's pixels; an object centred
    in the frame is not in the image and is dropped."""
    from napari_cellquant.core.postprocess import heatmap_targets
    from napari_cellquant.core.predict import _edge_border, _framed, _maps_to_annotation

    card = get_card("blood-detector")
    border = _edge_border(card)
    assert border == int(np.ceil(card.params["edge_border"] * card.typical_diameter)) > 0
    inner = (64, 80)
    framed_boxes = Boxes(
        np.array([[border + 10.0, border + 8.0, 24.0, 20.0], [4.0, border + 30.0, 12.0, 12.0]]),
        np.array([2, 1]),
    )
    shape = (inner[0] + 2 * border, inner[1] + 2 * border)
    heat, size, offset, _ = heatmap_targets(
        framed_boxes, (shape[0] // 4, shape[1] // 4), 3, stride=4
    )
    card.postprocess["threshold"] = 0.5
    found = _maps_to_annotation(
        {"heatmap": heat, "size": size, "offset": offset}, card, inner, border
    )
    assert found.shape == inner and found.counts()["wbc"] == 1 and found.counts()["rbc"] == 0
    rows, cols = np.nonzero(found.labels)
    assert (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1) == pytest.approx(
        (10, 8, 34, 28), abs=1
    )
    # the frame holds the pixel that normalises to 0, around the untouched image
    image = np.full((5, 6, 3), 200, np.uint8)
    framed = _framed(image, 3, np.array([1, 2, 3], np.uint8))
    assert framed.shape == (11, 12, 3) and (framed[3:8, 3:9] == 200).all()
    assert (framed[0] == [1, 2, 3]).all() and (framed[:, -1] == [1, 2, 3]).all()


def test_a_segmenter_takes_its_scale_from_the_detector_its_card_names():
    """On a packed smear photograph the weight-free estimate gives up; with
    ``params.scale_from`` a segmenter runs at the RBC size blood-detector measures."""
    from pathlib import Path

    from skimage import io

    from napari_cellquant.core.detector_scale import measure_diameter

    photo = io.imread(
        Path(__file__).resolve().parents[2] / "src/napari_cellquant/samples/BloodImage_00000.jpg"
    )
    measured = measure_diameter(photo, load_model("blood-detector", "cpu"))
    assert measured is not None and 60 < measured.diameter < 110  # BCCD's RBCs, about 80 px
    model = load_model("blood-unet", "cpu", weights="random")
    model.card.params["scale_from"] = "blood-detector"
    found = predict(photo, model)
    assert found.meta["diameter_source"] == "estimated"
    assert found.meta["diameter_px"] == pytest.approx(measured.diameter)
    model.card.params["scale_from"] = "fluo-resunet"  # measures nuclei, not red cells
    with pytest.raises(InputError, match="does not measure 'rbc' objects"):
        predict(photo, model)


def _discs(diameter: float, shape=(400, 400)) -> np.ndarray:
    """A grid of discs ``diameter`` px wide: objects of a known median size."""
    from skimage.draw import disk

    labels = np.zeros(shape, np.int32)
    step = int(max(diameter, 4) * 2)
    centres = [
        (y, x)
        for y in range(step, shape[0] - step, step)
        for x in range(step, shape[1] - step, step)
    ]
    for k, centre in enumerate(centres[:40]):
        labels[disk(centre, diameter / 2, shape=shape)] = k + 1
    return labels


@pytest.mark.parametrize(
    ("found_per_round", "kept_round"),
    [
        # the runaway traced on a DSB2018 image of 40-px nuclei misread as 15 px: each round
        # zooms further in and takes texture for smaller objects; round 1 was closest
        ([10.3, 7.7, 4.7, 2.5], 1),
        # a round farther off, then convergence: the last round is kept
        ([30.0, 60.0, 58.0], 2),
    ],
)
def test_refining_keeps_the_round_closest_to_the_models_scale(found_per_round, kept_round):
    import dataclasses

    from napari_cellquant.core.annotation import Annotation
    from napari_cellquant.core.classes import CELL
    from napari_cellquant.core.models.registry import get_card
    from napari_cellquant.core.predict import _refined
    from napari_cellquant.core.scale import image_scale

    card = dataclasses.replace(
        get_card("fluo-resunet"), params={"refine_scale": {"tolerance": 1.15, "rounds": 3}}
    )
    image = np.zeros((400, 400), np.uint8)
    runs = iter(found_per_round[1:])

    def annotation_of(diameter: float) -> Annotation:
        labels = _discs(diameter)
        return Annotation(labels, CELL, classes=dict.fromkeys(range(1, labels.max() + 1), 1))

    def run(zoom: float):
        yield (0, 1)
        return annotation_of(next(runs))

    first = image_scale(image, card, diameter=15.4)
    first = dataclasses.replace(first, source="estimated")
    steps = _refined(image, card, annotation_of(found_per_round[0]), first, run)
    try:
        while True:
            next(steps)
    except StopIteration as finished:
        annotation, scale = finished.value
    ran_at = [15.4, *found_per_round[:-1]]
    assert scale.diameter == pytest.approx(ran_at[kept_round], rel=0.1)
    measured = np.median(
        [2 * np.sqrt((annotation.labels == i).sum() / np.pi) for i in annotation.instance_ids()]
    )
    assert measured == pytest.approx(found_per_round[kept_round], rel=0.15)


def _nuclei_field() -> np.ndarray:
    """A grey field of bright round nuclei 24 px across on a dim, noisy background."""
    from skimage.draw import disk

    rng = np.random.default_rng(2)
    image = rng.normal(20, 4, (128, 160))
    for row, col in [(30, 30), (30, 90), (40, 135), (90, 40), (95, 100), (100, 140)]:
        image[disk((row, col), 12, shape=image.shape)] += 150
    return np.clip(image, 0, 255).astype(np.uint8)


def test_flip_views_given_replace_the_cards_one_network_pass_each():
    """fluo-resunet's card averages 4 mirror views; ``flip_views=1`` runs the network once
    per tile instead, and both find the same six nuclei."""
    model = load_model("fluo-resunet", "cpu")
    assert model.card.params["flip_views"] == 4
    passes = []
    hook = model.network.register_forward_hook(lambda *_: passes.append(1))
    try:
        found = {}
        for views in (None, 1, 2):
            passes.clear()
            result = predict(_nuclei_field(), model, diameter=24.0, flip_views=views)
            found[views] = (len(passes), len(result.instance_ids()))
    finally:
        hook.remove()
    assert found[None][0] == 4 * found[1][0] and found[2][0] == 2 * found[1][0]
    assert {count for _, count in found.values()} == {6}


@pytest.mark.parametrize(
    ("name", "views", "message"),
    [
        ("fluo-resunet", 3, "1, 2 or 4"),
        ("fluo-resunet", True, "1, 2 or 4"),
        ("blood-detector", 2, "no segmentation maps"),
        ("blood-classical", 4, "no segmentation maps"),
    ],
)
def test_flip_views_the_model_cannot_use_are_refused_by_name(name, views, message, smear):
    model = load_model(name, "cpu")
    with pytest.raises(InputError, match=message):
        predict(smear[0], model, diameter=34.0, flip_views=views)
    if name != "fluo-resunet":  # one view is every model's plain run
        result = predict(smear[0][:64, :64], model, diameter=34.0, flip_views=1)
        assert isinstance(result, Annotation) and result.shape == (64, 64)

"""The size model: ridge regression of log(diameter) on a network's pooled features, and
fluo-resunet reading the size of nuclei with it."""

import dataclasses
import math

import numpy as np
import pytest
import tifffile
from skimage.io import imread

from napari_cellquant.core.errors import InputError
from napari_cellquant.core.predict import Model, load_model, predict
from napari_cellquant.core.scale import describe_scale
from napari_cellquant.core.size_model import fit_size_model, pooled_features, regress_diameter


def test_the_fit_recovers_a_linear_law_on_raw_features_with_its_scaling_folded_in():
    """Features on wildly different scales, two of them carrying log(diameter): the card's
    weights apply to the raw features, and predict held-out images within a few percent."""
    rng = np.random.default_rng(0)
    images, views = 40, 5
    log_d = np.log(rng.uniform(8, 70, images * views))
    noise = rng.normal(size=(images * views, 6))
    features = np.column_stack([1000 * log_d + noise[:, 0], 0.01 * log_d, noise[:, 1:] * 50])
    groups = np.repeat(np.arange(images), views)
    fitted = fit_size_model(features[:150], np.exp(log_d[:150]), groups[:150])
    assert fitted["penalty"] in (1.0, 3.0, 10.0, 30.0, 100.0, 300.0)
    predicted = features[150:] @ np.array(fitted["weights"]) + fitted["bias"]
    assert np.max(np.abs(predicted - log_d[150:])) < 0.05
    assert fitted["cv_median_log_error"] < 0.05


def test_too_few_images_to_cross_validate_is_a_clear_error():
    with pytest.raises(InputError, match="at least 5 groups"):
        fit_size_model(np.ones((6, 3)), np.full(6, 20.0), np.array([0, 0, 1, 1, 2, 2]))


def _nuclei(diameter: float, shape=(256, 256)) -> np.ndarray:
    """A fluorescence-like field of round nuclei ``diameter`` px across on a grid."""
    from skimage.draw import disk

    rng = np.random.default_rng(1)
    image = rng.normal(15, 3, shape)
    step = int(diameter * 1.8)
    for row in range(step // 2, shape[0] - step // 3, step):
        for col in range(step // 2, shape[1] - step // 3, step):
            jitter = rng.integers(-step // 8, step // 8 + 1, 2)
            image[disk((row + jitter[0], col + jitter[1]), diameter / 2, shape=shape)] += 140
    return np.clip(image, 0, 255).astype(np.uint8)


def _net_sample() -> np.ndarray:
    from importlib.resources import files

    return imread(files("napari_cellquant.samples") / "K.Fiok3_1Per2h006_scale.jpg")


@pytest.fixture(scope="module")
def fluo():
    return load_model("fluo-resunet", "cpu")


def test_fluo_resunet_reads_twice_the_size_where_nuclei_are_twice_as_large(fluo, shared_data):
    """On a DSB2018 validation image (never fitted on) and the same image enlarged 2x, the
    size model reads sizes near the truth, in the ratio 2."""
    from napari_cellquant.core.predict import _resize
    from napari_cellquant.core.scale import median_object_diameter

    name = "0bda515e370294ed94efd36bd53782288acacb040c171df2ed97fd691fc9d8fe"
    image = imread(shared_data / "dsb2018" / "images" / f"{name}.png")[..., :3]
    truth = median_object_diameter(
        tifffile.imread(shared_data / "dsb2018" / "labels" / f"{name}.tif")
    )
    small, large = (regress_diameter(_resize(image, zoom), fluo) for zoom in (1.0, 2.0))
    assert small is not None and large is not None
    assert 1.6 < large.diameter / small.diameter < 2.5
    assert abs(math.log(small.diameter / truth)) < math.log(1.3), (small.diameter, truth)


def test_a_reading_outside_the_fitted_sizes_falls_back_on_the_weight_free_estimate(fluo):
    """The colour NET sample is unlike DSB2018: the size model reads its 30-px nuclei as
    under 8 px, outside the 8-68 px it was fitted on, so the weight-free estimate is used."""
    from napari_cellquant.core.scale import estimate_diameter

    image = _net_sample()
    assert fluo.card.params["size_model"]["range"] == [8.0, 68.0]
    weights = np.array(fluo.card.params["size_model"]["weights"])
    raw = math.exp(pooled_features(image, fluo) @ weights + fluo.card.params["size_model"]["bias"])
    assert raw < 8.0
    read = regress_diameter(image, fluo)
    assert read is not None and read.diameter == estimate_diameter(image).diameter
    assert 20 < read.diameter < 45


def test_predict_takes_its_scale_from_the_size_model_unless_told(fluo):
    image = _nuclei(28.0)
    read = regress_diameter(image, fluo).diameter
    found = predict(image, fluo, flip_views=1)
    # a size model's reading is not checked again on the model's own nuclei
    assert (found.meta["diameter_source"], found.meta["diameter_reader"]) == (
        "estimated",
        "size model",
    )
    assert math.isclose(found.meta["diameter_px"], read, rel_tol=1e-6)
    assert (
        describe_scale(found.meta)
        == f"diameter {read:.1f} px, estimated by the network's size model"
    )
    assert predict(image, fluo, diameter=28.0, flip_views=1).meta["diameter_px"] == 28.0


def test_a_size_model_that_does_not_fit_the_network_is_a_clear_error(fluo):
    card = dataclasses.replace(
        fluo.card, params={**fluo.card.params, "size_model": {"weights": [0.1] * 7, "bias": 3.0}}
    )
    model = Model(card=card, network=fluo.network, device=fluo.device)
    assert pooled_features(_nuclei(20.0), fluo).shape == (1024,)
    with pytest.raises(InputError, match="7 weights but the network gives 1024"):
        predict(_nuclei(20.0), model)

"""False malaria signals: on ordinary smears, which hold no parasites, every built-in model
that names infected red cells calls few of its red cells infected, and it still calls the
parasitised cells of the malaria composites infected.

The goal is at most 1 % (the white-cell issue, item 3), and these tests hold every such model
to it. blood-unet meets it with the prior its card gives the infected class
(``params.class_logit_bias``, calibrated on TXL-PBC train photographs it never trains on): 0.3 %
of the RBCs of TXL-PBC val called infected, against 4.0 % without the prior and 66.3 % before
it trained on ordinary smears."""

from __future__ import annotations

from pathlib import Path

import pytest
from skimage import io

from napari_cellquant.core.annotation import Annotation
from napari_cellquant.core.classes import get_class_set
from napari_cellquant.core.models.registry import builtin_cards, weights_status
from napari_cellquant.core.predict import load_model, predict

SAMPLE_PHOTO = (
    Path(__file__).resolve().parents[2] / "src/napari_cellquant/samples/BloodImage_00000.jpg"
)
#: the goal (see the module's text)
MAX_INFECTED_SHARE = 0.01

NAMING_INFECTED = sorted(
    name
    for name, card in builtin_cards().items()
    if "infected_rbc" in get_class_set(card.class_set).names
)


def _rbc_counts(found: list[Annotation]) -> tuple[int, int]:
    """(infected, all) red cells over the predictions."""
    infected = sum(a.counts()["infected_rbc"] for a in found)
    return infected, infected + sum(a.counts()["healthy_rbc"] for a in found)


def _model(name: str):
    if weights_status(builtin_cards()[name]) != "bundled":
        pytest.skip(f"{name} has no bundled weights")
    return load_model(name, "cpu")


def test_the_models_that_name_infected_cells_are_checked():
    assert "blood-unet" in NAMING_INFECTED


@pytest.mark.parametrize("name", NAMING_INFECTED)
def test_no_false_malaria_on_the_bundled_smear_photograph(name):
    """BCCD's photograph (Giemsa, no parasites; in neither split of TXL-PBC) as a user opens
    it: default scale handling, as ``cellquant predict`` runs it."""
    found = predict(io.imread(SAMPLE_PHOTO), _model(name))
    infected, rbc = _rbc_counts([found])
    assert rbc >= 30, found.counts()  # the photograph holds about 60 red cells
    assert infected <= MAX_INFECTED_SHARE * rbc, found.counts()


@pytest.mark.parametrize("name", NAMING_INFECTED)
def test_no_false_malaria_on_txl_pbc_val_photographs(name, shared_data):
    """Every 8th TXL-PBC val photograph (BCCD, PBC and Raabin-WBC smears; never trained on)."""
    from napari_cellquant.core.io import read_annotations

    model = _model(name)
    truth = read_annotations(shared_data / "txl_pbc" / "labels" / "val")[::8]
    found = [predict(io.imread(a.image_path), model) for a in truth]
    infected, rbc = _rbc_counts(found)
    true_rbc = sum(a.counts()["rbc"] for a in truth)
    assert rbc >= 0.7 * true_rbc, (rbc, true_rbc)
    assert infected <= MAX_INFECTED_SHARE * rbc, (infected, rbc)


def test_blood_unet_still_calls_parasitised_cells_infected(shared_data):
    """The composites whose red cells are parasitised (blood_smear_224; all 14 were trained
    on, so this checks that the prior against false signals did not silence true ones).

    Every red cell of these 6 composites is parasitised (98). blood-unet breaks them into
    about 245 pieces; without its prior (``params.class_logit_bias``) it called 207 of them
    infected, with it 119: the price of the prior, which this bound keeps from growing."""
    from napari_cellquant.core.training import load_training_pairs

    folder = shared_data / "blood_smear_224"
    pairs = load_training_pairs(folder / "images", folder / "segments", class_set="blood10")
    malaria = [(image, a) for image, a in pairs if a.counts()["infected_rbc"] >= 5]
    assert len(malaria) >= 3
    model = _model("blood-unet")
    infected, rbc = _rbc_counts([predict(image, model) for image, _ in malaria])
    true_infected, true_rbc = _rbc_counts([a for _, a in malaria])
    assert infected >= true_infected and infected >= 0.4 * rbc, (infected, rbc, true_rbc)

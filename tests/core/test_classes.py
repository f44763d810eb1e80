import numpy as np
import pytest

from napari_cellquant.core.classes import (
    BLOOD3,
    BLOOD10,
    CELL,
    NET4,
    class_set_from_names,
    get_class_set,
)
from napari_cellquant.core.errors import CellquantError


def test_builtin_sets_order_and_ids():
    assert BLOOD10.names == (
        "eosinophil",
        "basophil",
        "neutrophil",
        "lymphocyte",
        "monocyte",
        "platelet",
        "platelet_clump",
        "infected_rbc",
        "healthy_rbc",
    )
    assert BLOOD3.names == ("rbc", "wbc", "platelet")
    assert NET4.names == ("NET", "dead", "unstimulated", "decondensed")
    assert CELL.names == ("cell",)
    assert BLOOD10.ids == tuple(range(1, 10))
    assert NET4.id_of("net") == 1 and NET4.name_of(4) == "decondensed"


def test_blood10_colours_are_the_data_readme_palette():
    assert BLOOD10.color_of(BLOOD10.id_of("healthy_rbc")) == (0, 255, 0)
    assert BLOOD10.color_of(BLOOD10.id_of("infected_rbc")) == (255, 0, 0)
    assert BLOOD10.color_of(BLOOD10.id_of("neutrophil")) == (250, 190, 190)


def test_unknown_names_and_ids_fail_clearly():
    with pytest.raises(CellquantError, match="not in class set 'net4'"):
        NET4.id_of("platelet")
    with pytest.raises(CellquantError, match=r"ids 1..3"):
        BLOOD3.name_of(4)
    with pytest.raises(CellquantError, match="unknown class set 'blood11'"):
        get_class_set("blood11")


def test_decode_snaps_blended_colours_to_nearest_class():
    class_map = np.array([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]])
    rgb = BLOOD10.encode_colors(class_map).astype(np.int32)
    # blend every pixel a little towards grey, as anti-aliased edges and JPEG do
    blended = np.clip(rgb + np.sign(128 - rgb) * 20, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(BLOOD10.decode_colors(blended), class_map)


def test_ignored_colour_decodes_to_background():
    partial_wbc_blue = np.array([[[0, 0, 255], [5, 5, 240]]], dtype=np.uint8)
    np.testing.assert_array_equal(BLOOD10.decode_colors(partial_wbc_blue), [[0, 0]])


def test_class_set_from_file_names_reuses_builtin():
    assert class_set_from_names(["NET", "dead", "unstimulated", "decondensed"]) is NET4
    custom = class_set_from_names(["a", "b"])
    assert custom.names == ("a", "b") and len(set(custom.colors)) == 2

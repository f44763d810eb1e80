"""The Correct widget through the manifest: each edit, napari's own paint/erase, undo, features."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cellquant._layers import META_CORRECTIONS, annotation_to_layer_data
from napari_cellquant.core.annotation import Annotation
from napari_cellquant.core.classes import BLOOD3
from napari_cellquant.core.errors import CellquantError


def _annotation() -> Annotation:
    labels = np.zeros((60, 90), dtype=np.int32)
    labels[2:10, 2:10] = 3  # rbc, 64 px
    labels[2:10, 10:22] = 7  # wbc, 96 px, touching 3
    labels[40:44, 70:74] = 9  # platelet, 16 px
    rows, cols = np.mgrid[:60, :90]
    left = (rows - 30) ** 2 + (cols - 20) ** 2 <= 8**2
    discs = left | ((rows - 30) ** 2 + (cols - 36) ** 2 <= 8**2)
    labels[discs] = 12  # two touching discs, rbc
    ring = (np.abs(rows - 15) <= 7) & (np.abs(cols - 65) <= 7)
    hole = (np.abs(rows - 15) <= 3) & (np.abs(cols - 65) <= 3)
    labels[ring & ~hole] = 15  # wbc ring with a 49 px hole
    classes = {3: 1, 7: 2, 9: 3, 12: 1, 15: 2}
    return Annotation(
        labels,
        BLOOD3,
        classes,
        scores={i: 0.9 for i in classes},
        origins={i: "model" for i in classes},
        image_name="smear.png",
    )


@pytest.fixture
def correct(make_napari_viewer):
    viewer = make_napari_viewer()
    ((data, kwargs, _),) = annotation_to_layer_data(_annotation())
    layer = viewer.add_labels(data, **kwargs)
    _, widget = viewer.window.add_plugin_dock_widget("napari-cellquant", "Correct")
    return viewer, layer, widget


def _check_features(layer):
    ids = np.unique(layer.data)
    ids = ids[ids != 0]
    features = layer.features
    np.testing.assert_array_equal(np.sort(features["index"].to_numpy()), ids)
    np.testing.assert_array_equal(features["index"], features["label"])
    return features.set_index("index")


def _actions(layer):
    return [e["action"] for e in layer.metadata.get(META_CORRECTIONS, [])]


def test_merge_delete_and_undo_restore_pixels_and_features(correct):
    _viewer, layer, widget = correct
    before = layer.data.copy()
    widget.merge([7, 3])
    assert not np.any(layer.data == 7) and np.count_nonzero(layer.data == 3) == 160
    f = _check_features(layer)
    assert f.loc[3, "class_name"] == "wbc" and f.loc[3, "origin"] == "edited"
    widget.delete([9])
    assert not np.any(layer.data == 9)
    _check_features(layer)
    assert _actions(layer) == ["merged", "deleted"]
    layer.undo()
    layer.undo()
    np.testing.assert_array_equal(layer.data, before)
    f = _check_features(layer)
    assert f.loc[3, "class_name"] == "rbc" and f.loc[7, "class_name"] == "wbc"
    assert f.loc[9, "class_name"] == "platelet" and f.loc[9, "score"] == pytest.approx(0.9)


def test_split_by_distance_and_by_seed_points(correct):
    viewer, layer, widget = correct
    edit = widget.split(12)
    assert set(edit.event.result_ids) == {12, 16}
    assert layer.data[30, 20] != layer.data[30, 36]
    f = _check_features(layer)
    assert f.loc[16, "class_name"] == "rbc" and f.loc[16, "origin"] == "edited"
    layer.undo()
    assert not np.any(layer.data == 16)
    _check_features(layer)
    viewer.add_points([[30, 18], [30, 38]], name="seeds")
    widget.seeds_combo.reset_choices()
    widget.seeds_combo.value = viewer.layers["seeds"]
    edit = widget.split()  # the object is the one the seeds fall in
    assert edit.event.ids == [12] and len(edit.event.result_ids) == 2
    _check_features(layer)


def test_set_class_under_the_cursor_is_undoable(correct):
    viewer, layer, widget = correct
    viewer.cursor.position = (42, 71)
    new_id = widget.set_class("wbc")
    assert new_id not in (0, 9) and np.count_nonzero(layer.data == new_id) == 16
    f = _check_features(layer)
    assert f.loc[new_id, "class_name"] == "wbc" and f.loc[new_id, "origin"] == "edited"
    assert _actions(layer) == ["reclassed"]
    layer.undo()
    f = _check_features(layer)
    assert f.loc[9, "class_name"] == "platelet" and f.loc[9, "origin"] == "model"


def test_fill_holes_remove_small_and_relabel(correct):
    _viewer, layer, widget = correct
    widget.fill_holes()
    assert np.count_nonzero(layer.data == 15) == 225
    assert _check_features(layer).loc[15, "origin"] == "edited"
    widget.remove_small(20)
    assert not np.any(layer.data == 9)
    named_before = _check_features(layer)["class_name"].to_dict()
    widget.relabel()
    ids = np.unique(layer.data)
    np.testing.assert_array_equal(ids, [0, 1, 2, 3, 4])
    f = _check_features(layer)
    assert f["class_name"].to_list() == list(named_before.values())
    assert _actions(layer) == ["filled_holes", "removed_small", "relabelled"]
    layer.undo()  # the old ids come back with their own rows
    assert _check_features(layer)["class_name"].to_dict() == named_before
    assert _actions(layer)[-1] == "reverted"


def test_napari_paint_fill_and_erase_keep_features_consistent(correct):
    _viewer, layer, widget = correct
    widget.class_combo.value = "platelet"
    new_id = widget.draw_new()
    assert layer.mode == "paint" and layer.selected_label == new_id == 16
    layer.paint((50, 10), new_id)  # napari's own brush
    f = _check_features(layer)
    assert f.loc[16, "class_name"] == "platelet" and f.loc[16, "origin"] == "drawn"
    layer.paint((5, 9), 3)  # paint into object 3 over the edge of 7
    f = _check_features(layer)
    assert f.loc[3, "origin"] == "edited" and f.loc[7, "origin"] == "edited"
    layer.fill((42, 71), 0)  # erase object 9 with the bucket
    f = _check_features(layer)
    assert 9 not in f.index
    layer.undo()  # the fill
    f = _check_features(layer)
    assert f.loc[9, "class_name"] == "platelet"
    actions = _actions(layer)
    assert actions[:2] == ["added", "edited"] and "deleted" in actions, actions


def test_edits_through_data_setitem_and_undo_of_a_drawn_object(correct):
    _viewer, layer, _widget = correct
    layer.data_setitem((np.array([55, 55, 56]), np.array([80, 81, 80])), 40)
    assert _check_features(layer).loc[40, "origin"] == "drawn"
    layer.undo()
    assert 40 not in _check_features(layer).index
    layer.redo()
    assert 40 in _check_features(layer).index


def test_shortcuts_are_bound_on_the_layer_and_errors_are_reported(correct):
    viewer, layer, widget = correct
    viewer.cursor.position = (42, 71)
    from app_model.types import KeyBinding

    bound = {str(k) for k in layer.keymap}
    assert {"Shift+D", "Shift+M", "Shift+S", "Shift+C", "Shift+N"} <= bound
    layer.keymap[KeyBinding.from_str("Shift+D")](layer)
    assert not np.any(layer.data == 9)
    viewer.cursor.position = (59, 0)  # background, nothing selected that exists
    layer.selected_label = 99
    layer.keymap[KeyBinding.from_str("Shift+D")](layer)  # a warning, not an exception
    assert "no object" in widget.status_label.value


def test_a_plain_napari_labels_layer_gets_a_features_table(make_napari_viewer):
    viewer = make_napari_viewer()
    data = np.zeros((30, 30), dtype=np.int32)
    data[3:8, 3:8] = 2
    layer = viewer.add_labels(data, name="hand made")
    _, widget = viewer.window.add_plugin_dock_widget("napari-cellquant", "Correct")
    assert widget.layer_combo.value is layer
    f = _check_features(layer)
    assert f.loc[2, "class_name"] == "cell" and f.loc[2, "origin"] == "drawn"
    layer.paint((20, 20), widget.draw_new())
    f = _check_features(layer)
    assert list(f.index) == [2, 3] and f.loc[3, "origin"] == "drawn"


def test_a_layer_with_an_unknown_class_name_is_refused_with_a_warning(make_napari_viewer):
    viewer = make_napari_viewer()
    ((data, kwargs, _),) = annotation_to_layer_data(_annotation())
    kwargs["features"]["class_name"][0] = "dragon"
    viewer.add_labels(data, **kwargs)
    _, widget = viewer.window.add_plugin_dock_widget("napari-cellquant", "Correct")
    assert widget.editor is None
    assert "dragon" in widget.status_label.value
    with pytest.raises(CellquantError, match="choose a Labels layer"):
        widget.delete([3])


def test_corrected_layer_converts_back_with_classes_and_origins(correct):
    from napari_cellquant._layers import layer_data_to_annotation

    _viewer, layer, widget = correct
    widget.merge([3, 7])
    layer.paint((50, 60), widget.draw_new())
    (ann,) = layer_data_to_annotation([layer.as_layer_data_tuple()])
    assert set(ann.instance_ids()) == {3, 9, 12, 15, 16}
    assert ann.classes[3] == BLOOD3.id_of("wbc") and ann.origins[3] == "edited"
    assert ann.origins[16] == "drawn" and ann.classes[16] == BLOOD3.id_of("rbc")
    assert ann.origins.get(9, "file") == "model"


def test_edits_that_outgrow_a_uint16_layer_widen_it(make_napari_viewer):
    """Segment hands over uint16 pixels where the ids fit; a split or reclass that needs an
    id above 65535 widens the layer instead of wrapping the id round to another object."""
    ann = _annotation()
    ann.labels[ann.labels == 15] = 65535  # the ring takes the largest uint16 id
    ann.classes[65535] = ann.classes.pop(15)
    ann.origins[65535] = ann.origins.pop(15)
    ann.scores[65535] = ann.scores.pop(15)
    viewer = make_napari_viewer()
    ((data, kwargs, _),) = annotation_to_layer_data(ann)
    layer = viewer.add_labels(data.astype(np.uint16), **kwargs)
    _, widget = viewer.window.add_plugin_dock_widget("napari-cellquant", "Correct")
    edit = widget.split(12)
    assert set(edit.event.result_ids) == {12, 65536}
    assert layer.data.dtype == np.int32 and np.count_nonzero(layer.data == 65536) > 100
    assert np.count_nonzero(layer.data == 65535) == np.count_nonzero(ann.labels == 65535)
    f = _check_features(layer)
    assert f.loc[65536, "class_name"] == "rbc" and f.loc[65535, "class_name"] == "wbc"

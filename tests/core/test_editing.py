"""Corrections on synthesised label images with answers checkable by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_cellquant.core.editing import (
    CorrectionEvent,
    CorrectionLog,
    ObjectIndex,
    delete,
    fill_holes,
    merge,
    next_free_id,
    relabel,
    remove_small,
    set_class,
    split,
)
from napari_cellquant.core.errors import InputError


def _two_squares() -> np.ndarray:
    labels = np.zeros((20, 30), dtype=np.int32)
    labels[2:8, 2:8] = 4  # 36 px
    labels[2:8, 8:18] = 9  # 60 px, touching 4
    labels[12:18, 20:28] = 2  # 48 px
    return labels


def _touching_discs() -> np.ndarray:
    rows, cols = np.mgrid[:40, :60]
    first = (rows - 20) ** 2 + (cols - 18) ** 2 <= 11**2
    second = (rows - 20) ** 2 + (cols - 40) ** 2 <= 11**2
    labels = np.zeros((40, 60), dtype=np.int32)
    labels[first | second] = 5
    return labels


@pytest.mark.parametrize("use_index", [False, True])
def test_merge_two_squares_into_the_smaller_id_with_the_majority_class(use_index):
    labels = _two_squares()
    classes = {4: 1, 9: 2, 2: 3}
    edit = merge(labels, [9, 4], classes, index=ObjectIndex(labels) if use_index else None)
    assert edit.n_pixels == 60 and edit.removed == (9,)
    merged = edit.apply(labels.copy())
    assert np.count_nonzero(merged == 4) == 96
    assert not np.any(merged == 9)
    assert np.count_nonzero(merged == 2) == 48  # untouched
    new_classes = edit.apply_classes(classes)
    assert new_classes == {4: 2, 2: 3}  # 9 covered 60 of 96 px
    assert edit.origins == {4: "edited"}
    assert edit.event.action == "merged" and edit.event.previous_classes == [2, 1]


def test_merge_can_keep_the_first_class_and_rejects_bad_input():
    labels = _two_squares()
    edit = merge(labels, [4, 9], {4: 1, 9: 2}, class_rule="first")
    assert edit.classes == {4: 1}
    with pytest.raises(InputError, match="at least two"):
        merge(labels, [4, 4], {})
    with pytest.raises(InputError, match="77"):
        merge(labels, [4, 77], {})


def test_split_two_touching_discs_automatically_gives_two_objects():
    labels = _touching_discs()
    edit = split(labels, 5, {5: 2})
    out = edit.apply(labels.copy())
    ids = set(np.unique(out)) - {0}
    assert ids == {5, 6}
    assert edit.classes == {5: 2, 6: 2}
    # each disc centre lands in a different piece, and no pixel left the object
    assert out[20, 18] != out[20, 40]
    np.testing.assert_array_equal(out > 0, labels > 0)
    # the pieces are about equal (each disc ~ 380 px)
    sizes = np.bincount(out.ravel())[[5, 6]]
    assert abs(int(sizes[0]) - int(sizes[1])) < 40
    assert edit.event.result_ids == [5, 6]


def test_split_from_seeds_uses_only_seeds_inside_the_object():
    labels = _touching_discs()
    labels[0:3, 0:3] = 1
    index = ObjectIndex(labels)
    edit = split(labels, 5, {}, seeds=[(20, 10), (20, 48), (1, 1)], index=index)
    out = edit.apply(labels.copy())
    assert set(np.unique(out)) == {0, 1, 5, 6}
    assert out[20, 10] != out[20, 48]
    with pytest.raises(InputError, match="two or more seeds"):
        split(labels, 5, {}, seeds=[(20, 10)])


def test_delete_and_remove_small():
    labels = _two_squares()
    edit = delete(labels, [9], {9: 2})
    out = edit.apply(labels.copy())
    assert not np.any(out == 9) and np.count_nonzero(out) == 36 + 48
    assert edit.apply_classes({4: 1, 9: 2}) == {4: 1}
    small = remove_small(labels, 40)
    assert small.removed == (4,)
    assert set(np.unique(small.apply(labels.copy()))) == {0, 2, 9}


def test_fill_a_rings_hole_but_not_an_object_inside_it():
    labels = np.zeros((30, 30), dtype=np.int32)
    labels[5:25, 5:25] = 3
    labels[10:20, 10:20] = 0  # the hole: 100 px
    labels[14:16, 14:16] = 8  # a small object inside the hole stays
    edit = fill_holes(labels)
    out = edit.apply(labels.copy())
    assert edit.n_pixels == 96
    assert np.count_nonzero(out == 3) == 400 - 4
    assert np.count_nonzero(out == 8) == 4
    assert edit.origins == {3: "edited"}


def test_relabel_returns_the_id_map():
    labels = _two_squares()
    edit = relabel(labels, {2: 3, 4: 1, 9: 2})
    out = edit.apply(labels.copy())
    assert set(np.unique(out)) == {0, 1, 2, 3}
    assert edit.id_map[2] == 1 and edit.id_map[4] == 2 and edit.id_map[9] == 3
    assert edit.apply_classes({2: 3, 4: 1, 9: 2}) == {1: 3, 2: 1, 3: 2}


def test_set_class_and_next_free_id():
    labels = _two_squares()
    edit = set_class({4: 1}, [4], 3)
    assert edit.n_pixels == 0 and edit.apply_classes({4: 1, 9: 2}) == {4: 3, 9: 2}
    assert edit.event.previous_classes == [1]
    assert next_free_id(labels) == 10 == next_free_id(labels, ObjectIndex(labels))


def test_object_index_grows_with_edits():
    labels = _two_squares()
    index = ObjectIndex(labels)
    assert index.region([4]) == (slice(2, 8), slice(2, 8))
    labels[15, 1] = 4
    index.update((np.array([15]), np.array([1])), 4)
    assert index.region([4]) == (slice(2, 16), slice(1, 8))
    index.update((np.array([19]), np.array([29])), 12)
    assert index.max_id == 12 and index.region([12]) == (slice(19, 20), slice(29, 30))


def test_correction_log_round_trips_through_json():
    log = CorrectionLog(
        [CorrectionEvent("merged", ids=[4, 9], result_ids=[4], classes=[2], pixels=60)]
    )
    log.append(split(_touching_discs(), 5, {5: 1}).event)
    text = log.to_json()
    assert json.loads(text)[0]["action"] == "merged"
    again = CorrectionLog.from_json(text)
    assert again.to_dicts() == log.to_dicts()
    with pytest.raises(InputError):
        CorrectionEvent("exploded")

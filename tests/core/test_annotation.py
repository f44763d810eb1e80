import numpy as np
import pytest

from napari_cellquant.core.annotation import Annotation, Boxes
from napari_cellquant.core.classes import BLOOD3, NET4
from napari_cellquant.core.errors import InputError


def _two_cells() -> Annotation:
    labels = np.zeros((6, 8), dtype=np.int32)
    labels[1:3, 1:3] = 4
    labels[3:5, 5:8] = 7
    return Annotation(labels, BLOOD3, classes={4: 1, 7: 2}, scores={7: 0.9})


def test_counts_list_every_class_and_include_boxes():
    ann = _two_cells()
    ann.boxes = Boxes([[0, 0, 2, 2]], [3], [0.5])
    assert ann.counts() == {"rbc": 1, "wbc": 1, "platelet": 1}


def test_features_rows_follow_instance_ids():
    features = _two_cells().features()
    assert features["label"].tolist() == [4, 7]
    assert features["class_name"].tolist() == ["rbc", "wbc"]
    assert np.isnan(features["score"][0]) and features["score"][1] == pytest.approx(0.9)


def test_class_map_paints_class_ids():
    class_map = _two_cells().class_map()
    assert set(np.unique(class_map)) == {0, 1, 2}
    assert (class_map[1:3, 1:3] == 1).all() and (class_map[3:5, 5:8] == 2).all()


def test_copy_is_independent():
    ann = _two_cells()
    dup = ann.copy()
    dup.labels[0, 0] = 9
    dup.classes[4] = 3
    assert ann.labels[0, 0] == 0 and ann.classes[4] == 1


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.zeros((2, 2, 2), dtype=np.int32), "must be 2-D"),
        (np.zeros((2, 2), dtype=np.float32), "must be integers"),
        (-np.ones((2, 2), dtype=np.int32), "must not be negative"),
    ],
)
def test_invalid_labels_are_rejected(labels, message):
    with pytest.raises(InputError, match=message):
        Annotation(labels, BLOOD3)


def test_class_outside_set_is_rejected():
    with pytest.raises(InputError, match="class id 5 is not in class set 'net4'"):
        Annotation(np.zeros((2, 2), dtype=np.int32), NET4, boxes=Boxes([[0, 0, 1, 1]], [5]))


def test_boxes_scale_and_select():
    boxes = Boxes([[10, 20, 30, 40], [0, 0, 1, 1]], [1, 2])
    assert np.isnan(boxes.scores).all()
    half = boxes.scaled(0.5, 0.25).select(np.array([True, False]))
    np.testing.assert_allclose(half.xywh, [[5, 5, 15, 10]])
    assert half.class_ids.tolist() == [1]

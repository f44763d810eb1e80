"""Annotation <-> layer data: features, class colours, boxes, and the lossless way back."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cellquant._layers import (
    META_CLASS_SET,
    META_IMAGE_NAME,
    annotation_to_layer_data,
    boxes_to_rectangles,
    class_set_from_metadata,
    class_set_to_metadata,
    layer_data_to_annotation,
    rectangles_to_xywh,
)
from napari_cellquant.core.annotation import Annotation, Boxes
from napari_cellquant.core.classes import BLOOD3, CELL, NET4, ClassSet
from napari_cellquant.core.errors import InputError


def _annotation() -> Annotation:
    labels = np.zeros((40, 50), dtype=np.int32)
    labels[2:10, 3:12] = 3  # sparse ids on purpose: napari must not map row i -> label i
    labels[20:30, 20:35] = 7
    labels[32:38, 40:46] = 9
    return Annotation(
        labels=labels,
        class_set=BLOOD3,
        classes={3: 1, 7: 2, 9: 3},
        scores={7: 0.75},
        origins={9: "edited"},
        boxes=Boxes([[5.0, 6.0, 10.0, 4.0], [30.5, 1.25, 3.0, 8.0]], [2, 3], [0.5, np.nan]),
        image_name="smear_01.png",
    )


def _as_written(layers):
    """What napari hands a writer: (data, kwargs, type) with the same keys layers keep."""
    return [(data, dict(kwargs), layer_type) for data, kwargs, layer_type in layers]


def _by_type(layers, layer_type):
    (found,) = [(d, k) for d, k, t in layers if t == layer_type]
    return found


def test_labels_layer_has_features_indexed_by_label_and_class_colours():
    ann = _annotation()
    layers = annotation_to_layer_data(ann)
    assert [t for _, _, t in layers] == ["labels", "shapes"]
    data, kwargs = _by_type(layers, "labels")
    assert kwargs["name"] == "smear_01 instances"
    np.testing.assert_array_equal(data, ann.labels)
    features = kwargs["features"]
    np.testing.assert_array_equal(features["index"], [3, 7, 9])
    assert list(features["class_name"]) == ["rbc", "wbc", "platelet"]
    np.testing.assert_array_equal(features["class"], [1, 2, 3])
    assert features["score"][1] == 0.75 and np.isnan(features["score"][0])
    assert list(features["origin"]) == ["file", "file", "edited"]
    colormap = kwargs["colormap"]
    assert colormap[0][3] == 0  # background transparent
    for label, class_id in ann.classes.items():
        expected = np.array([*BLOOD3.color_of(class_id), 255]) / 255
        np.testing.assert_allclose(colormap[label], expected)
    np.testing.assert_allclose(colormap[None][:3], np.array(BLOOD3.colors[0]) / 255)
    assert kwargs["metadata"][META_IMAGE_NAME] == "smear_01.png"
    assert class_set_from_metadata(kwargs["metadata"][META_CLASS_SET]) is BLOOD3


def test_napari_labels_layer_shows_class_of_hovered_label_and_its_colour():
    from napari.layers import Labels

    ann = _annotation()
    data, kwargs = _by_type(annotation_to_layer_data(ann), "labels")
    layer = Labels(data, **kwargs)
    status = layer.get_status((25, 25))["coordinates"]  # inside label 7 (class wbc)
    assert "class_name: wbc" in status and "score: 0.75" in status
    assert "class_name: platelet" in layer.get_status((35, 42))["coordinates"]
    np.testing.assert_allclose(layer.get_color(9)[:3], np.array(BLOOD3.color_of(3)) / 255)
    assert layer.get_color(0) is None  # background not drawn


def test_shapes_layer_rectangles_in_napari_pixel_coordinates():
    ann = _annotation()
    data, kwargs = _by_type(annotation_to_layer_data(ann), "shapes")
    assert kwargs["name"] == "smear_01 boxes"
    assert kwargs["shape_type"] == "rectangle"
    # x=5, y=6, w=10, h=4 covers pixel rows 6..9 and columns 5..14, centres on integers
    np.testing.assert_allclose(data[0], [[5.5, 4.5], [5.5, 14.5], [9.5, 14.5], [9.5, 4.5]])
    assert list(kwargs["features"]["class_name"]) == ["wbc", "platelet"]
    np.testing.assert_allclose(kwargs["edge_color"][1][:3], np.array(BLOOD3.color_of(3)) / 255)
    assert kwargs["face_color"] == "transparent"
    assert kwargs["text"]["string"] == "{class_name}"


def test_rectangles_round_trip_to_boxes():
    boxes = Boxes([[0, 0, 1, 1], [12.25, 3.5, 7.75, 20]], [1, 2])
    np.testing.assert_allclose(rectangles_to_xywh(boxes_to_rectangles(boxes)), boxes.xywh)
    assert rectangles_to_xywh([]).shape == (0, 4)


def test_scale_translate_and_image_are_carried():
    ann = _annotation()
    image = np.zeros((40, 50, 3), dtype=np.uint8)
    layers = annotation_to_layer_data(
        ann, name="field", scale=(0.5, 0.5), translate=(10, 20), image=image
    )
    assert [(k["name"], t) for _, k, t in layers] == [
        ("field", "image"),
        ("field instances", "labels"),
        ("field boxes", "shapes"),
    ]
    assert all(k["scale"] == (0.5, 0.5) and k["translate"] == (10.0, 20.0) for _, k, _ in layers)


def test_empty_annotation_still_gives_a_labels_layer_to_paint_into():
    layers = annotation_to_layer_data(Annotation.empty((8, 9), CELL, image_name="a.tif"))
    assert [t for _, _, t in layers] == ["labels"]
    boxes_only = Annotation.empty((8, 9), NET4, boxes=Boxes([[1, 1, 2, 2]], [1]))
    assert [t for _, _, t in annotation_to_layer_data(boxes_only)] == ["shapes"]


def test_layers_back_to_annotation_is_lossless():
    ann = _annotation()
    (back,) = layer_data_to_annotation(_as_written(annotation_to_layer_data(ann)))
    np.testing.assert_array_equal(back.labels, ann.labels)
    assert back.class_set is BLOOD3
    assert back.classes == ann.classes
    assert back.scores == ann.scores
    assert back.origins == ann.origins
    np.testing.assert_allclose(back.boxes.xywh, ann.boxes.xywh)
    np.testing.assert_array_equal(back.boxes.class_ids, ann.boxes.class_ids)
    np.testing.assert_array_equal(back.boxes.scores, ann.boxes.scores)
    assert back.image_name == "smear_01.png"


def test_napari_layer_round_trip_through_as_layer_data_tuple():
    from napari.layers import Labels, Shapes

    ann = _annotation()
    layers = annotation_to_layer_data(ann)
    built = [Labels(layers[0][0], **layers[0][1]), Shapes(layers[1][0], **layers[1][1])]
    (back,) = layer_data_to_annotation([layer.as_layer_data_tuple() for layer in built])
    assert back.classes == ann.classes and back.scores == ann.scores
    np.testing.assert_allclose(back.boxes.xywh, ann.boxes.xywh)


def test_painted_labels_without_rows_get_the_default_class():
    ann = _annotation()
    data, kwargs = _by_type(annotation_to_layer_data(ann), "labels")
    data = data.copy()
    data[12:16, 30:34] = 11  # painted after loading: no feature row
    (back,) = layer_data_to_annotation([(data, kwargs, "labels")])
    assert back.classes[11] == 1 and back.origins[11] == "drawn"
    assert back.classes[7] == 2


def test_class_name_edits_win_over_stale_class_ids():
    ann = _annotation()
    data, kwargs = _by_type(annotation_to_layer_data(ann), "labels")
    kwargs = {**kwargs, "features": {**kwargs["features"]}}
    kwargs["features"]["class_name"] = np.array(["rbc", "platelet", "platelet"], dtype=object)
    (back,) = layer_data_to_annotation([(data, kwargs, "labels")])
    assert back.classes == {3: 1, 7: 3, 9: 3}


def test_features_without_index_follow_napari_row_equals_label():
    labels = np.zeros((6, 6), dtype=np.int32)
    labels[0:2, 0:2] = 1
    labels[3:5, 3:5] = 2
    meta = {
        "name": "cells",
        "features": {"class_name": ["", "wbc", "platelet"]},
        "metadata": {META_CLASS_SET: class_set_to_metadata(BLOOD3)},
    }
    (back,) = layer_data_to_annotation([(labels, meta, "labels")])
    assert back.classes == {1: 2, 2: 3}
    assert back.image_name == "cells"


def test_class_set_is_inferred_when_metadata_has_none():
    labels = np.zeros((6, 6), dtype=np.int32)
    labels[1:3, 1:3] = 4
    meta = {"name": "x instances", "features": {"index": [4], "class_name": ["NET"]}}
    (back,) = layer_data_to_annotation([(labels, meta, "labels")])
    assert back.class_set is NET4 and back.classes == {4: 1}
    (plain,) = layer_data_to_annotation([(labels, {"name": "plain"}, "labels")])
    assert plain.class_set is CELL and plain.classes == {4: 1}


def test_custom_class_set_survives_metadata():
    custom = ClassSet("mine", ("a", "b"), ((1, 2, 3), (4, 5, 6)))
    back = class_set_from_metadata(class_set_to_metadata(custom))
    assert back == custom
    assert class_set_from_metadata({"name": "blood3", "names": list(BLOOD3.names)}) is BLOOD3
    assert class_set_from_metadata(None) is None


def test_shapes_with_other_scale_are_mapped_into_the_labels_grid():
    ann = _annotation()
    labels_data, labels_kwargs = _by_type(annotation_to_layer_data(ann), "labels")
    rect = [np.array([[-0.25, -0.25], [-0.25, 4.75], [1.75, 4.75], [1.75, -0.25]])]
    shapes_kwargs = {
        "name": "smear_01 boxes",
        "scale": (2.0, 2.0),
        "translate": (0.0, 0.0),
        "features": {"class_name": ["wbc"]},
        "shape_type": ["rectangle"],
        "metadata": labels_kwargs["metadata"],
    }
    (back,) = layer_data_to_annotation(
        [(labels_data, labels_kwargs, "labels"), (rect, shapes_kwargs, "shapes")]
    )
    # world corner (-0.5, -0.5) -> labels pixel edge (0, 0); size 5 x 10 world = pixels
    np.testing.assert_allclose(back.boxes.xywh, [[0.0, 0.0, 10.0, 4.0]])


def test_box_only_group_is_sized_by_its_image_layer():
    image = np.zeros((70, 90, 3), dtype=np.uint8)
    rect = boxes_to_rectangles(Boxes([[1, 2, 3, 4]], [1]))
    (ann,) = layer_data_to_annotation(
        [
            (image, {"name": "field", "rgb": True}, "image"),
            (rect, {"name": "field boxes", "features": {"class_name": ["dead"]}}, "shapes"),
        ]
    )
    assert ann.shape == (70, 90)
    assert ann.class_set is NET4 and ann.boxes.class_ids.tolist() == [2]


def test_non_rectangles_are_saved_as_bounding_boxes_with_a_warning():
    triangle = [np.array([[0.0, 0.0], [4.0, 2.0], [1.0, 6.0]])]
    with pytest.warns(UserWarning, match="bounding boxes"):
        (ann,) = layer_data_to_annotation(
            [(triangle, {"name": "t", "shape_type": ["polygon"]}, "shapes")]
        )
    np.testing.assert_allclose(ann.boxes.xywh, [[0.5, 0.5, 6.0, 4.0]])


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([(np.zeros((4, 4)), {"name": "img"}, "image")], "select a Labels or Shapes"),
        ([(np.zeros((2, 4, 4), dtype=np.int32), {"name": "vol"}, "labels")], "only 2-D"),
        ([(np.zeros((4, 4), dtype=np.float32), {"name": "f"}, "labels")], "not integer"),
        ([(np.full((4, 4), -1, dtype=np.int32), {"name": "n"}, "labels")], "negative"),
        (
            [
                (np.ones((4, 4), dtype=np.int32), {"name": "a instances"}, "labels"),
                (np.ones((4, 4), dtype=np.int32), {"name": "a"}, "labels"),
            ],
            "two Labels layers",
        ),
        (
            [
                (
                    np.ones((4, 4), dtype=np.int32),
                    {
                        "name": "a",
                        "features": {"index": [1], "class_name": ["ghost"]},
                        "metadata": {META_CLASS_SET: class_set_to_metadata(BLOOD3)},
                    },
                    "labels",
                )
            ],
            "'ghost' is not in class set",
        ),
        (
            [
                (
                    np.ones((4, 4), dtype=np.int32),
                    {
                        "name": "a",
                        "features": {"index": [1], "class": [7]},
                        "metadata": {META_CLASS_SET: class_set_to_metadata(BLOOD3)},
                    },
                    "labels",
                )
            ],
            "class id 7",
        ),
    ],
)
def test_bad_layers_are_input_errors(layers, message):
    with pytest.raises(InputError, match=message):
        layer_data_to_annotation(layers)

"""QuPath GeoJSON: QuPath's own layout, exact round trip, third-party validity, bad files."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from skimage import io as skio

from napari_cellquant.core.annotation import Annotation, Boxes
from napari_cellquant.core.classes import get_class_set
from napari_cellquant.core.errors import InputError, OutputExistsError
from napari_cellquant.core.io import detect_kind, read_annotations, write_annotations
from napari_cellquant.core.io.geojson import read_geojson
from napari_cellquant.core.synthetic import synthetic_blood_smear


def _square(x: int, y: int, size: int) -> list[list[int]]:
    return [[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]


def _qupath_export(path: Path) -> Path:
    """What QuPath 0.5 / 0.6 writes with File > Export objects as GeoJSON (FeatureCollection,
    pretty printing off): uuid ids, objectType, classification name + colour, measurements as
    a dict, a cell with its nucleus, an annotation with a hole, a point annotation."""
    features = [
        {
            "type": "Feature",
            "id": "0b8e3a55-6d42-4a2e-9b57-2f3c1c0a1d10",
            "geometry": {"type": "Polygon", "coordinates": [_square(10, 10, 10)]},
            "properties": {
                "objectType": "detection",
                "classification": {"name": "RBC", "color": [255, 0, 0]},
                "measurements": {"Area px^2": 100.0, "Detection probability": 0.75},
            },
        },
        {
            "type": "Feature",
            "id": "5d3a7d47-1bd7-4a3e-8d61-7a0f1f27c0a2",
            "geometry": {
                "type": "Polygon",
                "coordinates": [_square(30, 5, 12), _square(34, 9, 4)[::-1]],
            },
            "properties": {
                "objectType": "annotation",
                "name": "ring",
                "classification": {"name": "WBC", "color": [0, 0, 255]},
                "isLocked": False,
            },
        },
        {
            "type": "Feature",
            "id": "9c1f0e0c-5b7e-4f38-bb5a-0c5f4a1b2e33",
            "geometry": {"type": "Polygon", "coordinates": [_square(50, 30, 6)]},
            "nucleusGeometry": {"type": "Polygon", "coordinates": [_square(52, 32, 2)]},
            "properties": {
                "objectType": "cell",
                "classification": {"name": "Platelets", "color": [0, 200, 0]},
            },
        },
        {
            "type": "Feature",
            "id": "2f5c8b1e-3a4d-4c6e-9f70-81a2b3c4d5e6",
            "geometry": {"type": "MultiPoint", "coordinates": [[5, 5], [6, 6]]},
            "properties": {"objectType": "annotation"},
        },
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def test_reads_the_layout_qupath_writes(tmp_path: Path) -> None:
    skio.imsave(tmp_path / "smear.png", np.zeros((40, 64, 3), np.uint8), check_contrast=False)
    path = _qupath_export(tmp_path / "smear.geojson")
    assert detect_kind(path) == "geojson"
    with pytest.warns(UserWarning, match="1 feature.*points or lines"):
        (ann,) = read_annotations(path)
    assert ann.class_set.name == "blood3" and ann.shape == (40, 64)
    assert ann.image_name == "smear.png"
    assert ann.counts() == {"rbc": 1, "wbc": 1, "platelet": 1}
    areas = {
        ann.class_set.name_of(ann.classes[i]): int((ann.labels == i).sum())
        for i in ann.instance_ids()
    }
    assert areas == {"rbc": 100, "wbc": 144 - 16, "platelet": 36}  # the hole stays empty
    rbc = next(i for i in ann.instance_ids() if ann.classes[i] == 1)
    assert ann.scores == {rbc: 0.75}  # QuPath's StarDist-style "Detection probability"
    assert ann.labels[10:20, 10:20].all() and not ann.labels[9, 10] and not ann.labels[10, 20]


def test_qupath_0_3_layout_and_unclassified_objects(tmp_path: Path) -> None:
    features = [
        {
            "type": "Feature",
            "id": "PathDetectionObject",
            "geometry": {"type": "Polygon", "coordinates": [_square(2, 2, 4)]},
            "properties": {"isLocked": False, "measurements": [{"name": "score", "value": 0.5}]},
        }
        for _ in range(2)
    ]
    features[1]["geometry"]["coordinates"] = [_square(10, 2, 4)]
    path = tmp_path / "cells.geojson"
    path.write_text(json.dumps(features))  # QuPath's plain array export
    with pytest.warns(UserWarning, match="no image found"):
        (ann,) = read_geojson(path)
    assert ann.class_set.name == "cell" and ann.counts() == {"cell": 2}
    assert set(ann.scores.values()) == {0.5} and ann.shape == (6, 14)


def _prediction() -> tuple[np.ndarray, Annotation]:
    image, truth = synthetic_blood_smear((160, 192), seed=5)
    truth.labels[40:44, 40:44] = 0  # a hole in whatever lies there
    origins = {int(i): ("model" if i % 2 else "edited") for i in truth.instance_ids()}
    scores = {int(i): 0.5 + (int(i) % 7) / 20 for i in truth.instance_ids() if i % 2}
    ann = truth.copy(
        origins=origins,
        scores=scores,
        image_name="smear.png",
        boxes=Boxes([[3.5, 4.25, 20, 11.5]], [2], [0.8]),
        meta={"pixel_size_um": (0.5, 0.5)},
    )
    ann.classes = {i: c for i, c in ann.classes.items() if i in set(ann.instance_ids())}
    return image, ann


def test_round_trip_is_exact(tmp_path: Path) -> None:
    image, ann = _prediction()
    skio.imsave(tmp_path / "smear.png", image, check_contrast=False)
    ann.image_path = tmp_path / "smear.png"
    (path,) = write_annotations([ann], tmp_path, to="geojson")
    assert path == tmp_path / "smear.geojson"
    (back,) = read_annotations(path)
    np.testing.assert_array_equal(back.labels, ann.labels)
    assert back.classes == ann.classes and back.scores == ann.scores
    assert back.origins == ann.origins and back.class_set == ann.class_set
    np.testing.assert_array_equal(back.boxes.xywh, ann.boxes.xywh)
    assert back.boxes.class_ids.tolist() == [2] and back.boxes.scores.tolist() == [0.8]
    feature = json.loads(path.read_text())["features"][0]
    props = feature["properties"]
    assert props["objectType"] in ("detection", "annotation")
    assert props["classification"]["name"] in ann.class_set.names
    assert len(props["classification"]["color"]) == 3
    assert props["measurements"]["area_um2"] == pytest.approx(
        props["measurements"]["area_px"] * 0.25
    )
    first = int(ann.instance_ids()[0])  # the image is known: intensities too
    assert props["measurements"]["mean_intensity_1"] == pytest.approx(
        image[..., 1][ann.labels == first].mean()
    )


def test_files_are_valid_for_geojson_and_shapely(tmp_path: Path) -> None:
    geojson = pytest.importorskip("geojson")
    shapely_geometry = pytest.importorskip("shapely.geometry")
    _, ann = _prediction()
    (path,) = write_annotations([ann], tmp_path, to="geojson")
    collection = geojson.loads(path.read_text())
    assert collection.is_valid, collection.errors()
    shapes = [shapely_geometry.shape(f["geometry"]) for f in collection["features"]]
    assert all(s.is_valid for s in shapes)
    areas = [s.area for s in shapes[:-1]]  # instances: polygon area == pixel count
    pixels = np.bincount(ann.labels.ravel())[ann.instance_ids()]
    np.testing.assert_allclose(areas, pixels)


def test_predictions_are_detections_and_corrections_annotations(tmp_path: Path) -> None:
    _, ann = _prediction()
    (path,) = write_annotations([ann], tmp_path / "x.geojson", to="geojson")
    kinds = {
        f["properties"]["cellquant"]["origin"]: f["properties"]["objectType"]
        for f in json.loads(path.read_text())["features"]
        if not f["properties"]["cellquant"].get("box")
    }
    assert kinds == {"model": "detection", "edited": "annotation"}


def test_refuses_to_overwrite_and_names_bad_files(tmp_path: Path) -> None:
    _, ann = _prediction()
    write_annotations([ann], tmp_path, to="geojson")
    with pytest.raises(OutputExistsError):
        write_annotations([ann], tmp_path, to="geojson")
    bad = tmp_path / "bad.geojson"
    bad.write_text(
        '{"type": "FeatureCollection", "features": [{"type": "Feature", '
        '"geometry": {"type": "Polygon", "coordinates": [[["a", 1]]]}}]}'
    )
    with pytest.raises(InputError, match=r"bad\.geojson.*feature 1"):
        read_geojson(bad)
    unknown = tmp_path / "unknown.geojson"
    unknown.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "geometry": {"type": "Polygon", "coordinates": [_square(1, 1, 3)]},
                        "properties": {"classification": {"name": "Tumor"}},
                    }
                ],
            }
        )
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError, match="'Tumor' is not in class set 'blood3'"):
            read_geojson(unknown, class_set=get_class_set("blood3"))
    (json_file := tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(InputError, match=r"neither COCO.*nor GeoJSON"):
        detect_kind(json_file)

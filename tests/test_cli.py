"""`cellquant convert` and `cellquant models` driven exactly as a user types them."""

import csv
import json

import numpy as np
import pytest
import tifffile

from napari_cellquant.cli import main
from napari_cellquant.core.annotation import Annotation
from napari_cellquant.core.classes import BLOOD10
from napari_cellquant.core.io import read_annotations, write_annotations


def _blood_annotation(name="smear.png", seed=0) -> Annotation:
    rng = np.random.default_rng(seed)
    labels = np.zeros((64, 80), dtype=np.int32)
    classes = {}
    for i in range(1, 13):
        r, c = rng.integers(0, 56), rng.integers(0, 72)
        labels[r : r + rng.integers(2, 9), c : c + rng.integers(2, 9)] = i
        classes[i] = int(rng.integers(1, 10))
    present = {int(i) for i in np.unique(labels) if i}
    return Annotation(
        labels, BLOOD10, classes={k: v for k, v in classes.items() if k in present}, image_name=name
    )


def _same(a: Annotation, b: Annotation) -> None:
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.classes == b.classes


def test_convert_coco_to_masks_and_back(tmp_path, capsys):
    original = [_blood_annotation("a.png", 1), _blood_annotation("b.png", 2)]
    write_annotations(original, tmp_path / "in.json", to="coco", encoding="rle")
    assert (
        main(["convert", str(tmp_path / "in.json"), str(tmp_path / "masks"), "--to", "masks"]) == 0
    )
    assert (tmp_path / "masks" / "a_instances.tif").is_file()
    assert (tmp_path / "masks" / "b_classes.tif").is_file()
    assert tifffile.imread(tmp_path / "masks" / "a_instances.tif").dtype == np.uint16
    assert (
        main(
            [
                "convert",
                str(tmp_path / "masks"),
                str(tmp_path / "out.json"),
                "--to",
                "coco",
                "--rle",
            ]
        )
        == 0
    )
    back = read_annotations(tmp_path / "out.json")
    assert [a.image_name.split(".")[0] for a in back] == ["a", "b"]
    for a, b in zip(original, back):
        _same(a, b)


def test_convert_counts_csv_lists_every_class(tmp_path):
    write_annotations([_blood_annotation()], tmp_path / "in.json", to="coco", encoding="rle")
    assert (
        main(["convert", str(tmp_path / "in.json"), str(tmp_path / "counts.csv"), "--to", "csv"])
        == 0
    )
    with open(tmp_path / "counts.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == list(BLOOD10.names)
    assert sum(int(r["count"]) for r in rows) == len(_blood_annotation().instance_ids())


def test_existing_output_is_not_overwritten_without_flag(tmp_path, capsys):
    write_annotations([_blood_annotation()], tmp_path / "in.json", to="coco", encoding="rle")
    target = tmp_path / "out.json"
    target.write_text("precious")
    assert main(["convert", str(tmp_path / "in.json"), str(target), "--to", "coco"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert target.read_text() == "precious"
    assert (
        main(["convert", str(tmp_path / "in.json"), str(target), "--to", "coco", "--overwrite"])
        == 0
    )
    assert json.loads(target.read_text())["categories"][0]["name"] == "eosinophil"


def test_colour_map_needs_classes_and_then_reads(tmp_path, capsys):
    from skimage.io import imsave

    class_map = np.zeros((60, 60), dtype=np.int32)
    class_map[5:25, 5:25] = BLOOD10.id_of("healthy_rbc")
    class_map[35:55, 30:55] = BLOOD10.id_of("monocyte")
    imsave(tmp_path / "map.png", BLOOD10.encode_colors(class_map), check_contrast=False)
    assert main(["convert", str(tmp_path / "map.png"), str(tmp_path / "c.csv"), "--to", "csv"]) == 1
    assert "--classes" in capsys.readouterr().err
    assert (
        main(
            [
                "convert",
                str(tmp_path / "map.png"),
                str(tmp_path / "c.csv"),
                "--to",
                "csv",
                "--classes",
                "blood10",
            ]
        )
        == 0
    )
    counts = {r["class"]: int(r["count"]) for r in csv.DictReader(open(tmp_path / "c.csv"))}
    assert counts["healthy_rbc"] == 1 and counts["monocyte"] == 1 and counts["basophil"] == 0


def test_from_forces_the_kind(tmp_path, capsys):
    write_annotations([_blood_annotation()], tmp_path / "in.json", to="coco", encoding="rle")
    assert (
        main(
            [
                "convert",
                str(tmp_path / "in.json"),
                str(tmp_path / "x"),
                "--to",
                "voc",
                "--from",
                "voc",
            ]
        )
        == 1
    )
    assert "in.json" in capsys.readouterr().err


def test_usage_errors_exit_2(tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["convert", str(tmp_path), str(tmp_path / "o"), "--to", "pdf"])
    assert exc.value.code == 2


def test_missing_source_names_the_path(tmp_path, capsys):
    assert (
        main(["convert", str(tmp_path / "nope.json"), str(tmp_path / "o.json"), "--to", "coco"])
        == 1
    )
    assert "nope.json: no such file or folder" in capsys.readouterr().err


@pytest.mark.shared_data
def test_net_voc_folder_to_coco_keeps_boxes(shared_data, tmp_path, capsys):
    net = shared_data / "net_fluorescence"
    assert (
        main(
            [
                "convert",
                str(net / "voc"),
                str(tmp_path / "net.json"),
                "--to",
                "coco",
                "--images",
                str(net / "images"),
            ]
        )
        == 0
    )
    assert "1920" in capsys.readouterr().err  # the size mismatch is reported, not hidden
    from_voc = read_annotations(tmp_path / "net.json", images_dir=net / "images")
    from_coco = read_annotations(net / "coco.json", images_dir=net / "images")
    assert sum(len(a.boxes) for a in from_voc) == 43
    by_name = {a.image_name: a for a in from_coco}
    for ann in from_voc:
        ref = by_name[ann.image_name]
        order_a = np.lexsort(ann.boxes.xywh.T)
        order_b = np.lexsort(ref.boxes.xywh.T)
        np.testing.assert_allclose(ann.boxes.xywh[order_a], ref.boxes.xywh[order_b], atol=1.0)
        assert ann.boxes.class_ids[order_a].tolist() == ref.boxes.class_ids[order_b].tolist()


def test_models_lists_every_model_with_task_classes_scale_and_weights(capsys):
    from napari_cellquant.core.models.registry import builtin_cards

    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["name", "kind", "task", "classes"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == set(builtin_cards())
    expected = {
        "blood-classical": ("blood3", "none"),
        "blood-unet": ("blood10", "bundled"),
        "fluo-classical": ("cell", "none"),
        "fluo-resunet": ("cell", "bundled"),
        "net-classical": ("net4", "none"),
        "net-detector": ("net4", "none"),
        "net-centernet": ("net4", "missing"),
        "net-area": ("net-area", "bundled"),
    }
    for name, (class_set, weights) in expected.items():
        words = rows[name].split()
        assert class_set in words and weights in words, rows[name]
    assert "rbc 38" in rows["blood-unet"] and "nucleus 28" in rows["net-detector"]
    # a red cell is 7.5 um: the blood models' own pixel size follows from their RBC diameter
    assert f"{7.5 / 38:.3g}" in rows["blood-unet"].split()
    assert "-" in rows["net-detector"].split()


def test_predict_uses_the_weights_file_it_is_given(tmp_path, capsys):
    """--weights replaces the bundled weights: a copy whose class head calls every pixel
    background finds nothing where the bundled weights find the smear's cells."""
    import torch
    from skimage.io import imsave

    from napari_cellquant.core.models.registry import get_card, resolve_weights
    from napari_cellquant.core.synthetic import synthetic_blood_smear

    pixels, _ = synthetic_blood_smear(shape=(160, 160), seed=3, rbc_radius=19)
    folder = tmp_path / "in"
    folder.mkdir()
    imsave(folder / "smear.png", pixels, check_contrast=False)
    state = torch.load(resolve_weights(get_card("blood-unet")), weights_only=True)
    state = dict(state.get("state_dict", state))
    state["heads.classes.weight"] = torch.zeros_like(state["heads.classes.weight"])
    state["heads.classes.bias"] = torch.tensor([50.0] + [0.0] * 9)  # background everywhere
    blank = tmp_path / "blank.pt"
    torch.save(state, blank)

    def found(out: str, *extra: str) -> int:
        assert (
            main(
                [
                    "predict",
                    str(folder),
                    "-m",
                    "blood-unet",
                    "-o",
                    str(tmp_path / out),
                    "--diameter",
                    "38",
                    "--device",
                    "cpu",
                    *extra,
                ]
            )
            == 0
        )
        return len(json.loads((tmp_path / out / "annotations.json").read_text())["annotations"])

    assert found("bundled") > 5
    assert found("blank", "--weights", str(blank)) == 0
    capsys.readouterr()
    # a weights file that does not exist is a usage error, named
    assert (
        main(
            [
                "predict",
                str(folder),
                "-m",
                "blood-unet",
                "-o",
                str(tmp_path / "x"),
                "--weights",
                str(tmp_path / "none.pt"),
            ]
        )
        == 2
    )
    assert "none.pt does not exist" in capsys.readouterr().err


def test_convert_bccd_voc_to_yolo_and_back_then_evaluate(tmp_path, capsys):
    from napari_cellquant.demo import BLOOD_PHOTO_BOXES

    yolo = tmp_path / "yolo"
    assert main(["convert", str(BLOOD_PHOTO_BOXES), str(yolo), "--to", "yolo"]) == 0
    assert (yolo / "images" / "BloodImage_00000.jpg").is_file()
    assert "names:\n- rbc\n- wbc\n- platelet" in (yolo / "data.yaml").read_text()
    assert (
        main(
            [
                "convert",
                str(yolo / "data.yaml"),
                str(tmp_path / "back.json"),
                "--to",
                "coco",
                "--from",
                "yolo",
            ]
        )
        == 0
    )
    (voc,) = read_annotations(BLOOD_PHOTO_BOXES)
    (back,) = read_annotations(tmp_path / "back.json")
    np.testing.assert_allclose(back.boxes.xywh, voc.boxes.xywh, atol=1e-6)
    np.testing.assert_array_equal(back.boxes.class_ids, voc.boxes.class_ids)
    capsys.readouterr()
    # BCCD's own VOC spelling (RBC, WBC, Platelets) scores as blood3, --classes blood3 too
    assert (
        main(
            [
                "evaluate",
                "--gt",
                str(BLOOD_PHOTO_BOXES),
                "--pred",
                str(yolo / "labels"),
                "--classes",
                "blood3",
            ]
        )
        == 0
    )
    scores = json.loads(capsys.readouterr().out)
    assert scores["class_set"] == "blood3"
    assert scores["boxes"]["ap50"] == pytest.approx(1.0)


def test_predict_net_area_reads_a_two_stain_tiff(shared_data, tmp_path):
    """A Coelho field as one channel-first TIFF (DNA, histone) and its DNA stain alone: both
    run, figures.csv gives each its NET share, near the expert's (33.7 % of this field), and
    the histone stain changes the result (it reached the network)."""
    import pandas as pd
    from skimage.io import imread

    stem = shared_data / "net_coelho2015" / "image_09_02"
    dna, histone = (imread(f"{stem}_{stain}.png") for stain in ("dna", "protein"))
    tifffile.imwrite(tmp_path / "both.tif", np.stack([dna, histone]))
    tifffile.imwrite(tmp_path / "dna.tif", dna)
    out = tmp_path / "out"
    argv = ["predict", str(tmp_path / "both.tif"), str(tmp_path / "dna.tif")]
    assert main([*argv, "-m", "net-area", "-o", str(out)]) == 0
    figures = pd.read_csv(out / "figures.csv")
    share = figures[figures["name"] == "field_share"].set_index("image")["value"]
    expert = 100 * (imread(f"{stem}_rois.png") > 0).mean()
    assert (abs(share - expert) < 10).all(), (share, expert)
    assert abs(share["both.tif"] - share["dna.tif"]) > 1, share


def test_predict_flip_views_is_a_setting_of_the_run(tmp_path, capsys):
    """--flip-views 1 runs fluo-resunet once per tile instead of its card's 4 views: a
    rerun with the same setting resumes, one without it is another run and is refused. A
    model with no maps to average refuses the option by name, before it touches the folder;
    `cellquant models` shows each card's views."""
    from skimage.draw import disk

    image = np.full((96, 96), 20, np.uint8)
    for center in [(25, 25), (25, 70), (70, 45)]:
        image[disk(center, 11, shape=image.shape)] = 200
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "nuclei.tif", image)
    out = tmp_path / "out"
    argv = ["predict", str(folder), "-m", "fluo-resunet", "-o", str(out), "--diameter", "22"]

    assert main([*argv, "--flip-views", "1"]) == 0
    assert "1 of 1 image(s) done" in capsys.readouterr().err
    assert len(json.loads((out / "annotations.json").read_text())["annotations"]) == 3
    assert main([*argv, "--flip-views", "1"]) == 0
    assert "already done before" in capsys.readouterr().err
    assert main(argv) == 1
    assert "holds a run with other settings" in capsys.readouterr().err

    refused = tmp_path / "refused"
    assert (
        main(
            [
                "predict",
                str(folder),
                "-m",
                "blood-detector",
                "-o",
                str(refused),
                "--flip-views",
                "2",
            ]
        )
        == 2
    )
    assert "blood-detector has no segmentation maps" in capsys.readouterr().err
    assert not refused.exists()

    assert main(["models"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    column = rows["name"].index("flip views")  # the columns are aligned
    views = {name: row[column:].split()[0] for name, row in rows.items()}
    assert views["fluo-resunet"] == "4" and views["blood-unet"] == "1"
    assert views["blood-detector"] == views["blood-classical"] == "-"

"""`cellquant predict` over folders: the files it writes and its exit status."""

import csv
import json

import numpy as np
import pytest
import tifffile
from skimage.io import imsave

from napari_cellquant.cli import main
from napari_cellquant.core.io import read_annotations
from napari_cellquant.core.synthetic import synthetic_blood_smear


@pytest.fixture
def smear_folder(tmp_path):
    folder = tmp_path / "smears"
    folder.mkdir()
    truth = {}
    for seed in (1, 2):
        pixels, annotation = synthetic_blood_smear(shape=(256, 320), seed=seed)
        imsave(folder / f"smear_{seed}.png", pixels, check_contrast=False)
        truth[f"smear_{seed}.png"] = annotation
    return folder, truth


def test_predict_writes_coco_counts_and_masks(smear_folder, tmp_path, capsys):
    folder, truth = smear_folder
    out = tmp_path / "out"
    assert main(["predict", str(folder), "-m", "blood-classical", "-o", str(out),
                 "--diameter", "34"]) == 0
    coco = json.loads((out / "annotations.json").read_text())
    assert [im["file_name"] for im in coco["images"]] == ["smear_1.png", "smear_2.png"]
    assert [c["name"] for c in coco["categories"]] == ["rbc", "wbc", "platelet"]
    assert coco["annotations"] and all(0 <= a["score"] <= 1 for a in coco["annotations"])
    rows = list(csv.DictReader(open(out / "counts.csv")))
    assert {(r["image"], r["class"]) for r in rows} == {
        (name, cls) for name in truth for cls in ("rbc", "wbc", "platelet")
    }
    for name, annotation in truth.items():
        stem = name.removesuffix(".png")
        instances = tifffile.imread(out / "masks" / f"{stem}_instances.tif")
        classes = tifffile.imread(out / "masks" / f"{stem}_classes.tif")
        assert instances.shape == classes.shape == annotation.shape
        counted = {r["class"]: int(r["count"]) for r in rows if r["image"] == name}
        true_rbc = sum(v for k, v in annotation.counts().items() if k.endswith("_rbc"))
        assert abs(counted["rbc"] - true_rbc) <= 0.15 * true_rbc
    # the masks folder and the COCO file describe the same objects
    from_masks = read_annotations(out / "masks")
    from_coco = read_annotations(out / "annotations.json")
    for a, b in zip(from_masks, from_coco, strict=True):
        np.testing.assert_array_equal(a.labels > 0, b.labels > 0)
        assert a.counts() == b.counts()


def test_a_corrupt_image_fails_alone_with_exit_3(smear_folder, tmp_path, capsys):
    folder, truth = smear_folder
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    out = tmp_path / "out"
    assert main(["predict", str(folder), "-m", "blood-classical", "-o", str(out)]) == 3
    err = capsys.readouterr().err
    assert "broken.png" in err and "error:" in err
    coco = json.loads((out / "annotations.json").read_text())
    assert sorted(im["file_name"] for im in coco["images"]) == sorted(truth)


@pytest.mark.parametrize(
    ("model", "message"),
    [("blood-unet", "has no trained weights yet"), ("no-such-model", "unknown model")],
)
def test_model_problems_are_usage_errors(smear_folder, tmp_path, capsys, model, message):
    folder, _ = smear_folder
    assert main(["predict", str(folder), "-m", model, "-o", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_no_images_is_a_usage_error(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "*.png"), "-m", "blood-classical",
                 "-o", str(tmp_path / "o")]) == 2
    assert "no such file, folder or matching pattern" in capsys.readouterr().err


def test_existing_outputs_are_kept_without_overwrite(smear_folder, tmp_path, capsys):
    folder, _ = smear_folder
    out = tmp_path / "out"
    assert main(["predict", str(folder), "-m", "blood-classical", "-o", str(out)]) == 0
    before = (out / "annotations.json").read_bytes()
    assert main(["predict", str(folder), "-m", "blood-classical", "-o", str(out)]) == 3
    assert "already exists" in capsys.readouterr().err
    assert (out / "annotations.json").read_bytes() == before

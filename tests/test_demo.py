"""The README's main job: `cellquant demo` on the bundled samples."""

import csv
import json

from napari_cellquant.cli import main
from napari_cellquant.core.io import read_annotations


def test_demo_writes_truth_and_predictions_that_agree(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", str(out)]) == 0
    net_truth = read_annotations(out / "net_fluorescence" / "truth" / "annotations.json")
    assert len(net_truth) == 1 and len(net_truth[0].boxes) == 16
    assert net_truth[0].image_path is not None and net_truth[0].image_path.is_file()
    coco = json.loads((out / "blood_smear" / "predictions" / "annotations.json").read_text())
    assert coco["images"][0]["file_name"] == "synthetic_blood_smear.png"
    rows = list(csv.DictReader(open(out / "comparison.csv")))
    net = {
        r["class"]: (int(r["truth"]), int(r["predicted"]))
        for r in rows
        if r["model"] == "net-classical"
    }
    true_share = net["NET"][0] / sum(t for t, _ in net.values())
    found_share = net["NET"][1] / sum(p for _, p in net.values())
    assert abs(true_share - found_share) <= 0.10  # NET % within 10 points
    blood = {
        r["class"]: (int(r["truth"]), int(r["predicted"]))
        for r in rows
        if r["model"] == "blood-classical"
    }
    assert abs(blood["rbc"][1] - blood["rbc"][0]) <= 0.1 * blood["rbc"][0]
    assert blood["wbc"][1] == blood["wbc"][0]
    photo = {
        r["class"]: (int(r["truth"]), int(r["predicted"]))
        for r in rows
        if r["model"] == "blood-detector"
    }
    assert photo["wbc"] == (1, 1)
    # BCCD boxed 19 of this photograph's RBCs and left some out: at least those are found
    assert photo["rbc"][0] == 19 and 17 <= photo["rbc"][1] <= 30
    # every sample's predictions get a report whose thumbnail opens the full-size overlay
    from skimage.io import imread

    for sample, image in (
        ("net_fluorescence", "K.Fiok3_1Per2h006_scale"),
        ("blood_photo", "BloodImage_00000"),
    ):
        page = (out / sample / "predictions" / "report.html").read_text()
        assert f'href="overlays/{image}.jpg"' in page
        overlay = imread(out / sample / "predictions" / "overlays" / f"{image}.jpg")
        original = imread(next((out / sample).glob(f"{image}.*")))
        assert overlay.shape[:2] == original.shape[:2]  # full size (under 2048 px)
        assert not (overlay == original[..., :3]).all()  # outlines drawn on it
    assert "NET" in (out / "net_fluorescence" / "predictions" / "report.html").read_text()


def test_demo_refuses_to_overwrite_then_overwrites_when_asked(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", str(out)]) == 0
    assert main(["demo", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["demo", str(out), "--overwrite"]) == 0

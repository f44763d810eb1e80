"""`cellquant predict` over folders: the files it writes and its exit status."""

import csv
import json

import numpy as np
import pytest
import tifffile
from batch_outputs import assert_same_outputs, snapshot
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
    assert (
        main(["predict", str(folder), "-m", "blood-classical", "-o", str(out), "--diameter", "34"])
        == 0
    )
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
        overlay = out / "overlays" / f"{stem}.jpg"  # what the report's thumbnail opens
        assert (
            overlay.is_file() and f'href="overlays/{stem}.jpg"' in (out / "report.html").read_text()
        )
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


@pytest.fixture
def card_without_weights(tmp_path):
    """A learned model's card that names no weights (a card shared before training)."""
    from napari_cellquant.core.models.card import WeightsSource
    from napari_cellquant.core.models.registry import get_card

    card = get_card("fluo-resunet")
    card.name, card.weights = "untrained", WeightsSource()
    return str(card.save(tmp_path / "untrained.json"))


@pytest.mark.parametrize(
    ("model", "message"),
    [("untrained", "has no trained weights yet"), ("no-such-model", "unknown model")],
)
def test_model_problems_are_usage_errors(
    smear_folder, tmp_path, capsys, model, message, card_without_weights
):
    folder, _ = smear_folder
    model = card_without_weights if model == "untrained" else model
    assert main(["predict", str(folder), "-m", model, "-o", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_no_images_is_a_usage_error(tmp_path, capsys):
    assert (
        main(
            ["predict", str(tmp_path / "*.png"), "-m", "blood-classical", "-o", str(tmp_path / "o")]
        )
        == 2
    )
    assert "no such file, folder or matching pattern" in capsys.readouterr().err


def test_a_rerun_resumes_and_leaves_complete_outputs_alone(smear_folder, tmp_path, capsys):
    folder, _ = smear_folder
    out = tmp_path / "out"
    assert main(["predict", str(folder), "-m", "blood-classical", "-o", str(out)]) == 0
    (out / ".notes.v1.tmp").write_text("a user's file that looks like a temporary")
    before = snapshot(out)
    masks_written = {p.name: p.stat().st_mtime_ns for p in (out / "masks").glob("*.tif")}
    capsys.readouterr()
    assert main(["predict", str(folder), "-m", "blood-classical", "-o", str(out)]) == 0
    assert "2 of 2 image(s) done (2 already done before)" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in (out / "masks").glob("*.tif")} == masks_written
    assert snapshot(out) == before


def test_files_not_from_a_run_are_kept_without_overwrite(smear_folder, tmp_path, capsys):
    folder, _ = smear_folder
    out = tmp_path / "out"
    out.mkdir()
    (out / "counts.csv").write_text("mine\n")
    assert main(["predict", str(folder), "-m", "blood-classical", "-o", str(out)]) == 1
    assert "counts.csv: already exists" in capsys.readouterr().err
    assert (out / "counts.csv").read_text() == "mine\n"
    assert sorted(p.name for p in out.iterdir()) == ["counts.csv"]  # nothing else written
    assert (
        main(["predict", str(folder), "-m", "blood-classical", "-o", str(out), "--overwrite"]) == 0
    )
    assert (out / "counts.csv").read_text().startswith("image,class,count")


def test_other_settings_are_refused_until_force_redoes_everything(smear_folder, tmp_path, capsys):
    folder, _ = smear_folder
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    assert main(["predict", str(folder), "-m", "blood-classical", "-o", str(out)]) == 0
    capsys.readouterr()
    assert (
        main(["predict", str(folder), "-m", "blood-classical", "-o", str(out), "--diameter", "20"])
        == 1
    )
    err = capsys.readouterr().err
    assert "other settings" in err and "--force" in err and "'diameter': None" in err
    assert (
        main(
            [
                "predict",
                str(folder),
                "-m",
                "blood-classical",
                "-o",
                str(out),
                "--diameter",
                "20",
                "--force",
            ]
        )
        == 0
    )
    assert "already done" not in capsys.readouterr().err
    assert (
        main(
            ["predict", str(folder), "-m", "blood-classical", "-o", str(fresh), "--diameter", "20"]
        )
        == 0
    )
    assert_same_outputs(out, fresh)


def test_force_redoes_complete_images(smear_folder, tmp_path, capsys):
    folder, _ = smear_folder
    out = tmp_path / "out"
    assert main(["predict", str(folder), "-m", "blood-classical", "-o", str(out)]) == 0
    before = snapshot(out)
    parts_written = {p.name: p.stat().st_mtime_ns for p in (out / "parts").iterdir()}
    capsys.readouterr()
    assert main(["predict", str(folder), "-m", "blood-classical", "-o", str(out), "--force"]) == 0
    err = capsys.readouterr().err
    assert "[1/2] smear_1.png" in err and "already done" not in err
    assert all(p.stat().st_mtime_ns != parts_written[p.name] for p in (out / "parts").iterdir())
    assert snapshot(out) == before


def test_merged_files_are_what_the_writers_write_for_the_same_annotations(smear_folder, tmp_path):
    """annotations.json and counts.csv rebuilt from the per-image parts equal write_coco /
    write_counts_csv over the in-memory results (scores, ids and all)."""
    from napari_cellquant.batch import collect_images, predict_images
    from napari_cellquant.core.io.coco import coco_dict
    from napari_cellquant.core.io.counts import write_counts_csv
    from napari_cellquant.core.io.images import read_image
    from napari_cellquant.core.predict import load_model, predict

    folder, _ = smear_folder
    model = load_model("blood-classical")
    images = collect_images([folder / "smear_2.png", folder / "smear_1.png"])
    result = predict_images(images, model, tmp_path / "out", diameter=30)
    assert [p.name for p in result.done] == ["smear_1.png", "smear_2.png"] and not result.failures
    direct = []
    for path in images:
        annotation = predict(read_image(path), model, diameter=30)
        annotation.image_name = path.name
        direct.append(annotation)
    expected = coco_dict(direct, encoding="rle")
    merged = json.loads((tmp_path / "out" / "annotations.json").read_text())
    assert merged["annotations"] and all("score" in a for a in merged["annotations"])
    for key in ("images", "annotations", "categories", "licenses"):
        assert merged[key] == expected[key], key
    write_counts_csv(direct, tmp_path / "direct.csv")
    assert (tmp_path / "out" / "counts.csv").read_bytes() == (tmp_path / "direct.csv").read_bytes()
    from_masks = read_annotations(tmp_path / "out" / "masks")
    for a, b in zip(from_masks, direct, strict=True):
        assert a.image_name == b.image_name
        np.testing.assert_array_equal(a.labels, b.labels)
        assert a.classes == b.classes


def test_failures_csv_lists_each_bad_image_with_its_error(smear_folder, tmp_path, capsys):
    folder, truth = smear_folder
    (folder / "truncated.png").write_bytes((folder / "smear_1.png").read_bytes()[:300])
    tifffile.imwrite(
        folder / "stack.tif",
        np.zeros((3, 40, 50), np.uint8),
        photometric="minisblack",
        metadata={"axes": "ZYX"},
    )
    (folder / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    assert main(["predict", str(folder), "-m", "blood-classical", "-o", str(out)]) == 3
    rows = list(csv.DictReader(open(out / "failures.csv")))
    assert [r["image"] for r in rows] == ["empty.jpg", "stack.tif", "truncated.png"]
    errors = {r["image"]: r["error"] for r in rows}
    assert "empty" in errors["empty.jpg"] and "stack of 3 z-planes" in errors["stack.tif"]
    assert "truncated" in errors["truncated.png"]
    assert all(r["path"] == str(folder / r["image"]) for r in rows)
    coco = json.loads((out / "annotations.json").read_text())
    assert [im["file_name"] for im in coco["images"]] == sorted(truth)
    assert "stack of 3 z-planes" in (out / "report.html").read_text()
    # the failed images have no partial outputs, and a rerun tries them again
    assert sorted(p.name for p in (out / "parts").iterdir()) == ["smear_1.json", "smear_2.json"]
    capsys.readouterr()
    assert main(["predict", str(folder), "-m", "blood-classical", "-o", str(out)]) == 3
    err = capsys.readouterr().err
    assert "[3/5] empty.jpg: failed" in err and "(2 already done before)" in err
    (folder / "empty.jpg").unlink()
    (folder / "stack.tif").unlink()
    (folder / "truncated.png").unlink()
    assert main(["predict", str(folder), "-m", "blood-classical", "-o", str(out)]) == 0
    assert list(csv.DictReader(open(out / "failures.csv"))) == []


def test_a_local_dask_cluster_writes_the_same_files(smear_folder, tmp_path, capsys):
    """Two worker processes on a real LocalCluster, against the in-process run."""
    pytest.importorskip("distributed")
    folder, _ = smear_folder
    # (an empty file: libpng's message for a corrupt one is not the same in every process)
    (folder / "broken.png").write_bytes(b"")
    local, cluster = tmp_path / "local", tmp_path / "cluster"
    assert main(["predict", str(folder), "-m", "blood-classical", "-o", str(local)]) == 3
    in_process = capsys.readouterr().err
    assert (
        main(
            ["predict", str(folder), "-m", "blood-classical", "-o", str(cluster), "--workers", "2"]
        )
        == 3
    )
    err = capsys.readouterr().err
    assert "broken.png: failed" in err
    # the diameter estimated for each image is reported the same whichever runs the work
    said = [line.split("diameter ")[1] for line in err.splitlines() if ", estimated" in line]
    assert len(said) == 2 and sorted(said) == sorted(
        line.split("diameter ")[1] for line in in_process.splitlines() if ", estimated" in line
    )
    assert all(s.endswith("px, estimated from the image") for s in said), said
    assert_same_outputs(local, cluster)
    coco = json.loads((cluster / "annotations.json").read_text())
    assert [(im["id"], im["file_name"]) for im in coco["images"]] == [
        (1, "smear_1.png"),
        (2, "smear_2.png"),
    ]


def test_workers_and_scheduler_are_usage_checked(smear_folder, tmp_path, capsys):
    folder, _ = smear_folder
    assert (
        main(
            [
                "predict",
                str(folder),
                "-m",
                "blood-classical",
                "-o",
                str(tmp_path / "o"),
                "--workers",
                "0",
            ]
        )
        == 2
    )
    assert "--workers must be 1 or more" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(
            [
                "predict",
                str(folder),
                "-m",
                "blood-classical",
                "-o",
                str(tmp_path / "o"),
                "--workers",
                "2",
                "--scheduler",
                "tcp://127.0.0.1:1",
            ]
        )
    assert "not allowed with argument" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_an_unreachable_scheduler_is_named(smear_folder, tmp_path, capsys, monkeypatch):
    pytest.importorskip("distributed")
    from napari_cellquant.batch import cluster

    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 2)
    folder, _ = smear_folder
    assert (
        main(
            [
                "predict",
                str(folder),
                "-m",
                "blood-classical",
                "-o",
                str(tmp_path / "o"),
                "--scheduler",
                "tcp://127.0.0.1:9",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "--scheduler tcp://127.0.0.1:9: cannot connect to the dask scheduler" in err


def test_scheduler_of_a_running_cluster_writes_the_same_files(smear_folder, tmp_path, capsys):
    """--scheduler ADDRESS against a running cluster of two worker processes."""
    distributed = pytest.importorskip("distributed")
    folder, _ = smear_folder
    local, remote = tmp_path / "local", tmp_path / "remote"
    assert main(["predict", str(folder), "-m", "blood-classical", "-o", str(local)]) == 0
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        scheduler_kwargs={"dashboard": False},
    ) as cluster:
        assert (
            main(
                [
                    "predict",
                    str(folder),
                    "-m",
                    "blood-classical",
                    "-o",
                    str(remote),
                    "--scheduler",
                    cluster.scheduler_address,
                ]
            )
            == 0
        )
        assert len(cluster.workers) == 2  # still running: the cluster is not ours to stop
    assert_same_outputs(local, remote)


class _Versions:
    """A client whose workers report package versions (for the check made before a run)."""

    def __init__(self, workers: dict[str, dict[str, str | None]]) -> None:
        self.workers = workers

    def wait_for_workers(self, n: int, timeout: float) -> None:
        assert self.workers

    def get_versions(self, packages: list[str]) -> dict:
        mine = {p: __import__(p).__version__ for p in packages}
        return {
            "client": {"packages": mine},
            "workers": {a: {"packages": {**mine, **v}} for a, v in self.workers.items()},
        }


def test_workers_without_the_same_package_versions_are_refused():
    from napari_cellquant.batch.cluster import _check_workers
    from napari_cellquant.core.errors import InputError

    _check_workers(_Versions({"tcp://a:1": {}, "tcp://b:1": {}}), "tcp://s:8786")
    with pytest.raises(InputError, match=r"worker tcp://b:1 has torch 1\.0"):
        _check_workers(_Versions({"tcp://a:1": {}, "tcp://b:1": {"torch": "1.0"}}), "tcp://s")
    with pytest.raises(InputError, match="napari_cellquant not installed"):
        _check_workers(_Versions({"tcp://a:1": {"napari_cellquant": None}}), "tcp://s")


def test_inputs_sharing_a_name_or_stem_are_refused(tmp_path, capsys):
    for sub, name in (("a", "x.png"), ("b", "x.tif"), ("c", "y.png"), ("d", "y.png")):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / name).write_bytes(b"")
    for inputs, what in (
        ([tmp_path / "a", tmp_path / "b"], "file stem 'x'"),
        ([tmp_path / "c", tmp_path / "d"], "file name 'y.png'"),
    ):
        assert (
            main(["predict", *map(str, inputs), "-m", "blood-classical", "-o", str(tmp_path / "o")])
            == 2
        )
        assert f"two inputs share the {what}" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_box_models_keep_their_boxes_and_scores_through_the_parts(smear_folder, tmp_path):
    """A CenterNet box model: boxes live only in the COCO entries, so the per-image parts must
    carry them (with scores) into the merged file and the counts."""
    from napari_cellquant.batch import collect_images, predict_images
    from napari_cellquant.core.io.coco import coco_dict
    from napari_cellquant.core.io.counts import write_counts_csv
    from napari_cellquant.core.io.images import read_image
    from napari_cellquant.core.predict import load_model, predict

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = load_model("net-centernet", "cpu", weights="random")
    model.card.postprocess = {**model.card.postprocess, "threshold": 0.0}  # random net: keep all
    folder, _ = smear_folder
    images = collect_images([folder])
    predict_images(images, model, tmp_path / "out", tile=128, diameter=30)
    direct = []
    for path in images:
        annotation = predict(read_image(path), model, tile=128, diameter=30)
        annotation.image_name = path.name
        direct.append(annotation)
    assert all(len(a.boxes) for a in direct)
    merged = json.loads((tmp_path / "out" / "annotations.json").read_text())
    expected = coco_dict(direct, encoding="rle")
    assert merged["annotations"] == expected["annotations"]
    assert all(a["attributes"]["box_only"] and "score" in a for a in merged["annotations"])
    write_counts_csv(direct, tmp_path / "direct.csv")
    assert (tmp_path / "out" / "counts.csv").read_bytes() == (tmp_path / "direct.csv").read_bytes()


def test_settings_are_checked_before_any_work_and_errors_name_the_flag(
    smear_folder, tmp_path, capsys
):
    folder, _ = smear_folder
    out = tmp_path / "out"
    assert (
        main(["predict", str(folder), "-m", "blood-classical", "-o", str(out), "--diameter", "-3"])
        == 2
    )
    assert "--diameter must be a positive number" in capsys.readouterr().err
    assert not out.exists()
    # 0 means "estimate it", as in Segment
    assert (
        main(["predict", str(folder), "-m", "blood-classical", "-o", str(out), "--diameter", "0"])
        == 0
    )
    assert "estimated" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "counts.csv").write_text("mine\n")
    assert (
        main(["predict", str(folder), "-m", "blood-classical", "-o", str(tmp_path / "mine")]) == 1
    )
    err = capsys.readouterr().err
    assert "--overwrite" in err and "overwrite=True" not in err


def test_a_grey_image_for_a_colour_model_fails_once_by_name(tmp_path, capsys):
    from skimage.io import imsave

    pixels, _ = synthetic_blood_smear(shape=(128, 128), seed=1)
    grey = tmp_path / "grey.png"
    imsave(grey, pixels[..., 1], check_contrast=False)
    assert main(["predict", str(grey), "-m", "blood-classical", "-o", str(tmp_path / "out")]) == 3
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if line.startswith("error:"))
    assert "stain's colours" in line and "RGB" in line
    assert line.count("grey.png") == 1


def test_figures_csv_holds_each_images_shares_from_core_quantify(smear_folder, tmp_path):
    """figures.csv: per image the figures core.quantify derives (shares of rbc / wbc /
    platelet here), the same values as quantify.figure_rows on the written annotations; the
    report shows figures per thumbnail."""
    from napari_cellquant.core.io.counts import FIGURE_COLUMNS
    from napari_cellquant.core.quantify import figure_rows

    folder, truth = smear_folder
    out = tmp_path / "out"
    assert (
        main(["predict", str(folder), "-m", "blood-classical", "-o", str(out), "--diameter", "34"])
        == 0
    )
    with open(out / "figures.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == FIGURE_COLUMNS
        rows = list(reader)
    assert {r["image"] for r in rows} == set(truth)
    assert {r["group"] for r in rows} == {"percent"}  # blood3: shares, no pixel size
    for annotation in read_annotations(out / "annotations.json"):
        expected = {r["name"]: r["value"] for r in figure_rows(annotation)}
        written = {
            r["name"]: float(r["value"]) for r in rows if r["image"] == annotation.image_name
        }
        assert written == pytest.approx(expected, rel=1e-5)  # written to 6 digits
        shares = [float(r["value"]) for r in rows if r["image"] == annotation.image_name]
        assert sum(shares) == pytest.approx(100.0, abs=0.01)


def test_report_shows_net_percent_and_net_area_per_image():
    from napari_cellquant.batch.report import ReportImage, report_html
    from napari_cellquant.core.classes import NET4

    image = ReportImage(
        name="a.png",
        counts={"NET": 1, "dead": 3},
        thumbnail=b"",
        width=4,
        height=4,
        figures=[
            ("net_percent", "NET", 25.0, "% of cells"),
            ("net_area", "field_share", 12.5, "% of field"),
            ("percent", "NET", 25.0, "%"),
        ],
    )
    page = report_html([image], [], NET4, title="t")
    assert "NET 25 % of cells" in page and "NET area 12.5 % of field" in page
    assert page.count("25 %") == 1  # plain shares stay in the summary table


def test_objects_csv_has_one_row_per_object_with_its_measurements(smear_folder, tmp_path):
    """objects.csv (core.measure over skimage's regionprops): every object of every image,
    its class, score, area equal to its mask's pixels, shape figures and the mean of each
    colour channel; it opens in pandas."""
    import pandas as pd
    from skimage.io import imread

    folder, _ = smear_folder
    out = tmp_path / "out"
    assert (
        main(["predict", str(folder), "-m", "blood-classical", "-o", str(out), "--diameter", "34"])
        == 0
    )
    table = pd.read_csv(out / "objects.csv")
    assert list(table.columns[:5]) == ["image", "id", "class", "score", "origin"]
    assert {"mean_intensity_0", "mean_intensity_2", "solidity"} <= set(table.columns)
    for annotation in read_annotations(out / "masks"):
        mine = table[table["image"] == annotation.image_name].set_index("id")
        ids = annotation.instance_ids()
        assert sorted(mine.index) == sorted(ids.tolist())
        areas = np.bincount(annotation.labels.ravel())
        assert (mine.loc[ids, "area_px"].to_numpy() == areas[ids]).all()
        pixels = imread(folder / annotation.image_name)
        first = int(ids[0])
        assert mine.loc[first, "mean_intensity_1"] == pytest.approx(
            pixels[annotation.labels == first][:, 1].mean(), rel=1e-4
        )
        assert set(mine["class"]) <= {"rbc", "wbc", "platelet"}
        assert mine["solidity"].between(0, 1).all()


def test_pixel_size_from_the_file_or_the_flag_gives_areas_and_densities(tmp_path):
    """An OME-TIFF's PhysicalSize and an ImageJ TIFF's calibration reach objects.csv (µm²) and
    figures.csv (per mm²); a PNG gets --pixel-size; a file's own size wins over the flag."""
    import pandas as pd

    folder = tmp_path / "smears"
    folder.mkdir()
    pixels, _ = synthetic_blood_smear(shape=(200, 250), seed=3)
    tifffile.imwrite(
        folder / "ome.ome.tif",
        pixels,
        ome=True,
        photometric="rgb",
        metadata={
            "axes": "YXS",
            "PhysicalSizeX": 0.2,
            "PhysicalSizeY": 0.2,
            "PhysicalSizeXUnit": "µm",
            "PhysicalSizeYUnit": "µm",
        },
    )
    tifffile.imwrite(
        folder / "ij.tif", pixels, imagej=True, resolution=(2.5, 2.5), metadata={"unit": "micron"}
    )  # 0.4 µm
    imsave(folder / "plain.png", pixels, check_contrast=False)
    out = tmp_path / "out"
    assert (
        main(
            [
                "predict",
                str(folder),
                "-m",
                "blood-classical",
                "-o",
                str(out),
                "--diameter",
                "34",
                "--pixel-size",
                "0.5",
            ]
        )
        == 0
    )
    objects = pd.read_csv(out / "objects.csv")
    figures = pd.read_csv(out / "figures.csv")
    for image, size in (("ome.ome.tif", 0.2), ("ij.tif", 0.4), ("plain.png", 0.5)):
        mine = objects[objects["image"] == image]
        np.testing.assert_allclose(mine["area_um2"], mine["area_px"] * size**2)
        density = figures[
            (figures["image"] == image)
            & (figures["group"] == "density")
            & (figures["name"] == "total")
        ]["value"].item()
        field_mm2 = 200 * 250 * size**2 / 1e6
        assert density == pytest.approx(len(mine) / field_mm2)


def test_bad_pixel_size_is_a_usage_error(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    imsave(folder / "a.png", np.zeros((32, 32, 3), np.uint8), check_contrast=False)
    assert (
        main(
            [
                "predict",
                str(folder),
                "-m",
                "blood-classical",
                "-o",
                str(tmp_path / "o"),
                "--pixel-size",
                "-1",
            ]
        )
        == 2
    )
    assert "--pixel-size must be a positive number" in capsys.readouterr().err

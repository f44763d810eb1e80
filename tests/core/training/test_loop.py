"""core.training.loop: training learns, fine-tunes, checkpoints, resumes and cancels, on tiny
networks (CPU); the CLI trains; the bundled models are what their cards say."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
from training_cases import (
    config,
    dense_card,
    detector_card,
    fluorescent_nuclei,
    foreground_iou,
)

from napari_cellquant.cli import main as cli_main
from napari_cellquant.core.annotation import Annotation, Boxes
from napari_cellquant.core.classes import BLOOD3, NET4
from napari_cellquant.core.errors import InputError, OutputExistsError
from napari_cellquant.core.models.registry import WeightsError
from napari_cellquant.core.predict import load_model, predict
from napari_cellquant.core.synthetic import synthetic_blood_smear
from napari_cellquant.core.training import (
    TrainingConfig,
    iter_train,
    output_paths,
    train,
)
from napari_cellquant.core.training.validation import match_boxes


def test_small_network_overfits_one_image(trained, smear):
    """60 seeded steps take a random tiny U-Net to foreground IoU >= 0.9 through predict()."""
    image, truth = smear
    assert trained.epochs_run == 12 and trained.score_name == "mean_iou"
    assert trained.history[-1]["loss"] < 0.6 * trained.history[0]["loss"]
    assert trained.history[0]["val_score"] < 0.5 <= 0.9 <= trained.score
    found = predict(image, load_model(trained.weights, "cpu"))
    assert foreground_iou(found, truth) >= 0.9


def test_card_records_training_and_loads(trained):
    card = json.loads(trained.card.read_text())
    assert card["weights"]["file"] == trained.weights.name
    assert len(card["weights"]["sha256"]) == 64
    assert card["training"]["images"] == ["smear.png"]
    assert card["training"]["settings"]["epochs"] == 12
    assert card["training"]["settings"]["contact_weight"] == 0.0
    assert card["training"]["objects"]["cell"] > 5
    assert card["metrics"]["validation"]["new"] == pytest.approx(trained.score)
    assert card["metrics"]["validation"]["epoch"] == trained.best_epoch
    state = torch.load(trained.weights, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert load_model(trained.card, "cpu").card.name == "cells"


def test_fine_tuning_starts_from_the_loaded_weights(trained, smear, tmp_path):
    """The first step's loss with the trained weights is far below the same step from scratch."""

    def first_loss(**changes) -> float:
        steps = iter_train(
            config(str(trained.weights), smear, tmp_path / "ft.pt", overwrite=True, **changes)
        )
        events = [next(steps), next(steps)]
        steps.close()
        assert events[0].phase == "start" and events[1].phase == "step"
        return events, events[1].loss

    (start, _), tuned = first_loss()
    _, scratch = first_loss(from_scratch=True)
    _, fresh = first_loss(from_imagenet=True)  # a tiny U-Net has no ImageNet encoder: random
    assert tuned < 0.6 * scratch and tuned < 0.6 * fresh
    assert tuned == pytest.approx(trained.history[-1]["loss"], abs=0.15)
    assert start.base_score == pytest.approx(trained.score, abs=0.02)


def test_worse_fine_tuning_is_reported(trained, smear, tmp_path):
    result = train(
        config(
            str(trained.weights), smear, tmp_path / "worse.pt", epochs=1, steps_per_epoch=2, lr=1.0
        )
    )
    assert result.base_score is not None and result.score < result.base_score
    assert any("worse than its base" in w for w in result.warnings)
    card = json.loads(result.card.read_text())
    assert card["metrics"]["validation"]["base"] == pytest.approx(result.base_score)


def test_a_bases_class_logit_bias_is_not_carried_to_new_weights(trained, smear, tmp_path):
    """The bias was calibrated for the base's weights: fine-tuned weights start without it."""
    card = json.loads(trained.card.read_text())
    card["name"], card["params"] = "biased", {"class_logit_bias": {"cell": -1.0}}
    card["weights"]["file"] = str(trained.weights)
    (tmp_path / "biased.json").write_text(json.dumps(card))
    base = load_model(tmp_path / "biased.json", "cpu")
    assert (
        base.network.heads.classes.bias[1] < load_model(trained.card).network.heads.classes.bias[1]
    )
    result = train(
        config(
            str(tmp_path / "biased.json"), smear, tmp_path / "ft.pt", epochs=1, steps_per_epoch=1
        )
    )
    assert "class_logit_bias" not in json.loads(result.card.read_text())["params"]


def test_cancel_stops_within_one_step_and_keeps_the_last_good_checkpoint(smear, tmp_path):
    card = dense_card(tmp_path)
    seen = []

    def cancel() -> bool:  # cancel at the first step of epoch 2
        return seen[-1].phase == "step" and seen[-1].epoch == 2

    result = train(
        config(card, smear, tmp_path / "c.pt", epochs=5), progress=seen.append, cancel=cancel
    )
    assert result.cancelled and result.epochs_run == 2
    assert seen[-1].phase == "step" and seen[-1].step == 4  # 3 steps of epoch 1, 1 of epoch 2
    assert result.weights is not None and result.best_epoch == 1
    saved = json.loads(result.card.read_text())
    assert saved["metrics"]["validation"]["epoch"] == 1
    load_model(result.weights, "cpu")  # sha256 in the card matches the file
    checkpoint = torch.load(result.checkpoint, weights_only=True)
    assert checkpoint["epoch"] == 1


def test_closing_the_generator_leaves_loadable_files(smear, tmp_path):
    card = dense_card(tmp_path)
    steps = iter_train(config(card, smear, tmp_path / "g.pt", epochs=3))
    events = []
    for event in steps:
        events.append(event)
        if event.phase == "epoch":
            break
    next(steps)  # one step into epoch 2, then close as thread_worker.quit() would
    steps.close()
    assert events[-1].checkpoint == tmp_path / "g.pt"
    load_model(tmp_path / "g.pt", "cpu")
    assert not list(tmp_path.glob(".*tmp*"))  # no half-written temporary files left


def test_resume_continues_the_epoch_count(smear, tmp_path):
    card = dense_card(tmp_path)
    first = train(config(card, smear, tmp_path / "r.pt", epochs=2))
    assert [h["epoch"] for h in first.history] == [1, 2]
    events = []
    second = train(
        config(card, smear, tmp_path / "r.pt", epochs=4, resume=True), progress=events.append
    )
    assert [h["epoch"] for h in second.history] == [1, 2, 3, 4]
    steps = [e for e in events if e.phase == "step"]
    assert steps[0].epoch == 3 and steps[0].step == 7 and steps[-1].step == 12
    assert second.epochs_run == 4


def test_ema_keeps_the_average_resumes_it_and_refuses_bad_decays(smear, tmp_path):
    """With ema_decay the saved weights are the moving average, not the last step's, and a
    resumed run carries the average on; without it a checkpoint cannot resume an EMA run."""
    card = dense_card(tmp_path)
    raw = train(config(card, smear, tmp_path / "raw.pt", epochs=2))
    ema = train(config(card, smear, tmp_path / "ema.pt", epochs=2, ema_decay=0.9))
    # same seed and steps: the trained weights are the same, what is saved is not
    trained = [
        torch.load(tmp_path / f"{n}.resume.pt", weights_only=False)["model"] for n in ("raw", "ema")
    ]
    assert all(torch.equal(trained[0][k], trained[1][k]) for k in trained[0])
    raw_w, ema_w = torch.load(raw.weights), torch.load(ema.weights)
    floats = [k for k in raw_w if raw_w[k].is_floating_point()]
    assert max(float((ema_w[k] - raw_w[k]).abs().max()) for k in floats) > 1e-4
    assert json.loads(ema.card.read_text())["training"]["settings"]["ema_decay"] == 0.9
    resumed = train(config(card, smear, tmp_path / "ema.pt", epochs=3, ema_decay=0.9, resume=True))
    assert resumed.epochs_run == 3
    with pytest.raises(InputError, match="without ema_decay"):
        train(config(card, smear, tmp_path / "raw.pt", epochs=3, ema_decay=0.9, resume=True))
    with pytest.raises(InputError, match="with ema_decay: resume it with"):
        train(config(card, smear, tmp_path / "ema.pt", epochs=4, resume=True))
    with pytest.raises(InputError, match="ema_decay must be between 0 and 1"):
        train(config(card, smear, tmp_path / "bad.pt", ema_decay=1.0))


def test_pipelines_are_refused_as_bases(smear, tmp_path):
    """net-detector classes a network's cells by rules: nothing in it trains."""
    with pytest.raises(InputError, match=r"net-detector is a classical pipeline.*net-centernet"):
        train(config("net-detector", smear, tmp_path / "n.pt"))
    assert not (tmp_path / "n.pt").exists()


def test_negative_contact_weight_is_refused(smear, tmp_path):
    card = dense_card(tmp_path)
    with pytest.raises(InputError, match="contact_weight must be 0 or more, got -1"):
        train(config(card, smear, tmp_path / "c.pt", contact_weight=-1.0))
    assert not (tmp_path / "c.pt").exists()


def test_ramped_ema_follows_its_formula():
    from napari_cellquant.core.training.loop import ramped_ema

    update = ramped_ema(0.9, ramp_steps=2.0)
    averaged, current = [torch.zeros(3)], [torch.ones(3)]
    update(averaged, current, torch.tensor(1))
    d = 0.9 * (1 - np.exp(-0.5))
    assert torch.allclose(averaged[0], torch.full((3,), 1 - d))
    counts = [torch.tensor(5)]
    update(counts, [torch.tensor(7)], torch.tensor(1))
    assert counts[0].item() == 7


def test_existing_output_is_not_overwritten(smear, tmp_path):
    card = dense_card(tmp_path)
    (tmp_path / "x.pt").write_bytes(b"mine")
    with pytest.raises(OutputExistsError):
        next(iter_train(config(card, smear, tmp_path / "x.pt")))
    assert (tmp_path / "x.pt").read_bytes() == b"mine"


def test_corrupt_checkpoint_is_a_clear_error(smear, tmp_path):
    card = dense_card(tmp_path)
    _, _, checkpoint = output_paths(tmp_path / "k.pt")
    checkpoint.write_bytes(b"\x80\x02not a checkpoint")
    with pytest.raises(WeightsError, match=r"k.resume.pt"):
        train(config(card, smear, tmp_path / "k.pt", resume=True))


def test_corrupt_base_weights_are_a_clear_error(smear, tmp_path):
    card = json.loads(open(dense_card(tmp_path)).read())
    card["weights"] = {"file": "broken.pt"}
    (tmp_path / "broken.pt").write_bytes(b"truncated")
    (tmp_path / "broken.json").write_text(json.dumps(card))
    with pytest.raises(WeightsError, match=r"broken.pt"):
        train(config(str(tmp_path / "broken.json"), smear, tmp_path / "n.pt"))


def test_resume_with_a_card_of_another_class_set_is_refused(smear, tmp_path):
    train(config(dense_card(tmp_path), smear, tmp_path / "s.pt", epochs=1))
    blood = dense_card(tmp_path, "blood3", 3, name="blood-tiny")
    image, cells = smear
    annotation = Annotation.from_labels(cells.labels, BLOOD3, class_id=1)
    with pytest.raises(InputError, match="class set 'cell'"):
        train(
            TrainingConfig(
                base=blood,
                images=[image],
                annotations=[annotation],
                output=tmp_path / "s.pt",
                epochs=2,
                crop=64,
                resume=True,
            )
        )


def test_weights_of_another_architecture_are_refused(trained, smear, tmp_path):
    card = json.loads(open(dense_card(tmp_path, "blood3", 3, name="other")).read())
    card["weights"] = {"file": str(trained.weights)}
    (tmp_path / "other.json").write_text(json.dumps(card))
    image, cells = smear
    annotation = Annotation.from_labels(cells.labels, BLOOD3, class_id=1)
    with pytest.raises(WeightsError, match="do not fit"):
        next(
            iter_train(
                TrainingConfig(
                    base=str(tmp_path / "other.json"),
                    images=[image],
                    annotations=[annotation],
                    output=tmp_path / "o.pt",
                )
            )
        )


def test_classes_that_do_not_map_name_themselves(smear, tmp_path):
    image, _ = smear
    boxes = Boxes([[10, 10, 20, 20]], [NET4.id_of("dead")])
    annotation = Annotation.empty((96, 96), NET4, boxes=boxes, image_name="net.png")
    with pytest.raises(InputError, match=r"dead.*blood10"):
        next(
            iter_train(
                TrainingConfig(
                    base=dense_card(tmp_path, "blood10", 9),
                    images=[image],
                    annotations=[annotation],
                    output=tmp_path / "m.pt",
                )
            )
        )


def test_centernet_detector_learns_the_boxes_of_one_image(tmp_path):
    image, truth = fluorescent_nuclei()
    result = train(
        TrainingConfig(
            base=detector_card(tmp_path),
            images=[image],
            annotations=[truth],
            output=tmp_path / "det.pt",
            epochs=10,
            steps_per_epoch=10,
            crop=64,
            batch_size=4,
            lr=3e-3,
            val_fraction=0.0,
            patience=None,
            scale_range=(0.9, 1.1),
        )
    )
    assert result.score_name == "f1@0.5" and result.score >= 0.9
    found = predict(image, load_model(result.weights, "cpu"))
    assert match_boxes(found.boxes, truth.boxes, 0.5) >= len(truth.boxes) - 1
    assert len(found.boxes) <= len(truth.boxes) + 1


def test_cli_train_writes_weights_and_card_that_predict_accepts(smear, tmp_path, capsys):
    image, annotation = smear
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    tifffile.imwrite(tmp_path / "images" / "smear.tif", image)
    tifffile.imwrite(tmp_path / "labels" / "smear.tif", annotation.labels.astype(np.uint16))
    out = tmp_path / "model" / "cells.pt"
    card = dense_card(tmp_path)
    code = cli_main(
        [
            "train",
            "--images",
            str(tmp_path / "images"),
            "--annotations",
            str(tmp_path / "labels"),
            "--model",
            card,
            "-o",
            str(out),
            "--epochs",
            "2",
            "--crop",
            "64",
            "--batch-size",
            "2",
            "--val-fraction",
            "0",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "epoch 2/2" in captured.err and "mean_iou" in captured.err
    assert captured.out.split() == [str(out), str(out.with_suffix(".json"))]
    model = load_model(out, "cpu")
    assert model.card.training["images"] == ["smear.tif"]
    code = cli_main(
        [
            "predict",
            str(tmp_path / "images" / "smear.tif"),
            "-m",
            str(out),
            "-o",
            str(tmp_path / "pred"),
        ]
    )
    assert code == 0
    assert (tmp_path / "pred" / "annotations.json").is_file()
    # a second run refuses to replace the model
    code = cli_main(
        [
            "train",
            "--images",
            str(tmp_path / "images"),
            "--annotations",
            str(tmp_path / "labels"),
            "--model",
            card,
            "-o",
            str(out),
        ]
    )
    assert code == 1 and "already exists" in capsys.readouterr().err


def test_bundled_blood_unet_is_small_measured_and_runs():
    from napari_cellquant.core.models.registry import BUNDLED_DIR, get_card, weights_status

    card = get_card("blood-unet")
    assert weights_status(card) == "bundled"
    weights = BUNDLED_DIR / card.weights.file
    assert weights.stat().st_size <= 10 * 2**20
    held_out = card.metrics["held_out"]
    assert held_out["scheme"] == "3-fold"
    assert 0.0 <= held_out["mean_iou"] <= 1.0
    assert card.metrics["per_fold"] and card.training["script"] == "scripts/train_bundled.py"
    model = load_model("blood-unet", "cpu")  # the sha256 in the card is checked here
    image, _ = synthetic_blood_smear((64, 64), seed=2)
    found = predict(image, model)
    assert found.class_set.name == card.class_set and found.shape == image.shape[:2]

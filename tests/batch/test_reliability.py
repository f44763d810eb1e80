"""Batch runs that survive faults: killed runs resume, out-of-memory recovers, full or
read-only disks are reported before work is lost and never leave a half-written file."""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import tifffile
import torch
from batch_outputs import assert_same_outputs
from skimage.io import imsave

from napari_cellquant.batch import collect_images, predict_images
from napari_cellquant.batch.outdir import RUN_FILES
from napari_cellquant.cli import main
from napari_cellquant.core.errors import OutputError
from napari_cellquant.core.io.images import read_image
from napari_cellquant.core.models.networks import build_network
from napari_cellquant.core.models.registry import get_card
from napari_cellquant.core.predict import Model, load_model
from napari_cellquant.core.synthetic import synthetic_blood_smear

N_IMAGES = 6


@pytest.fixture(scope="module")
def smears(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("smears")
    for seed in range(N_IMAGES):
        pixels, _ = synthetic_blood_smear(shape=(144, 176), seed=seed)
        imsave(folder / f"smear_{seed}.png", pixels, check_contrast=False)
    return folder


@pytest.fixture(scope="module")
def reference(smears, tmp_path_factory) -> Path:
    """An uninterrupted run, to compare every other run with."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert (
        main(["predict", str(smears), "-m", "blood-classical", "-o", str(out), "--diameter", "30"])
        == 0
    )
    return out


def _predict_command(smears: Path, out: Path) -> list[str]:
    return [str(smears), "-m", "blood-classical", "-o", str(out), "--diameter", "30"]


def _assert_every_file_is_whole(out: Path) -> None:
    """What a killed run leaves: every file that is not a hidden temporary reads in full."""
    for path in out.rglob("*"):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".tif":
            assert tifffile.imread(path).ndim == 2
        elif path.suffix == ".jpg":  # an overlay
            from skimage.io import imread

            assert imread(path).ndim == 3
        else:
            path.read_text()


# --- killed runs -----------------------------------------------------------------------------
_CRASH_AT_WRITE = """
import os, sys
crash_at, calls, real_replace = int(sys.argv[1]), [0], os.replace
def replace(src, dst):  # dies like SIGKILL: the temporary is written, the target not yet
    calls[0] += 1
    if calls[0] == crash_at:
        os._exit(137)
    return real_replace(src, dst)
os.replace = replace
from napari_cellquant.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _kill_after_images(smears: Path, out: Path, images: int | None, delay: float) -> None:
    """Start `cellquant predict` and SIGKILL it after ``images`` progress lines (or after
    ``delay`` seconds of running)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "napari_cellquant.cli", "predict", *_predict_command(smears, out)],
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    assert process.stderr is not None
    if images is None:
        time.sleep(delay)
    else:
        seen = 0
        for line in process.stderr:
            seen += line.startswith("[")
            if seen == images:
                break
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)


def test_runs_killed_at_random_points_resume_to_the_same_files(smears, reference, tmp_path):
    rng = random.Random(6)
    kills = [(1, 0.0), (4, 0.0), (None, rng.uniform(1.5, 5.0))]
    for i, (images, delay) in enumerate(kills):
        out = tmp_path / f"killed_{i}"
        _kill_after_images(smears, out, images, delay)
        _assert_every_file_is_whole(out)
        if images is not None:  # at least those images are complete and are not redone
            done = len(list((out / "parts").glob("*.json")))
            assert done >= images
        assert main(["predict", *_predict_command(smears, out)]) == 0
        assert_same_outputs(out, reference)


RENAMES_PER_IMAGE = 5


def test_runs_that_die_mid_write_resume_to_the_same_files(smears, reference, tmp_path, capsys):
    # 5 renames per image (2 masks, classes.json, overlay, part) after run.json; a few points
    rng = random.Random(5)
    for crash_at in sorted(rng.sample(range(2, RENAMES_PER_IMAGE * N_IMAGES + 2), 3)):
        out = tmp_path / f"crash_{crash_at}"
        run = subprocess.run(
            [
                sys.executable,
                "-c",
                _CRASH_AT_WRITE,
                str(crash_at),
                "predict",
                *_predict_command(smears, out),
            ],
            capture_output=True,
            text=True,
            env=_env(),
        )
        assert run.returncode == 137, run.stderr[-2000:]
        leftovers = [p for p in out.rglob(".*.tmp*")]
        assert leftovers  # the killed write left its temporary behind, as SIGKILL would
        _assert_every_file_is_whole(out)
        capsys.readouterr()
        assert main(["predict", *_predict_command(smears, out)]) == 0
        err = capsys.readouterr().err
        done_before = (crash_at - 2) // RENAMES_PER_IMAGE  # images whose part was renamed
        assert f"({done_before} already done before)" in err or done_before == 0
        assert_same_outputs(out, reference)  # temporaries are gone too


# --- out of memory ---------------------------------------------------------------------------
class OutOfMemoryAbove(torch.nn.Module):
    """Raises CUDA out-of-memory for batches or tiles above a limit, from the n-th call on."""

    def __init__(
        self,
        net: torch.nn.Module,
        *,
        max_batch: int = 10**9,
        max_tile: int = 10**9,
        after_calls: int = 0,
    ) -> None:
        super().__init__()
        self.net, self.max_batch, self.max_tile = net, max_batch, max_tile
        self.after_calls, self.calls, self.raised = after_calls, 0, 0
        for name in ("in_channels", "output_strides", "head_channels", "size_multiple"):
            if hasattr(net, name):
                setattr(self, name, getattr(net, name))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls += 1
        too_big = x.shape[0] > self.max_batch or max(x.shape[-2:]) > self.max_tile
        if self.calls > self.after_calls and too_big:
            self.raised += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8 GiB")
        return self.net(x)


@pytest.fixture(scope="module")
def tiny_unet_model() -> Model:
    card = get_card("blood-unet")
    card.architecture = {**card.architecture, "width": 4, "depth": 2}
    torch.manual_seed(0)
    network = build_network(card.architecture).eval()
    return Model(card=card, network=network, device=torch.device("cpu"))


@pytest.mark.parametrize("limit", [{"max_batch": 1}, {"max_tile": 32}])
def test_out_of_memory_mid_run_recovers_and_loses_no_image(
    smears, tmp_path, tiny_unet_model, caplog, limit
):
    images = collect_images([smears])
    expected = predict_images(images, tiny_unet_model, tmp_path / "ok", tile=64)
    assert len(expected.done) == N_IMAGES
    # from the second image on, batches above 1 (or tiles above 32) run out of memory
    flaky = OutOfMemoryAbove(tiny_unet_model.network, after_calls=3, **limit)
    model = Model(card=tiny_unet_model.card, network=flaky, device=torch.device("cpu"))
    with caplog.at_level(logging.WARNING):
        result = predict_images(images, model, tmp_path / "oom", tile=64)
    assert flaky.raised > 0 and not result.failures and len(result.done) == N_IMAGES
    assert ("batch size reduced" if "max_batch" in limit else "tile 64 -> 32") in caplog.text
    coco = json.loads((tmp_path / "oom" / "annotations.json").read_text())
    assert [im["file_name"] for im in coco["images"]] == [p.name for p in images]
    for path in images:
        stem = path.stem
        got = tifffile.imread(tmp_path / "oom" / "masks" / f"{stem}_instances.tif")
        want = tifffile.imread(tmp_path / "ok" / "masks" / f"{stem}_instances.tif")
        assert got.shape == want.shape == read_image(path).shape[:2]
        # Smaller batches give the same maps up to float rounding (a tie in the watershed
        # may move a pixel); smaller tiles blend differently near their seams only.
        differ = ((got > 0) != (want > 0)).mean()
        assert differ < (1e-3 if "max_batch" in limit else 1e-2)
        if "max_batch" in limit:
            assert (got != want).mean() < 1e-3


# --- full disk and read-only folders -------------------------------------------------------------
def _no_temporaries(out: Path) -> bool:
    return not [p for p in out.rglob("*") if ".tmp" in p.name or "probe" in p.name]


@pytest.mark.parametrize("where", ["mask", "part"])
def test_a_full_disk_mid_run_stops_cleanly_and_the_rerun_completes(
    smears, reference, tmp_path, monkeypatch, where
):
    from napari_cellquant.core.io import masks

    out = tmp_path / "out"
    real_imwrite, real_write_text = tifffile.imwrite, Path.write_text
    writes = {"mask": 0, "part": 0}

    def half_then_full(target: Path, data: bytes) -> None:
        Path(target).write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def imwrite(path, pixels, **kwargs):
        writes["mask"] += 1
        if where == "mask" and writes["mask"] == 5:  # image 3's instance mask
            import io

            buffer = io.BytesIO()
            real_imwrite(buffer, pixels, **kwargs)
            half_then_full(path, buffer.getvalue())
        return real_imwrite(path, pixels, **kwargs)

    def write_text(self: Path, text: str, *args, **kwargs):
        if self.parent.name == "parts":
            writes["part"] += 1
            if where == "part" and writes["part"] == 3:
                half_then_full(self, text.encode())
        return real_write_text(self, text, *args, **kwargs)

    monkeypatch.setattr(masks.tifffile, "imwrite", imwrite)
    monkeypatch.setattr(Path, "write_text", write_text)
    with pytest.raises(OutputError) as raised:
        main_args = _predict_command(smears, out)
        predict_images(
            collect_images([smears]),
            load_model("blood-classical"),
            out,
            diameter=float(main_args[-1]),
        )
    message = str(raised.value)
    folder = out / ("masks" if where == "mask" else "parts")
    assert str(folder) in message and "No space left on device" in message
    assert "2 image(s) finished before are complete" in message and "resume" in message
    assert _no_temporaries(out)  # no half-written file, under any name
    _assert_every_file_is_whole(out)
    assert sorted(p.name for p in (out / "parts").iterdir()) == ["smear_0.json", "smear_1.json"]
    assert not (out / "annotations.json").exists()
    monkeypatch.undo()
    assert main(["predict", *_predict_command(smears, out)]) == 0
    assert_same_outputs(out, reference)


def test_a_read_only_output_folder_is_refused_before_any_work(smears, tmp_path, monkeypatch):
    out = tmp_path / "read_only"
    out.mkdir()
    out.chmod(0o555)
    if os.geteuid() == 0:  # root writes through mode bits: make the probe see what a user sees
        real_mkstemp = tempfile.mkstemp

        def mkstemp(*args, dir=None, **kwargs):
            if dir is not None and Path(dir).is_relative_to(out):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
            return real_mkstemp(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    started = []
    try:
        with pytest.raises(OutputError, match="not writable") as raised:
            predict_images(
                collect_images([smears]),
                load_model("blood-classical"),
                out,
                on_image=lambda *a: started.append(a),
            )
    finally:
        out.chmod(0o755)
    assert str(out) in str(raised.value) and "nothing was run" in str(raised.value)
    assert started == [] and list(out.iterdir()) == []


def test_a_nearly_full_disk_is_refused_before_any_work(smears, tmp_path, monkeypatch, capsys):
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=2**20))  # 1 MiB left
    assert main(["predict", *_predict_command(smears, tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'out'}: only 1.0 MiB free" in err and "[1/" not in err
    assert not [n for n in RUN_FILES if (tmp_path / "out" / n).exists()]


def test_an_output_path_that_is_a_file_is_refused(smears, tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    assert main(["predict", *_predict_command(smears, tmp_path / "taken")]) == 1
    assert "taken: is a file, not an output folder" in capsys.readouterr().err
    assert (tmp_path / "taken").read_text() == "a file"

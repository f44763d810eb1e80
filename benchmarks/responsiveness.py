"""GUI responsiveness while the Segment widget runs blood-unet on a 4032 x 3024 smear.

Opens a real napari viewer (run it under Xvfb on a machine without a screen), adds a
synthetic Giemsa smear, opens Segment through the manifest as a user would, hands it
blood-unet with its bundled weights (``--random-weights``: untrained ones, which find far more
spurious objects; registered as an in-memory model), and presses Run while a ``QTimer`` ticks
every 10 ms on the GUI thread, twice (the second run replaces the first result in place, the
undoable path). For each run it prints the worst gap between ticks, split into the
inference (the network's tiles), the post-processing (maps to objects and layer data, still in
the worker thread) and the hand-over (the result becoming layers on the GUI thread), and the
run time.

Peer, measured in the same process: the same prediction through ``core.predict.predict``
called directly, with no GUI. Its run time is what a widget calling the model on the GUI
thread would freeze napari for (its worst gap), and the ratio of the two run times is what
the thread, the progress signals and the layer hand-over cost.

    xvfb-run -a python benchmarks/responsiveness.py [--shape 3024x4032] [--device cpu]
                                                    [--threads N] [--runs 2] [--no-peer]
                                                    [--model NAME] [--image PHOTO --zoom 4]

``--model blood-classical --image src/napari_cellquant/samples/BloodImage_00000.jpg --zoom 4``
is the photograph case: the bundled BCCD smear enlarged to 2560 x 1920, weight-free model.
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np

log = logging.getLogger("responsiveness")
TICK_MS = 10


def measure_widget(image: np.ndarray, model, *, tile: int, runs: int) -> list[dict]:
    """Run Segment ``runs`` times on ``image`` in a real viewer (the first run adds the result
    layer, later ones replace it); tick timestamps and phase boundaries of each run."""
    import napari
    from qtpy.QtCore import QEventLoop

    from napari_cellquant._widgets._models import user_models

    viewer = napari.Viewer()
    viewer.add_image(image, name="smear", rgb=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-cellquant", "Segment")
    user_models.register(model)  # selects it in the widget's model list
    widget.tile.value = tile
    # the card's own object size: zoom 1, the network sees all 12 megapixels (0 would estimate
    # the size from the image and resample it to the model's scale first)
    widget.diameter.value = float(model.card.typical_diameter or 0.0)
    loop = QEventLoop()
    for _ in range(20):  # let the window settle before measuring
        loop.processEvents()
        time.sleep(0.01)
    results = [_one_run(widget, loop) for _ in range(runs)]
    for result in results:
        result["objects"] = int(len(viewer.layers[f"smear {model.card.name} instances"].features))
    viewer.close()
    return results


def _one_run(widget, loop) -> dict:
    from qtpy.QtCore import Qt, QTimer

    ticks: list[float] = []
    marks: dict[str, float] = {}
    steps: list[tuple[int, int]] = []
    timer = QTimer()
    timer.setInterval(TICK_MS)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))

    def on_step(step: tuple[int, int]) -> None:
        steps.append(step)
        marks["last_step"] = time.perf_counter()

    worker = widget.run()
    worker.yielded.connect(on_step)
    # runs in the worker thread the moment the result exists (post-processing done) ...
    worker.returned.connect(
        lambda _: marks.setdefault("computed", time.perf_counter()),
        Qt.ConnectionType.DirectConnection,
    )
    # ... and this on the GUI thread after the widget's own handler has shown the layers
    worker.returned.connect(lambda _: marks.setdefault("shown", time.perf_counter()))
    worker.finished.connect(loop.quit)
    marks["start"] = time.perf_counter()
    timer.start()
    loop.exec()
    timer.stop()
    marks["end"] = time.perf_counter()
    return {"ticks": np.asarray(ticks), "marks": marks, "steps": steps}


def worst_gap_ms(ticks: np.ndarray, start: float, end: float) -> float:
    """Longest wait between consecutive ticks (or the phase edges) inside [start, end]."""
    inside = ticks[(ticks >= start) & (ticks <= end)]
    edges = np.concatenate([[start], inside, [end]])
    return float(np.diff(edges).max() * 1000)


def report_run(title: str, result: dict) -> float:
    """Print one run's figures; returns its run time in seconds."""
    ticks, marks = result["ticks"], result["marks"]
    run_s = marks["end"] - marks["start"]
    inference_end = marks.get("last_step", marks["end"])
    computed = marks.get("computed", inference_end)
    shown = marks.get("shown", marks["end"])
    gaps = np.diff(ticks) * 1000 if len(ticks) > 1 else np.array([run_s * 1000])
    print(f"\n{title}")
    print(
        f"  run time (Run pressed -> layers shown): {run_s:8.2f} s, "
        f"{len(result['steps'])} progress steps, {result['objects']} objects"
    )
    print(
        f"  ticks: {len(ticks)} (ideal {run_s * 1000 / TICK_MS:.0f}); gap median "
        f"{np.median(gaps):.1f} ms, p99 {np.percentile(gaps, 99):.1f} ms"
    )
    print(
        f"  worst gap during inference (start -> last step):    "
        f"{worst_gap_ms(ticks, marks['start'], inference_end):8.1f} ms"
    )
    print(
        f"  worst gap during post-processing (worker thread):   "
        f"{worst_gap_ms(ticks, inference_end, computed):8.1f} ms "
        f"({computed - inference_end:.2f} s)"
    )
    print(
        f"  worst gap during hand-over (result -> layers shown): "
        f"{worst_gap_ms(ticks, computed, shown):8.1f} ms ({shown - computed:.2f} s)"
    )
    print(
        f"  worst gap overall:                                   "
        f"{worst_gap_ms(ticks, marks['start'], marks['end']):8.1f} ms"
    )
    return run_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="3024x4032", help="rows x columns (default 3024x4032)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument(
        "--runs",
        type=int,
        default=2,
        help="widget runs; the first adds the layer, later ones replace it",
    )
    parser.add_argument("--no-peer", action="store_true", help="skip the GUI-less peer run")
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="untrained blood-unet instead of the bundled weights",
    )
    parser.add_argument("--model", default="blood-unet", help="any model of the registry")
    parser.add_argument("--image", help="a photograph instead of the synthetic smear")
    parser.add_argument(
        "--zoom",
        type=float,
        default=1.0,
        help="enlarge the photograph (a phone photo's megapixels)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch

    from napari_cellquant.core.predict import load_model, predict
    from napari_cellquant.core.synthetic import synthetic_blood_smear

    if args.threads:
        torch.set_num_threads(args.threads)
    made = time.perf_counter()
    if args.image:
        from napari_cellquant.core.io.images import read_image
        from napari_cellquant.core.predict import _resize

        image = _resize(read_image(args.image)[..., :3], args.zoom)
        rows, cols = image.shape[:2]
    else:
        rows, cols = (int(v) for v in args.shape.lower().split("x"))
        image, _ = synthetic_blood_smear(shape=(rows, cols), seed=0)
    made = time.perf_counter() - made
    torch.manual_seed(0)  # the same random network, hence the same objects, every time
    model = load_model(args.model, args.device, weights="random" if args.random_weights else None)
    weights = "random" if args.random_weights else "bundled"
    print(
        f"{args.model} ({weights} weights) on a {cols} x {rows} RGB "
        f"{'photograph' if args.image else 'smear'}, tile {args.tile}, device {model.device}, "
        f"torch threads {torch.get_num_threads()} (image made in {made:.1f} s)"
    )

    results = measure_widget(image, model, tile=args.tile, runs=args.runs)
    titles = [
        "Segment widget, first run (adds the result layer), "
        f"{TICK_MS} ms QTimer on the GUI thread:",
        "Segment widget, run again (replaces the result undoably):",
    ]
    run_times = [report_run(titles[min(i, 1)], r) for i, r in enumerate(results)]

    if args.no_peer:
        return
    started = time.perf_counter()
    peer = predict(image, model, tile=args.tile, diameter=model.card.typical_diameter)
    peer_s = time.perf_counter() - started
    print(
        f"\nPeer: core.predict.predict called directly, no GUI: {peer_s:8.2f} s, "
        f"{len(peer.instance_ids())} objects"
    )
    print(f"  (called on the GUI thread it would freeze napari for all {peer_s * 1000:.0f} ms)")
    print(
        "  ratio widget / direct run time: "
        + ", ".join(f"run {i + 1} {t / peer_s:.2f}" for i, t in enumerate(run_times))
    )


if __name__ == "__main__":
    main()

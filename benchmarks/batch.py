"""Batch throughput: `cellquant predict` in-process vs a local dask cluster of 1 and 2 workers.

Writes 40 synthetic blood smears of 1024 x 768 (``core.synthetic``) to a temporary folder and
runs :func:`napari_cellquant.batch.predict_images` over them three ways, each into a fresh
output folder: in this process (the plain sequential loop, the peer every figure is compared
with), then on a LocalCluster of 1 and of 2 worker processes (one thread each). It prints
images per minute for each, the speed-up over the in-process run measured in the same run,
and the cluster start-up time (included in the cluster figures, as a user sees it). It also
checks that the three runs wrote the same masks.

    python benchmarks/batch.py [--images 40] [--model blood-classical] [--weights random]
                               [--workers 1 2] [--diameter 34]

The default model is the weight-free ``blood-classical`` pipeline; ``--model blood-unet
--weights random`` measures a learned network (random weights, same cost as trained ones).
Needs the ``cluster`` extra (dask.distributed).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPE = (768, 1024)  # rows, columns


def make_images(folder: Path, count: int) -> list[Path]:
    from skimage.io import imsave

    from napari_cellquant.core.synthetic import synthetic_blood_smear

    paths = []
    for seed in range(count):
        pixels, _ = synthetic_blood_smear(shape=SHAPE, seed=seed)
        path = folder / f"smear_{seed:03d}.png"
        imsave(path, pixels, check_contrast=False)
        paths.append(path)
    return paths


def timed_run(
    images: list[Path], spec, out: Path, workers: int, diameter: float | None, loaded=None
) -> float:
    from napari_cellquant.batch import predict_images

    start = time.perf_counter()
    result = predict_images(images, spec, out, diameter=diameter, workers=workers, loaded=loaded)
    elapsed = time.perf_counter() - start
    if result.failures:
        raise SystemExit(f"{len(result.failures)} image(s) failed: {result.failures[0]}")
    return elapsed


def cluster_start_seconds(workers: int) -> float:
    from napari_cellquant.batch.cluster import dask_client

    start = time.perf_counter()
    with dask_client(workers=workers):
        started = time.perf_counter() - start
    return started


def same_masks(a: Path, b: Path) -> bool:
    import tifffile

    names = sorted(p.name for p in (a / "masks").glob("*.tif"))
    if names != sorted(p.name for p in (b / "masks").glob("*.tif")):
        return False
    return all(
        np.array_equal(tifffile.imread(a / "masks" / n), tifffile.imread(b / "masks" / n))
        for n in names
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--model", default="blood-classical")
    parser.add_argument("--weights", help="'random' for a learned model without weights")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--diameter",
        type=float,
        default=34.0,
        help="RBC diameter of the synthetic smears, in pixels",
    )
    args = parser.parse_args()

    from napari_cellquant.batch import ModelSpec
    from napari_cellquant.core.predict import load_model

    spec = ModelSpec(args.model, "cpu", args.weights)
    print(f"machine: {os.cpu_count()} CPU(s) (shared with other work: figures are indicative)")
    print(
        f"model: {args.model}{' (random weights)' if args.weights == 'random' else ''}; "
        f"{args.images} images of {SHAPE[1]} x {SHAPE[0]}"
    )
    with tempfile.TemporaryDirectory(prefix="cellquant-bench-") as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        t0 = time.perf_counter()
        images = make_images(root / "images", args.images)
        print(f"wrote the images in {time.perf_counter() - t0:.1f} s")

        seconds = {
            0: timed_run(
                images,
                spec,
                root / "out_0",
                0,
                args.diameter,
                loaded=load_model(args.model, "cpu", weights=args.weights),
            )
        }
        for workers in args.workers:
            seconds[workers] = timed_run(
                images, spec, root / f"out_{workers}", workers, args.diameter
            )
        starts = {w: cluster_start_seconds(w) for w in args.workers}
        identical = all(same_masks(root / "out_0", root / f"out_{w}") for w in args.workers)

    base = args.images / seconds[0] * 60
    print(f"{'run':<26}{'seconds':>9}{'images/min':>12}{'speed-up':>10}")
    print(f"{'in-process (peer)':<26}{seconds[0]:>9.1f}{base:>12.1f}{1.0:>10.2f}")
    for workers in args.workers:
        rate = args.images / seconds[workers] * 60
        label = f"LocalCluster {workers} worker{'s' if workers > 1 else ''}"
        print(f"{label:<26}{seconds[workers]:>9.1f}{rate:>12.1f}{rate / base:>10.2f}")
    print(
        "cluster start-up (included above): "
        + ", ".join(f"{w} worker(s) {s:.1f} s" for w, s in starts.items())
    )
    print(f"masks identical across the runs: {identical}")


if __name__ == "__main__":
    main()

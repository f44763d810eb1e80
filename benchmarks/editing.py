"""Cost of a correction and of a count on a 4032 x 3024 Labels layer with ~2000 objects.

Opens a real napari viewer (run under Xvfb on a machine without a screen), adds a Labels layer
of 2000 discs (radius 20, blood10 classes) built through ``_layers.annotation_to_layer_data``,
opens Correct and Count through the manifest, and times, on the GUI thread:

- Correct's merge, split (distance watershed), delete and set-class: the whole edit as a user
  gets it (core operation on the object's box, ``data_setitem`` into napari's undo history,
  features, colours, correction log) and napari's ``undo`` of it;
- Count's refresh (gather layers + one ``bincount`` + table + chart).

It also times the pure core operations (``core.editing`` on the objects' boxes, no napari).

Peers, measured in the same run:

- Correct's delete vs napari's own bucket erase (``Labels.fill(coord, 0)``) of one object:
  the cost napari itself pays for an edit of that size on this display (it includes finding
  a pixel of the object, a full-image comparison, small beside napari's refresh);
- core merge / delete vs the same edit done the naive way, scanning the whole image
  (``labels[np.isin(labels, ids)] = target``);
- Count's refresh vs ``Annotation.counts()`` on the same objects (``np.unique``).

    xvfb-run -a python benchmarks/editing.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

SHAPE = (3024, 4032)


def smear_labels(n: int = 2000, radius: int = 20) -> np.ndarray:
    """``n`` discs on a grid, neighbours in a row touching pairwise (so splits have work)."""
    labels = np.zeros(SHAPE, dtype=np.int32)
    rr, cc = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disc = rr**2 + cc**2 <= radius**2
    k = 0
    for r in range(radius + 5, SHAPE[0] - radius - 5, 66):
        for c in range(radius + 5, SHAPE[1] - radius - 5, 88):
            if k >= n:
                return labels
            k += 1
            labels[r - radius : r + radius + 1, c - radius : c + radius + 1][disc] = k
    return labels


def timed(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import napari

    from napari_cellquant._layers import annotation_to_layer_data
    from napari_cellquant.core.annotation import Annotation
    from napari_cellquant.core.classes import BLOOD10

    labels = smear_labels()
    n = int(labels.max())
    rng = np.random.default_rng(0)
    classes = {i: int(c) for i, c in zip(range(1, n + 1), rng.integers(1, 10, n), strict=True)}
    ann = Annotation(labels, BLOOD10, classes, image_name="bench.png")
    viewer = napari.Viewer(show=False)
    ((data, kwargs, _),) = annotation_to_layer_data(ann.copy())
    layer = viewer.add_labels(data, **kwargs)
    _, correct = viewer.window.add_plugin_dock_widget("napari-cellquant", "Correct")
    _, count = viewer.window.add_plugin_dock_widget("napari-cellquant", "Count")
    count.live.setChecked(False)  # time the count on its own

    # merges take neighbouring discs pairwise; splits undo such a merge by distance watershed
    pair = {"next": 1}

    def merge_once():
        i = pair["next"]
        pair["next"] += 2
        correct.merge([i, i + 1])

    def split_once():
        i = pair["next"] - 2  # the object the last merge made: two discs, a watershed apart
        correct.split(i)

    def delete_once():
        correct.delete([int(rng.integers(1000, n))])

    def reclass_once():
        correct.set_class("monocyte", label_id=int(rng.integers(1000, 1500)))

    results = {}
    for name, fn in (
        ("merge", merge_once),
        ("split", split_once),
        ("delete", delete_once),
        ("set class", reclass_once),
    ):
        if name == "split":
            pair["next"] = 201  # merge fresh pairs, then split each back
            splits = []
            for _ in range(args.rounds):
                merge_once()
                t = time.perf_counter()
                split_once()
                splits.append(time.perf_counter() - t)
            results[name] = statistics.median(splits) * 1000
        else:
            results[name] = timed(fn, args.rounds)
    results["undo"] = timed(layer.undo, args.rounds)
    results["count refresh"] = timed(count.refresh, args.rounds)

    naive = np.asarray(layer.data).copy()

    def naive_merge():
        naive[np.isin(naive, [1500, 1501])] = 1500

    def naive_delete():
        naive[naive == 1600] = 0

    # the pure core operations on the objects' boxes, without napari (what the widget adds
    # on top is data_setitem, napari's refresh, features, colours and the log)
    from napari_cellquant.core import editing

    core_labels = np.asarray(layer.data).copy()
    index = editing.ObjectIndex(core_labels)
    core_classes = correct.editor.classes()
    results["core merge"] = timed(
        lambda: editing.merge(core_labels, [1801, 1802], core_classes, index=index), args.rounds
    )
    merged = editing.merge(core_labels, [1801, 1802], core_classes, index=index)
    merged.apply(core_labels)
    index.update(merged.indices, merged.values)
    results["core split"] = timed(
        lambda: editing.split(core_labels, 1801, core_classes, index=index), args.rounds
    )
    results["core delete"] = timed(
        lambda: editing.delete(core_labels, [1900], core_classes, index=index), args.rounds
    )

    victims = iter(range(1700, 1700 + args.rounds))

    def napari_erase():
        # napari's own bucket erase of one whole object: the same pixels a delete writes
        target = next(victims)
        rows, cols = np.nonzero(np.asarray(layer.data)[:, :] == target)
        layer.fill((rows[0], cols[0]), 0)

    results["napari fill-erase"] = timed(napari_erase, args.rounds)
    napari_erase_ms = results.pop("napari fill-erase")
    peers = {  # result name -> (peer name, peer ms)
        "core merge": ("naive full-scan merge", timed(naive_merge, args.rounds)),
        "core delete": ("naive full-scan delete", timed(naive_delete, args.rounds)),
        "delete": ("napari's own fill-erase", napari_erase_ms),
        "count refresh": ("Annotation.counts()", timed(ann.counts, args.rounds)),
    }
    print(f"Labels layer {SHAPE[1]} x {SHAPE[0]}, {n} objects, median of {args.rounds} rounds")
    for name, ms in results.items():
        line = f"  {name:14s} {ms:8.1f} ms"
        if name in peers:
            peer_name, peer_ms = peers[name]
            line += f"   peer {peer_name}: {peer_ms:7.1f} ms   ratio {ms / peer_ms:.3f}"
        print(line)
    viewer.close()


if __name__ == "__main__":
    main()

"""Take the README's screenshots of each dock widget in use, in a real napari window.

Run it under a virtual display so the pictures do not depend on anyone's desktop:

    xvfb-run -a -s "-screen 0 1920x1080x24" python scripts/screenshots.py [--out docs/screenshots]

It opens the synthetic blood smear through the manifest (``open_sample``), then opens every
dock widget the manifest lists, in the order of the workflow (Segment, Correct, Count,
Export, Train; widgets not yet in the manifest are skipped), does one step with each as a
user would (segment the smear, remove small objects, count, export to COCO, train two short
epochs) and saves the whole window, dock widget included, as ``<out>/<widget>.png``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PLUGIN = "napari-cellquant"
WORKFLOW = ("Segment", "Correct", "Count", "Export", "Train")
SMEAR = "synthetic_blood_smear"
DOCK_WIDTH = 520  # pixels: room for the widgets and for the smear beside them
RBC_DIAMETER = 34.0  # the synthetic smear's red cells (radius 17 px)
log = logging.getLogger("screenshots")


def settle(seconds: float = 0.5) -> None:
    """Let Qt draw and deliver queued signals for a while."""
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def wait_until(done: Callable[[], bool], timeout: float = 300.0) -> None:
    """Process events until ``done()`` (or the timeout, which is logged, not raised)."""
    end = time.perf_counter() + timeout
    while not done():
        if time.perf_counter() > end:
            log.warning("gave up waiting after %.0f s", timeout)
            return
        settle(0.05)
    settle()


RESULT = f"{SMEAR} blood-classical instances"  # Segment's result beside the sample's truth


def use_segment(viewer: Any, widget: Any, out: Path) -> None:
    viewer.layers.remove(f"{SMEAR} instances")  # the sample's truth: let the model find them
    widget.image.value = viewer.layers[SMEAR]
    widget.model.value = "blood-classical"
    widget.diameter.value = RBC_DIAMETER
    widget.run()
    wait_until(lambda: not widget.busy)


def use_correct(viewer: Any, widget: Any, out: Path) -> None:
    viewer.layers.selection.active = viewer.layers[RESULT]
    settle()
    if hasattr(widget, "remove_small"):
        widget.remove_small(150)  # specks below 150 px go, as one undo step


def use_count(viewer: Any, widget: Any, out: Path) -> None:
    if hasattr(widget, "refresh"):
        widget.refresh()
    wait_until(lambda: not getattr(widget, "busy", False), timeout=30)


def use_export(viewer: Any, widget: Any, out: Path) -> None:
    folder = Path(tempfile.mkdtemp(prefix="cellquant-shots-"))
    widget.layers.value = [viewer.layers[RESULT]]  # the corrected result
    widget.format.value = "coco"
    widget.destination.value = folder / "smear.json"
    widget.run()
    wait_until(lambda: not widget.busy)


def use_train(viewer: Any, widget: Any, out: Path) -> None:
    """Two short epochs on the corrected smear, so the picture shows a loss curve."""
    folder = Path(tempfile.mkdtemp(prefix="cellquant-shots-"))
    from napari_cellquant._sample_data import synthetic_blood_smear

    # blood-unet learns the 10 blood classes: train on the sample's truth (hidden), which has
    # them, rather than on the 3-class result of blood-classical
    (data, kwargs, _) = synthetic_blood_smear()[1]
    viewer.add_labels(data, **{**kwargs, "name": f"{SMEAR} truth", "visible": False})
    widget.reset_choices()
    widget.layers.value = [viewer.layers[f"{SMEAR} truth"]]
    widget.epochs.value = 2
    widget.crop.value = 128
    widget.output.value = folder / "smear-unet.pt"
    widget.run()
    wait_until(lambda: not widget.busy, timeout=600)


USES: dict[str, Callable[[Any, Any, Path], None]] = {
    "Segment": use_segment,
    "Correct": use_correct,
    "Count": use_count,
    "Export": use_export,
    "Train": use_train,
}


def listed_widgets() -> list[str]:
    """Display names of the plugin's dock widgets, in workflow order."""
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution(PLUGIN)
    listed = {w.display_name for w in manifest.contributions.widgets or []}
    return [name for name in WORKFLOW if name in listed]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import napari
    from qtpy.QtCore import Qt

    args.out.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(title="napari-cellquant")
    viewer.window.resize(1800, 1000)
    viewer.open_sample(PLUGIN, SMEAR)
    viewer.reset_view()
    settle(1.0)
    taken = []
    for name in listed_widgets():
        dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        width = max(DOCK_WIDTH, dock.widget().sizeHint().width())  # never clipped
        dock.parent().resizeDocks([dock], [width], Qt.Orientation.Horizontal)
        settle()
        viewer.reset_view()  # the canvas changed size with the dock
        try:
            USES[name](viewer, widget, args.out)
        except Exception:  # a picture of the widget as it is beats no picture
            log.exception("%s: using the widget failed; taking the picture anyway", name)
        settle(1.0)
        path = args.out / f"{name.lower()}.png"
        viewer.screenshot(str(path), canvas_only=False, flash=False)
        taken.append(path)
        log.info("%s -> %s", name, path)
        viewer.window.remove_dock_widget(dock)
    viewer.close()
    log.info("took %d screenshots: %s", len(taken), ", ".join(p.name for p in taken))


if __name__ == "__main__":
    main()

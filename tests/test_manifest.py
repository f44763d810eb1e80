"""The npe2 manifest: valid, lazy, and claiming only what the plugin really reads."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from npe2 import PluginManager, PluginManifest

PLUGIN = "napari-cellquant"


@pytest.fixture(scope="module")
def manifest() -> PluginManifest:
    return PluginManifest.from_distribution(PLUGIN)


@pytest.fixture(scope="module")
def pm() -> PluginManager:
    manager = PluginManager.instance()
    manager.discover()  # napari does this when a viewer starts; these tests need no viewer
    return manager


def test_npe2_validate_passes_with_imports():
    npe2 = shutil.which("npe2", path=str(Path(sys.executable).parent))
    assert npe2 is not None
    result = subprocess.run(
        [npe2, "validate", PLUGIN, "--imports"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


def test_commands_point_at_submodules_and_resolve(manifest):
    assert manifest.name == PLUGIN and manifest.display_name == "CellQuant"
    commands = manifest.contributions.commands
    assert commands
    for command in commands:
        assert command.id.startswith(f"{PLUGIN}.")
        module = command.python_name.split(":")[0]
        assert module.startswith("napari_cellquant.") and module != "napari_cellquant"
        assert callable(_resolve(command.python_name))


def _resolve(python_name: str):
    import importlib

    module, _, attr = python_name.partition(":")
    return getattr(importlib.import_module(module), attr)


def test_contributions_are_the_documented_ones(manifest):
    contributions = manifest.contributions
    (reader,) = contributions.readers
    assert reader.accepts_directories
    assert {
        "*.json",
        "*.geojson",
        "*.zip",
        "*.ome.tif",
        "*.xml",
        "*.yaml",
        "*_instances.tif",
    } <= set(reader.filename_patterns)
    extensions = {w.command.rsplit(".", 1)[1]: w.filename_extensions for w in contributions.writers}
    assert extensions == {
        "write_coco": [".json"],
        "write_voc": [".xml"],
        "write_label_tiff": [".tif", ".tiff"],
        "write_counts_csv": [".csv"],
        "write_geojson": [".geojson"],
        "write_roiset": [".zip"],
    }
    keys = {s.key for s in contributions.sample_data}
    assert keys == {"net_fluorescence", "blood_smear_photo", "synthetic_blood_smear"}


@pytest.mark.parametrize(
    ("layer_types", "extension", "command"),
    [
        (["labels"], ".json", "write_coco"),
        (["image", "labels", "shapes"], ".json", "write_coco"),
        (["shapes"], ".json", "write_coco"),
        (["shapes"], ".xml", "write_voc"),
        (["image", "labels"], ".xml", "write_voc"),
        (["labels"], ".tif", "write_label_tiff"),
        (["labels", "shapes"], ".csv", "write_counts_csv"),
    ],
)
def test_writers_match_the_layer_combinations(pm, layer_types, extension, command):
    writer, _ = pm.get_writer(f"out{extension}", layer_types=layer_types, plugin_name=PLUGIN)
    assert writer is not None and writer.command == f"{PLUGIN}.{command}"


def test_image_only_selection_gets_no_cellquant_writer(pm):
    for extension in (".json", ".xml", ".tif", ".csv"):
        writer, _ = pm.get_writer(f"out{extension}", layer_types=["image"], plugin_name=PLUGIN)
        assert writer is None, extension


def test_plain_images_stay_with_napari_builtins(pm, make_napari_viewer, tmp_path):
    """Claiming every *.tif would make napari ask which reader to use for each image."""
    path = tmp_path / "micrograph.tif"
    tifffile.imwrite(path, np.arange(64, dtype=np.uint16).reshape(8, 8))
    assert PLUGIN not in {r.plugin_name for r in pm.iter_compatible_readers([str(path)])}
    viewer = make_napari_viewer()
    (layer,) = viewer.open(path)  # no plugin= and no "choose a reader" error
    assert layer._type_string == "image"
    labels_path = tmp_path / "micrograph_instances.tif"
    assert PLUGIN in {r.plugin_name for r in pm.iter_compatible_readers([str(labels_path)])}


def test_every_widget_in_the_manifest_opens(manifest, make_napari_viewer):
    """Each dock widget opens from the Plugins menu entry as a user would, with no layers."""
    names = [widget.display_name for widget in manifest.contributions.widgets or []]
    assert {"Segment", "Export"} <= set(names)
    viewer = make_napari_viewer()
    for name in names:
        dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        assert widget is not None, name
        assert name in dock.name

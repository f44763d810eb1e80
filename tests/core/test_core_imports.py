"""core/ and the layer helpers import with napari, Qt, magicgui (and pandas for core) blocked."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

GUI_MODULES = ("napari", "qtpy", "magicgui", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy")


def _import_blocked(modules: list[str], blocked: tuple[str, ...]) -> dict:
    """Import ``modules`` (and every submodule of packages among them) in a fresh interpreter
    where each ``blocked`` name is ``None`` in ``sys.modules``, so importing it fails."""
    code = textwrap.dedent(
        f"""
        import importlib, json, pkgutil, sys
        for name in {list(blocked)!r}:
            sys.modules[name] = None
        done, failed = [], {{}}
        todo = {modules!r}
        while todo:
            name = todo.pop(0)
            try:
                module = importlib.import_module(name)
            except Exception as exc:
                failed[name] = repr(exc)
                continue
            done.append(name)
            if hasattr(module, "__path__") and name.startswith("napari_cellquant.core"):
                todo += [m.name for m in pkgutil.iter_modules(module.__path__, name + ".")]
        leaked = sorted(b for b in {list(blocked)!r} if sys.modules.get(b) is not None)
        print(json.dumps({{"done": done, "failed": failed, "leaked": leaked}}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=240, check=False
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_core_imports_without_gui_or_pandas():
    report = _import_blocked(["napari_cellquant.core"], (*GUI_MODULES, "pandas"))
    assert report["failed"] == {}
    assert report["leaked"] == []
    # the walk really reached the io modules and the class sets
    assert {"napari_cellquant.core.io", "napari_cellquant.core.classes"} <= set(report["done"])
    assert "napari_cellquant.core.synthetic" in report["done"]


def test_package_and_layer_helpers_import_without_gui():
    report = _import_blocked(
        [
            "napari_cellquant",
            "napari_cellquant._layers",
            "napari_cellquant._reader",
            "napari_cellquant._writer",
            "napari_cellquant._sample_data",
        ],
        GUI_MODULES,
    )
    assert report["failed"] == {}

"""napari-cellquant: segment, correct, count and export cells and NETs.

Importing the package is cheap and pulls in neither Qt nor torch; the public API below is
loaded on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Annotation": "napari_cellquant.core.annotation",
    "Boxes": "napari_cellquant.core.annotation",
    "ClassSet": "napari_cellquant.core.classes",
    "get_class_set": "napari_cellquant.core.classes",
    "read_annotations": "napari_cellquant.core.io",
    "write_annotations": "napari_cellquant.core.io",
    "read_image": "napari_cellquant.core.io.images",
    "load_model": "napari_cellquant.core.predict",
    "predict": "napari_cellquant.core.predict",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'napari_cellquant' has no attribute {name!r}")

"""Which images a batch run works on: files, folders and glob patterns, sorted by file name."""

from __future__ import annotations

import glob
from collections.abc import Iterable
from pathlib import Path

from ..core.errors import InputError


def collect_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Image files named by ``inputs`` (files, folders, or glob patterns), sorted by file name.

    Outputs are keyed by file name (COCO ``file_name``, ``counts.csv``) and by stem (the mask
    files), so two inputs that share either are refused before anything runs.

    Raises
    ------
    InputError
        A pattern matches nothing, no image is found, or two images share a name or stem.
    """
    from ..core.io.images import IMAGE_SUFFIXES

    inputs = list(inputs)
    found: dict[Path, None] = {}
    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            matches = [p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        elif path.exists():
            matches = [path]
        else:
            matches = [Path(p) for p in glob.glob(text)]
            if not matches:
                raise InputError("no such file, folder or matching pattern", source=path)
        for match in matches:
            if match.is_file() and not match.name.startswith("."):
                found[match] = None
    images = sorted(found, key=lambda p: (p.name, str(p)))
    if not images:
        raise InputError("no images found in " + ", ".join(map(str, inputs)))
    for key, what in ((lambda p: p.name, "file name"), (lambda p: p.stem, "file stem")):
        keys = [key(p) for p in images]
        seen: set[str] = set()
        repeated = [k for k in keys if k in seen or seen.add(k)]
        if repeated:
            raise InputError(
                f"two inputs share the {what} {repeated[0]!r}; outputs are "
                f"keyed by {what}, so give each image a unique name"
            )
    return images

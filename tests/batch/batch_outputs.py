"""Helpers for the batch tests: read a whole output folder into something comparable."""

from __future__ import annotations

import json
from pathlib import Path


def snapshot(out: Path) -> dict[str, bytes | dict]:
    """Every file under ``out`` (hidden ones too), by relative path.

    Files are compared byte for byte, except two things that must differ between two runs:
    ``annotations.json``'s ``info.date_created`` (parsed, and the date dropped) and the output
    folder's own path, which report.html names (replaced by ``OUTDIR``).
    """
    files: dict[str, bytes | dict] = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        key = path.relative_to(out).as_posix()
        data = path.read_bytes()
        if key == "annotations.json":
            parsed = json.loads(data)
            parsed["info"].pop("date_created")
            files[key] = parsed
        else:
            files[key] = data.replace(str(out).encode(), b"OUTDIR")
    return files


def assert_same_outputs(a: Path, b: Path) -> None:
    """The two output folders hold the same files with the same contents."""
    first, second = snapshot(a), snapshot(b)
    assert sorted(first) == sorted(second)
    for key in first:
        assert first[key] == second[key], f"{key} differs"

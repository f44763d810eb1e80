"""The output folder of a batch run: what is in it, what is complete, and the merged files.

Layout::

    OUTDIR/run.json                    the run's model and settings (what makes a rerun a resume)
    OUTDIR/masks/<stem>_instances.tif  per image, as `cellquant convert --to masks` writes them
    OUTDIR/masks/<stem>_classes.tif
    OUTDIR/masks/classes.json
    OUTDIR/overlays/<stem>.jpg         per image, its objects outlined on the image (long
                                       side at most 2048 px): what a report thumbnail opens
    OUTDIR/parts/<stem>.json           per image: its COCO (RLE, scores), counts and thumbnail;
                                       written last, so it is the image's completion record
    OUTDIR/annotations.json            merged COCO, rebuilt from parts/ at the end
    OUTDIR/counts.csv                  image,class,count, rebuilt from parts/ at the end
    OUTDIR/objects.csv                 one row per object: class, score, centroid, area, shape,
                                       mean intensity per channel (core.measure)
    OUTDIR/figures.csv                 image,group,name,value,unit: the figures derived from
                                       the counts (shares, NET %, NET area, differential),
                                       from core.quantify, rebuilt from parts/ at the end
    OUTDIR/failures.csv                image,path,error (header only when nothing failed)
    OUTDIR/report.html                 thumbnails, counts, summary table and chart

Every file is written atomically (a temporary file, then a rename), so each file is complete
or absent; an image counts as done only when its part file exists, belongs to this run's
settings and its mask files are there with the sizes it records. An image without that is
done again by the next run, which therefore ends with the same files as an uninterrupted one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.classes import ClassSet
from ..core.errors import OutputError, OutputExistsError
from ..core.io.atomic import atomic_path, write_text_atomic
from .work import ImageResult

log = logging.getLogger(__name__)

RUN_RECORD = "run.json"
MASKS_DIR = "masks"
OVERLAYS_DIR = "overlays"
PARTS_DIR = "parts"
ANNOTATIONS = "annotations.json"
COUNTS = "counts.csv"
FIGURES = "figures.csv"
OBJECTS = "objects.csv"
FAILURES = "failures.csv"
REPORT = "report.html"
#: Everything a run writes at the top of its folder.
RUN_FILES = (
    RUN_RECORD,
    ANNOTATIONS,
    COUNTS,
    FIGURES,
    OBJECTS,
    FAILURES,
    REPORT,
    MASKS_DIR,
    OVERLAYS_DIR,
    PARTS_DIR,
)
FAILURE_COLUMNS = ("image", "path", "error")
#: Version of the part-file layout; a part of another version is done again.
PART_FORMAT = 1
#: Below this much free space a run is refused before any work (it would fail part way).
MIN_FREE_BYTES = 16 * 2**20
_PROBE_PREFIX = ".cellquant-probe-"
# atomic_path's temporaries (".<name>.<random>.tmp<suffix>") and our write probes: a killed
# run can leave them behind.
_TEMPORARY = re.compile(r"^\.(?P<target>.+)\.[A-Za-z0-9_]+\.tmp(\.[A-Za-z0-9]+)?$")


class RunMismatchError(OutputExistsError):
    """The output folder holds a run with other settings; it is not resumed nor replaced."""

    def __init__(self, folder: Path, differences: Sequence[str]) -> None:
        super().__init__(folder)
        self.args = (
            f"{folder}: holds a run with other settings ({'; '.join(differences)}); pass "
            "--force to redo every image with the new settings, or choose another folder",
        )


def run_record(
    model_name: str, card: dict[str, Any], weights: str | None, settings: dict[str, Any]
) -> dict[str, Any]:
    """What a run's results depend on; a rerun with an equal record resumes."""
    from .. import __version__

    return {
        "batch_format": PART_FORMAT,
        "package_version": __version__,
        "model": model_name,
        "weights": weights,
        "settings": settings,
        "card": card,
    }


def _digest(record: dict[str, Any]) -> str:
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _record_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = [k for k in new if old.get(k) != new.get(k)]
    keys += [k for k in old if k not in new]
    described = []
    for key in keys:
        if key == "card":
            described.append("the model card differs")
        else:
            described.append(f"{key} {old.get(key)!r} -> {new.get(key)!r}")
    return described or ["unreadable run record"]


class OutputFolder:
    """A batch run's output folder; :meth:`open` checks it before any work is done."""

    def __init__(self, root: Path, record: dict[str, Any]) -> None:
        self.root = Path(root)
        self.record = record
        self.run_id = _digest(record)
        self.masks = self.root / MASKS_DIR
        self.overlays = self.root / OVERLAYS_DIR
        self.parts = self.root / PARTS_DIR

    # --- opening ---------------------------------------------------------------------------
    @classmethod
    def open(
        cls, root: Path, record: dict[str, Any], *, force: bool = False, overwrite: bool = False
    ) -> tuple[OutputFolder, bool]:
        """Check ``root`` and make it ready; returns the folder and whether it resumes.

        - a new or empty folder (or one with unrelated files only): a fresh run;
        - a folder holding a run with the same record: resumed (redone with ``force``);
        - a run with another record: refused, unless ``force`` or ``overwrite``, which
          discard its per-image results and start afresh;
        - a folder holding our file names without a run record (another tool's output):
          refused with :class:`OutputExistsError` unless ``force`` or ``overwrite``.

        Raises
        ------
        OutputError
            The folder cannot be created or written, or its disk is (nearly) full.
        OutputExistsError
            As above; nothing in the folder has been changed.
        """
        folder = cls(root, record)
        folder._make_writable_dir(folder.root)
        folder._check_free_space()
        previous = folder._read_record()
        if previous is None:
            existing = [folder.root / n for n in RUN_FILES if (folder.root / n).exists()]
            if existing and not (force or overwrite):
                raise OutputExistsError(existing[0])
            resume = False
        elif previous != record:
            if not (force or overwrite):
                raise RunMismatchError(folder.root, _record_differences(previous, record))
            resume = False
        else:
            resume = not force
        folder._remove_temporaries()
        if not resume:
            folder._discard_parts()
        write_text_atomic(
            folder.root / RUN_RECORD, json.dumps(record, indent=1, default=str), overwrite=True
        )
        for sub in (folder.masks, folder.overlays, folder.parts):
            folder._make_writable_dir(sub)
        return folder, resume

    @staticmethod
    def _make_writable_dir(path: Path) -> None:
        """Create ``path`` and prove a file can be made in it (mode bits do not stop root)."""
        if path.exists() and not path.is_dir():
            raise OutputError(f"{path}: is a file, not an output folder")
        try:
            path.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=path, prefix=_PROBE_PREFIX)
            try:
                os.write(fd, b"probe")
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as exc:
            raise OutputError(
                f"{path}: the output folder is not writable ({exc.strerror or exc}); "
                "nothing was run"
            ) from exc

    def _check_free_space(self) -> None:
        free = shutil.disk_usage(self.root).free
        if free < MIN_FREE_BYTES:
            raise OutputError(
                f"{self.root}: only {free / 2**20:.1f} MiB free on its disk "
                f"({os.strerror(errno.ENOSPC)}); nothing was run"
            )

    def _read_record(self) -> dict[str, Any] | None:
        path = self.root / RUN_RECORD
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}  # unreadable: treated as another run's
        return record if isinstance(record, dict) else {}

    def _remove_temporaries(self) -> None:
        """Temporary files a killed run left beside its targets (never a complete output)."""
        ours = {
            self.root: lambda name: name in RUN_FILES,
            self.masks: lambda name: (
                name == "classes.json" or name.endswith(("_instances.tif", "_classes.tif"))
            ),
            self.overlays: lambda name: name.endswith(".jpg"),
            self.parts: lambda name: name.endswith(".json"),
        }
        for folder, is_ours in ours.items():
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                match = _TEMPORARY.match(path.name)
                if (
                    path.name.startswith(_PROBE_PREFIX) or (match and is_ours(match["target"]))
                ) and path.is_file():
                    path.unlink(missing_ok=True)

    def _discard_parts(self) -> None:
        """Forget the per-image results of an earlier run (and the mask files they list)."""
        if not self.parts.is_dir():
            return
        for part in sorted(self.parts.glob("*.json")):
            try:
                outputs = json.loads(part.read_text(encoding="utf-8"))["cellquant"]["outputs"]
                for relative in outputs:
                    target = (self.root / relative).resolve()
                    if target.parent in (self.masks.resolve(), self.overlays.resolve()):
                        target.unlink(missing_ok=True)
            except (OSError, ValueError, KeyError, TypeError):
                pass  # a foreign or broken part: only the part itself goes
            part.unlink(missing_ok=True)

    # --- per image -------------------------------------------------------------------------
    def part_path(self, image: Path) -> Path:
        return self.parts / f"{Path(image).stem}.json"

    def overlay_path(self, image: Path) -> Path:
        return self.overlays / f"{Path(image).stem}.jpg"

    def read_part(self, image: Path) -> dict[str, Any] | None:
        """The image's part if it is complete and belongs to this run, else None."""
        path = self.part_path(image)
        try:
            part = json.loads(path.read_text(encoding="utf-8"))
            extra = part["cellquant"]
            stat = Path(image).stat()
            if (
                extra["format"] != PART_FORMAT
                or extra["run"] != self.run_id
                or extra["image"] != Path(image).name
                or extra["source_bytes"] != stat.st_size
                or extra["source_mtime_ns"] != stat.st_mtime_ns
            ):
                return None
            for relative, size in extra["outputs"].items():
                if (self.root / relative).stat().st_size != size:
                    return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return part

    def write_image(self, result: ImageResult) -> list[Path]:
        """Write one done image: its masks, then its part file (the completion record)."""
        from ..core.io.masks import write_masks
        from ..core.quantify import figure_rows

        assert result.annotation is not None and result.coco is not None
        written = write_masks([result.annotation], self.masks, overwrite=True)
        masks = [p for p in written if p.name != "classes.json"]
        if result.overlay:
            overlay = self.overlay_path(result.path)
            with atomic_path(overlay, overwrite=True) as tmp:
                tmp.write_bytes(result.overlay)
            masks.append(overlay)
        stat = result.path.stat()
        part = {
            **result.coco,
            "cellquant": {
                "format": PART_FORMAT,
                "run": self.run_id,
                "image": result.name,
                "source": str(result.path),
                "source_bytes": stat.st_size,
                "source_mtime_ns": stat.st_mtime_ns,
                "outputs": {p.relative_to(self.root).as_posix(): p.stat().st_size for p in masks},
                "counts": result.annotation.counts(),
                "figures": [
                    [r["group"], r["name"], _finite(r["value"]), r["unit"]]
                    for r in figure_rows(result.annotation)
                ],
                "objects": _columnar(result.objects or []),
                "thumbnail": {
                    "height": int(result.thumbnail_shape[0]),
                    "width": int(result.thumbnail_shape[1]),
                    "jpeg_base64": _b64(result.thumbnail or b""),
                },
            },
        }
        path = write_text_atomic(
            self.part_path(result.path), json.dumps(part, separators=(",", ":")), overwrite=True
        )
        return [*masks, path]

    # --- the merged files ------------------------------------------------------------------
    def rebuild(
        self,
        images: Sequence[Path],
        failures: Sequence[tuple[Path, str]],
        class_set: ClassSet,
        *,
        title: str,
    ) -> list[Path]:
        """Write annotations.json, counts.csv, failures.csv, report.html and classes.json
        from the part files of ``images`` (sorted by file name; ids follow that order)."""
        parts = []
        for image in sorted(images, key=lambda p: p.name):
            part = self.read_part(image)
            if part is not None:
                parts.append(part)
        written = []
        if parts:
            written.append(self._write_coco(parts))
            written.append(self._write_counts(parts))
            written.append(self._write_figures(parts))
            written.append(self._write_objects(parts))
            written.append(self._write_masks_record(parts))
        else:  # nothing done: merged files of an earlier run would describe other results
            for name in (ANNOTATIONS, COUNTS, FIGURES, OBJECTS):
                (self.root / name).unlink(missing_ok=True)
        written.append(self._write_failures(failures))
        written.append(self._write_report(parts, failures, class_set, title))
        others = (
            {p.stem for p in self.parts.glob("*.json")}
            - {Path(p["cellquant"]["image"]).stem for p in parts}
            - {Path(p).stem for p, _ in failures}
        )
        if others:
            log.warning(
                "%s holds results of %d image(s) not among the inputs (e.g. %s); they "
                "are kept but left out of the merged files",
                self.root,
                len(others),
                sorted(others)[0],
            )
        return written

    def _write_coco(self, parts: Sequence[dict[str, Any]]) -> Path:
        from ..core.io.coco import merge_coco

        merged = merge_coco(
            [{k: p[k] for k in ("images", "annotations", "categories")} for p in parts]
        )
        return write_text_atomic(
            self.root / ANNOTATIONS, json.dumps(merged, separators=(",", ":")), overwrite=True
        )

    def _write_counts(self, parts: Sequence[dict[str, Any]]) -> Path:
        from ..core.io.counts import COLUMNS, write_rows_csv

        rows = [
            {"image": p["cellquant"]["image"], "class": name, "count": n}
            for p in parts
            for name, n in p["cellquant"]["counts"].items()
        ]
        return write_rows_csv(COLUMNS, rows, self.root / COUNTS, overwrite=True)

    def _write_figures(self, parts: Sequence[dict[str, Any]]) -> Path:
        from ..core.io.counts import write_figures_csv

        rows = [
            {
                "image": p["cellquant"]["image"],
                "group": group,
                "name": name,
                "value": value,
                "unit": unit,
            }
            for p in parts
            for group, name, value, unit in p["cellquant"].get("figures", [])
        ]
        return write_figures_csv(rows, self.root / FIGURES, overwrite=True)

    def _write_objects(self, parts: Sequence[dict[str, Any]]) -> Path:
        from ..core.io.counts import write_rows_csv
        from ..core.measure import object_columns

        rows = [
            dict(zip(table["columns"], values))
            for p in parts
            for table in [p["cellquant"].get("objects") or {"columns": [], "rows": []}]
            for values in table["rows"]
        ]
        return write_rows_csv(object_columns(rows), rows, self.root / OBJECTS, overwrite=True)

    def _write_masks_record(self, parts: Sequence[dict[str, Any]]) -> Path:
        """classes.json with the done images in name order (a resumed run wrote them in
        another order, and a dask run in the order they finished)."""
        sidecar = self.masks / "classes.json"
        record = json.loads(sidecar.read_text(encoding="utf-8"))
        record["images"] = {
            Path(p["cellquant"]["image"]).stem: p["cellquant"]["image"] for p in parts
        }
        return write_text_atomic(sidecar, json.dumps(record, indent=1), overwrite=True)

    def _write_failures(self, failures: Sequence[tuple[Path, str]]) -> Path:
        from ..core.io.counts import write_rows_csv

        rows = [
            {"image": path.name, "path": str(path), "error": message}
            for path, message in sorted(failures, key=lambda f: f[0].name)
        ]
        return write_rows_csv(FAILURE_COLUMNS, rows, self.root / FAILURES, overwrite=True)

    def _write_report(
        self,
        parts: Sequence[dict[str, Any]],
        failures: Sequence[tuple[Path, str]],
        class_set: ClassSet,
        title: str,
    ) -> Path:
        import base64

        from .report import ReportImage, report_html

        images = [
            ReportImage(
                name=p["cellquant"]["image"],
                counts=p["cellquant"]["counts"],
                figures=[tuple(f) for f in p["cellquant"].get("figures", [])],
                thumbnail=base64.b64decode(p["cellquant"]["thumbnail"]["jpeg_base64"]),
                width=p["cellquant"]["thumbnail"]["width"],
                height=p["cellquant"]["thumbnail"]["height"],
                link=_overlay_link(p),
            )
            for p in parts
        ]
        details = {"model": str(self.record.get("model")), "output folder": str(self.root)}
        page = report_html(
            images,
            [(p.name, m) for p, m in sorted(failures)],
            class_set,
            title=title,
            details=details,
        )
        return write_text_atomic(self.root / REPORT, page, overwrite=True)


def _overlay_link(part: dict[str, Any]) -> str | None:
    """The overlay a part lists among its outputs, relative to the report."""
    return next(
        (name for name in part["cellquant"]["outputs"] if name.startswith(f"{OVERLAYS_DIR}/")), None
    )


def _columnar(rows: Sequence[dict[str, Any]]) -> dict[str, list]:
    """Object rows as one column list and value rows (a tenth of the JSON of dicts)."""
    from ..core.measure import object_columns

    columns = object_columns(rows)
    return {"columns": columns, "rows": [[row.get(c) for c in columns] for row in rows]}


def _finite(value: object) -> float | None:
    """A figure for JSON: NaN (an undefined share) as null."""
    number = float(value)  # type: ignore[arg-type]
    return number if math.isfinite(number) else None


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii")

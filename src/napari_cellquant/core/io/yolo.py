"""Ultralytics YOLO boxes: ``labels/*.txt`` with ``data.yaml`` or ``classes.txt``.

Layout (as Ultralytics and CVAT write it)::

    data.yaml              names: [WBC, RBC, Platelets]   (a list, or a dict id -> name)
    images/<split>/x.jpg
    labels/<split>/x.txt   one line per box: class cx cy w h  (normalised to the image)

A line may carry a sixth value, the confidence (``save_conf``), which becomes the box's
score. Images are found beside their labels: the same relative path under ``images/`` next to
``labels/``, whatever the image's suffix. The image's real size converts the normalised
coordinates to pixels; a label file whose image cannot be found is an error, since its boxes
would have no size.

Class names map onto the built-in class sets by name (:func:`~..classes.infer_class_set`):
``WBC``, ``RBC``, ``Platelets`` read as ``blood3``.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..annotation import Annotation, Boxes
from ..classes import ClassSet, infer_class_set
from ..errors import InputError
from .atomic import atomic_path, check_free, write_text_atomic

__all__ = ["looks_like_yolo", "read_yolo", "write_yolo"]

PathLike = str | os.PathLike[str]
DATA_FILES = ("data.yaml", "data.yml", "dataset.yaml")
#: normalised coordinates may overshoot [0, 1] by rounding; beyond this they are an error
TOLERANCE = 1e-3


# ------------------------------------------------------------------------------------------
# finding the parts
# ------------------------------------------------------------------------------------------
def _labels_root(path: Path) -> Path | None:
    """The ``labels`` folder a YOLO path belongs to (itself, an ancestor or a child)."""
    if path.is_file():
        path = path.parent
    for folder in (path, *path.parents):
        if folder.name == "labels":
            return folder
    if (path / "labels").is_dir():
        return path / "labels"
    return None


def looks_like_yolo(path: PathLike) -> bool:
    """A ``data.yaml`` with ``names``, a ``labels`` folder of ``.txt`` files, or a folder
    holding one. Never raises."""
    p = Path(path)
    try:
        if p.is_file() and p.suffix.lower() in (".yaml", ".yml"):
            return "names" in (_read_yaml(p) or {})
        if p.is_dir():
            if (p / "labels").is_dir() or p.name == "labels":  # the first label file will do
                labels = p if p.name == "labels" else p / "labels"
                return any(f.name != "classes.txt" for f in labels.rglob("*.txt"))
            return _labels_root(p) is not None and any(
                f.name != "classes.txt" for f in p.glob("*.txt")
            )
    except (InputError, OSError):
        return False
    return False


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"not a readable YAML file ({exc})", source=path) from None
    if not isinstance(data, dict):
        raise InputError("a YOLO data file must be a mapping with 'names'", source=path)
    return data


def _names_from_yaml(path: Path) -> list[str]:
    names = _read_yaml(path).get("names")
    if isinstance(names, dict):
        try:
            ids = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise InputError("'names' keys must be class indices 0, 1, ...", source=path) from None
        if ids != list(range(len(ids))):
            raise InputError(f"'names' must number the classes 0..{len(ids) - 1}", source=path)
        return [str(names[k] if k in names else names[str(k)]) for k in ids]
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    raise InputError("'names' must be a non-empty list or an index -> name mapping", source=path)


def _class_names(root: Path, data_file: Path | None) -> tuple[list[str], Path]:
    """Class names and the file they came from: ``data.yaml`` first, then ``classes.txt``."""
    candidates = [data_file] if data_file else []
    for folder in (root, root.parent, root.parent.parent):
        candidates += [folder / name for name in DATA_FILES]
    for candidate in candidates:
        if candidate is not None and candidate.is_file():
            return _names_from_yaml(candidate), candidate
    for folder in (root, root.parent):
        classes = folder / "classes.txt"
        if classes.is_file():
            names = [n.strip() for n in classes.read_text(encoding="utf-8").splitlines()]
            names = [n for n in names if n]
            if not names:
                raise InputError("names no classes", source=classes)
            return names, classes
    raise InputError(
        "YOLO labels need their class names: no data.yaml or classes.txt "
        "beside or above the labels folder",
        source=root,
    )


def _txt_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.rglob("*.txt") if f.name != "classes.txt")


def _label_files(path: Path, root: Path, data_file: Path | None) -> list[Path]:
    if path.is_file() and path.suffix.lower() == ".txt":
        return [path]
    base = root if data_file is not None or path == root.parent else path
    files = _txt_files(base)
    if not files:
        raise InputError("holds no YOLO label files (*.txt)", source=path)
    return files


def _image_for(label_file: Path, root: Path, images_dir: Path | None) -> Path | None:
    from .images import find_image

    relative = label_file.relative_to(root).with_suffix("")
    dirs = [root.parent / "images" / relative.parent, label_file.parent]
    if images_dir is not None:
        dirs.insert(0, images_dir / relative.parent)
        dirs.insert(1, images_dir)
    for suffix in (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".JPG", ".PNG"):
        found = find_image(relative.name + suffix, [d for d in dirs if d.is_dir()])
        if found is not None:
            return Path(found)
    return None


# ------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------
def _parse(label_file: Path, n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(class index, cx cy w h, score)`` rows of one label file; errors name the line."""
    try:
        text = label_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read ({exc})", source=label_file) from None
    classes, boxes, scores = [], [], []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"line {number}"
        if len(fields) not in (5, 6):
            hint = (
                " (a polygon: YOLO segmentation labels are not read; export boxes)"
                if len(fields) > 6
                else ""
            )
            raise InputError(
                f"{where}: expected 'class cx cy w h [conf]', got {len(fields)} values{hint}",
                source=label_file,
            )
        try:
            values = [float(v) for v in fields[1:]]
            index = int(fields[0])
        except ValueError:
            raise InputError(f"{where}: not numbers: {line.strip()!r}", source=label_file) from None
        if not 0 <= index < n_classes:
            raise InputError(
                f"{where}: class {index} outside 0..{n_classes - 1}", source=label_file
            )
        cx, cy, w, h = values[:4]
        if not all(math.isfinite(v) for v in values) or w < 0 or h < 0:
            raise InputError(f"{where}: box values must be finite, sizes >= 0", source=label_file)
        if min(cx - w / 2, cy - h / 2) < -TOLERANCE or max(cx + w / 2, cy + h / 2) > 1 + TOLERANCE:
            raise InputError(
                f"{where}: box {cx:g} {cy:g} {w:g} {h:g} lies outside "
                "the image (YOLO coordinates are normalised to 0..1)",
                source=label_file,
            )
        classes.append(index)
        boxes.append(values[:4])
        scores.append(values[4] if len(values) == 5 else math.nan)
    return (
        np.array(classes, dtype=np.int64),
        np.array(boxes, dtype=np.float64).reshape(-1, 4),
        np.array(scores, dtype=np.float64),
    )


def read_yolo(
    path: PathLike,
    *,
    class_set: ClassSet | None = None,
    images_dir: PathLike | None = None,
) -> list[Annotation]:
    """Read YOLO boxes from a ``data.yaml``, a ``labels`` folder (or the folder above it) or
    one label file.

    Parameters
    ----------
    path
        ``data.yaml`` (every ``labels/**/*.txt`` of the data set), a folder, or a ``.txt``.
    class_set
        Map the file's class names onto this set (by name, case-insensitive, with the usual
        spellings); default: the built-in set that holds them all, else a set of their own.
    images_dir
        Where the images are, when not in ``images/`` beside ``labels/``.

    Returns
    -------
    list of Annotation
        One per label file, sorted by path; boxes in pixels of the image found beside it.
    """
    from .coco import map_names_to_class_set
    from .images import image_shape

    p = Path(path)
    if not p.exists():
        raise InputError("no such file or folder", source=p)
    data_file = p if p.is_file() and p.suffix.lower() in (".yaml", ".yml") else None
    root = _labels_root(p if data_file is None else p.parent)
    if root is None:
        raise InputError("no 'labels' folder found for these YOLO annotations", source=p)
    names, names_file = _class_names(root, data_file)
    cs = class_set or infer_class_set(names)
    ids = np.array(map_names_to_class_set(names_file, names, cs, what="class"), dtype=np.int32)
    extra = None if images_dir is None else Path(images_dir)
    annotations = []
    for label_file in _label_files(p, root, data_file):
        image = _image_for(label_file, root, extra)
        if image is None:
            raise InputError(
                "no image beside it (looked in images/ next to "
                "labels/ under the same name); pass the images folder",
                source=label_file,
            )
        rows, cols = image_shape(image)
        index, cxcywh, scores = _parse(label_file, len(names))
        xywh = np.column_stack(
            [
                (cxcywh[:, 0] - cxcywh[:, 2] / 2) * cols,
                (cxcywh[:, 1] - cxcywh[:, 3] / 2) * rows,
                cxcywh[:, 2] * cols,
                cxcywh[:, 3] * rows,
            ]
        )
        annotations.append(
            Annotation(
                labels=np.zeros((rows, cols), dtype=np.int32),
                class_set=cs,
                boxes=Boxes(xywh, ids[index], scores),
                image_name=image.name,
                image_path=image,
                meta={"source": str(label_file)},
            )
        )
    return annotations


# ------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------
def _all_boxes(annotation: Annotation) -> Boxes:
    """Instances as their bounding boxes (with their scores), then the box-only objects."""
    from ..postprocess import boxes_from_labels

    parts = [annotation.boxes]
    if annotation.labels.any():
        parts.insert(0, boxes_from_labels(annotation.labels, annotation.classes, annotation.scores))
    return Boxes(
        np.concatenate([b.xywh for b in parts]),
        np.concatenate([b.class_ids for b in parts]),
        np.concatenate([b.scores for b in parts]),
    )


def label_text(annotation: Annotation) -> str:
    """One image's label file: ``class cx cy w h [conf]``, 10 significant digits (exact to
    well under a thousandth of a pixel on any image)."""
    rows, cols = annotation.shape
    boxes = _all_boxes(annotation)
    x, y, w, h = boxes.xywh.T
    cx, cy = (x + w / 2) / cols, (y + h / 2) / rows
    lines = []
    for k, values in zip(
        boxes.class_ids - 1, np.column_stack([cx, cy, w / cols, h / rows, boxes.scores])
    ):
        text = " ".join(f"{v:.10g}" for v in values[:4])
        if math.isfinite(values[4]):
            text += f" {values[4]:.6g}"
        lines.append(f"{int(k)} {text}")
    return "".join(line + "\n" for line in lines)


def write_yolo(
    annotations: Sequence[Annotation],
    dst: PathLike,
    *,
    overwrite: bool = False,
    copy_images: bool = True,
) -> list[Path]:
    """Write a YOLO data set into the folder ``dst``: ``labels/<stem>.txt`` per image,
    ``data.yaml`` and ``classes.txt``, and each image into ``images/`` (when it is known and
    ``copy_images``) so that Ultralytics, CVAT and this reader open the folder as it is.

    Instances are written as their bounding boxes. Existing files are refused unless
    ``overwrite``; every file is written atomically.
    """
    import yaml

    if not annotations:
        raise InputError("nothing to write: no annotations were read")
    folder = Path(dst)
    class_set = annotations[0].class_set
    stems: dict[str, str] = {}
    for annotation in annotations:
        if annotation.class_set.names != class_set.names:
            raise InputError(
                "all images must share one class set to be written as one YOLO data set",
                source=annotation.image_name,
            )
        stem = Path(annotation.image_name or "image").stem
        if stem in stems:
            raise InputError(
                f"two images named {stem!r}: YOLO label files are named after their images",
                source=annotation.image_name,
            )
        stems[stem] = annotation.image_name or stem
    targets = [folder / "labels" / f"{stem}.txt" for stem in stems]
    targets += [folder / "data.yaml", folder / "classes.txt"]
    check_free(targets, overwrite)
    written = []
    for annotation in annotations:
        stem = Path(annotation.image_name or "image").stem
        written.append(
            write_text_atomic(
                folder / "labels" / f"{stem}.txt", label_text(annotation), overwrite=overwrite
            )
        )
        source = annotation.image_path
        if copy_images and source is not None and Path(source).is_file():
            target = folder / "images" / Path(source).name
            if Path(source).resolve() != target.resolve():
                with atomic_path(target, overwrite=overwrite) as tmp:
                    shutil.copyfile(source, tmp)
                written.append(target)
    data = {
        "path": ".",
        "train": "images",
        "val": "images",
        "nc": len(class_set),
        "names": list(class_set.names),
    }
    written.append(
        write_text_atomic(
            folder / "data.yaml", yaml.safe_dump(data, sort_keys=False), overwrite=overwrite
        )
    )
    written.append(
        write_text_atomic(
            folder / "classes.txt", "".join(n + "\n" for n in class_set.names), overwrite=overwrite
        )
    )
    return written

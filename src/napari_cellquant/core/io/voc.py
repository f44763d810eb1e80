"""Pascal VOC XML boxes: read one file or a folder of them, write one file per image.

Box convention: a VOC ``bndbox`` becomes ``xywh = (xmin, ymin, xmax - xmin, ymax - ymin)``
with no 1-pixel shift, and :func:`write_voc` writes ``xmax = x + w``, ``ymax = y + h``. The
original VOC devkit counts pixels 1-based and inclusive, but the tools that write most VOC
files today (LabelImg, CVAT) do not, and this is the convention under which the NET data's
VOC files give exactly the boxes of its ``coco.json`` (checked in the tests). Reading then
writing a file therefore keeps the numbers unchanged.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..annotation import Annotation, Boxes
from ..classes import ClassSet, infer_class_set
from ..errors import InputError, OutputExistsError
from .atomic import atomic_path
from .coco import check_box_inside, map_names_to_class_set
from .image_files import SizeMismatch, check_size_mismatch, resolve_image_size, search_dirs
from .images import find_image

__all__ = ["looks_like_voc", "read_voc", "voc_element", "write_voc"]

PathLike = str | os.PathLike[str]


# ------------------------------------------------------------------------------------------
# sniffing
# ------------------------------------------------------------------------------------------
def _root_tag(path: Path) -> str | None:
    """Tag of the first element of an XML file, reading no further than that."""
    try:
        for _, element in ET.iterparse(path, events=("start",)):
            return element.tag
    except (ET.ParseError, OSError):
        return None
    return None


def looks_like_voc(path: PathLike) -> bool:
    """Whether ``path`` is a VOC XML file (root tag ``annotation``) or a folder of them.

    Only the root element is parsed (or, for a folder, its first ``.xml`` file's). Never
    raises.
    """
    p = Path(path)
    try:
        if p.is_dir():
            first = next(iter(sorted(p.glob("*.xml"))), None)
            return first is not None and _root_tag(first) == "annotation"
        return p.suffix.lower() == ".xml" and p.is_file() and _root_tag(p) == "annotation"
    except OSError:
        return False


# ------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------
class _VocFile:
    """The parsed, validated content of one VOC file (declared grid)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            root = ET.parse(path).getroot()
        except FileNotFoundError:
            raise InputError("file not found", source=path) from None
        except ET.ParseError as exc:
            raise InputError(f"invalid XML ({exc})", source=path) from None
        except OSError as exc:
            raise InputError(f"cannot read ({exc})", source=path) from exc
        if root.tag != "annotation":
            raise InputError(
                f"not a VOC file: root element is <{root.tag}>, not <annotation>", source=path
            )
        self.filename = (root.findtext("filename") or "").strip()
        if not self.filename:
            raise InputError("no <filename>", source=path)
        size = root.find("size")
        if size is None:
            raise InputError("no <size>", source=path)
        width = self._number(size, "width", "size")
        height = self._number(size, "height", "size")
        if width <= 0 or height <= 0 or not (width.is_integer() and height.is_integer()):
            raise InputError(
                f"<size> {width:g}x{height:g} is not a positive pixel size", source=path
            )
        self.declared = (int(height), int(width))
        depth = size.findtext("depth")
        self.depth = int(depth) if depth and depth.strip().isdigit() else None

        self.names: list[str] = []
        self.xywh: list[tuple[float, float, float, float]] = []
        self.scores: list[float] = []
        self.difficult: list[bool] = []
        self.truncated: list[bool] = []
        for k, obj in enumerate(root.iter("object"), start=1):
            what = f"object {k}"
            name = (obj.findtext("name") or "").strip()
            if not name:
                raise InputError(f"{what} has no <name>", source=path)
            box = obj.find("bndbox")
            if box is None:
                raise InputError(f"{what} ({name}) has no <bndbox>", source=path)
            xmin, ymin, xmax, ymax = (
                self._number(box, tag, f"{what} bndbox") for tag in ("xmin", "ymin", "xmax", "ymax")
            )
            if xmax < xmin or ymax < ymin:
                raise InputError(
                    f"{what} ({name}): xmax/ymax ({xmax:g}, {ymax:g}) below xmin/ymin "
                    f"({xmin:g}, {ymin:g})",
                    source=path,
                )
            xywh = (xmin, ymin, xmax - xmin, ymax - ymin)
            check_box_inside(path, xywh, self.declared, f"{what} ({name})")
            self.names.append(name)
            self.xywh.append(xywh)
            score = obj.find("score")
            self.scores.append(math.nan if score is None else self._number(obj, "score", what))
            self.difficult.append(self._flag(obj, "difficult", what))
            self.truncated.append(self._flag(obj, "truncated", what))

    def _number(self, parent: ET.Element, tag: str, what: str) -> float:
        text = parent.findtext(tag)
        if text is None:
            raise InputError(f"{what}: no <{tag}>", source=self.path)
        try:
            value = float(text.strip())
        except ValueError:
            raise InputError(
                f"{what}: <{tag}> is not a number: {text.strip()!r}", source=self.path
            ) from None
        if not math.isfinite(value):
            raise InputError(f"{what}: <{tag}> is not finite: {text.strip()!r}", source=self.path)
        return value

    def _flag(self, parent: ET.Element, tag: str, what: str) -> bool:
        if parent.find(tag) is None:
            return False
        return bool(self._number(parent, tag, what))


def _to_annotation(
    parsed: _VocFile, class_set: ClassSet, folders: list[Path], size_mismatch: SizeMismatch
) -> Annotation:
    image_path = find_image(parsed.filename, folders)
    xywh = np.array(parsed.xywh, dtype=np.float64).reshape(-1, 4)
    # (max ymax, max xmax): decides whether the boxes fit the real image as they are
    extent = (
        (float((xywh[:, 1] + xywh[:, 3]).max()), float((xywh[:, 0] + xywh[:, 2]).max()))
        if len(xywh)
        else (0.0, 0.0)
    )
    decision = resolve_image_size(
        parsed.path,
        parsed.filename,
        image_path,
        parsed.declared,
        extent,
        size_mismatch=size_mismatch,
    )
    class_ids = map_names_to_class_set(parsed.path, parsed.names, class_set, what="class")
    boxes = Boxes(
        xywh, np.array(class_ids, dtype=np.int32), np.array(parsed.scores, dtype=np.float64)
    )
    meta: dict[str, Any] = {
        "source": str(parsed.path),
        "declared_size": parsed.declared,
        "difficult": parsed.difficult,
        "truncated": parsed.truncated,
    }
    if parsed.depth is not None:
        meta["depth"] = parsed.depth
    if decision.scale is not None:
        boxes = boxes.scaled(decision.scale[1], decision.scale[0])
    meta.update(decision.meta(parsed.declared))
    return Annotation(
        labels=np.zeros(decision.shape, dtype=np.int32),
        class_set=class_set,
        boxes=boxes,
        image_name=parsed.filename,
        image_path=image_path,
        meta=meta,
    )


def read_voc(
    path_or_dir: PathLike,
    *,
    images_dir: PathLike | None = None,
    class_set: ClassSet | None = None,
    size_mismatch: SizeMismatch = "auto",
) -> list[Annotation]:
    """Read Pascal VOC boxes from one XML file or every ``*.xml`` in a folder.

    Parameters
    ----------
    path_or_dir
        A VOC ``.xml`` file, or a folder of them (not searched recursively).
    images_dir
        Where the images are, when not beside the XML, in ``images/`` next to it, or in
        ``../images``. A found image sets ``image_path``, and its real size wins over
        ``<size>``.
    class_set
        Map object names onto this set (case-insensitive; unknown names are an InputError).
        By default the smallest built-in set holding every name, else a set of the names in
        alphabetical order.
    size_mismatch
        When a found image's size differs from ``<size>``: ``"auto"`` keeps the boxes as image
        pixels when they all lie inside the image and rescales them by real / declared
        otherwise; ``"keep"`` or ``"rescale"`` force the choice. Always with a warning (see
        :func:`.image_files.resolve_image_size`).

    Returns
    -------
    list of Annotation
        One per file (sorted by file name for a folder), objects in ``boxes`` with
        ``xywh = (xmin, ymin, xmax - xmin, ymax - ymin)``; ``meta`` holds ``difficult`` and
        ``truncated`` (one flag per box), ``declared_size`` (rows, cols) and, when the image's
        size differed, ``size_mismatch`` (``"kept"`` or ``"rescaled"``) and, when rescaled,
        ``rescaled_from`` and ``scale`` (sy, sx).
    """
    size_mismatch = check_size_mismatch(size_mismatch)
    source = Path(path_or_dir)
    if source.is_dir():
        files = sorted(source.glob("*.xml"))
        if not files:
            raise InputError("folder holds no .xml files", source=source)
    elif source.exists():
        files = [source]
    else:
        raise InputError("file not found", source=source)
    parsed = [_VocFile(f) for f in files]
    if class_set is None:
        class_set = infer_class_set(n for p in parsed for n in p.names)
    return [
        _to_annotation(p, class_set, search_dirs(p.path, images_dir), size_mismatch) for p in parsed
    ]


# ------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------
def _text(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(round(value, 4))


def _sub(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    element = ET.SubElement(parent, tag)
    if text is not None:
        element.text = text
    return element


def _flags(meta: dict[str, Any], key: str, n: int) -> Sequence[bool]:
    flags = meta.get(key)
    return flags if isinstance(flags, (list, tuple)) and len(flags) == n else [False] * n


def voc_element(annotation: Annotation) -> ET.Element:
    """The VOC ``<annotation>`` element for one image: its boxes, then each instance's bbox."""
    ann = annotation
    root = ET.Element("annotation")
    folder = ann.image_path.parent.name if ann.image_path is not None else ""
    _sub(root, "folder", folder)
    _sub(root, "filename", ann.image_name)
    if ann.image_path is not None:
        _sub(root, "path", str(ann.image_path))
    _sub(_sub(root, "source"), "database", "napari-cellquant")
    size = _sub(root, "size")
    _sub(size, "width", str(ann.shape[1]))
    _sub(size, "height", str(ann.shape[0]))
    # VOC tools expect a depth; most images they meet are RGB
    _sub(size, "depth", str(ann.meta.get("depth", 3)))
    _sub(root, "segmented", "0")

    def add(
        name: str,
        xywh: Sequence[float],
        score: float,
        difficult: bool,
        truncated: bool,
        instance_id: int | None = None,
    ) -> None:
        obj = _sub(root, "object")
        _sub(obj, "name", name)
        _sub(obj, "pose", "Unspecified")
        _sub(obj, "truncated", str(int(bool(truncated))))
        _sub(obj, "difficult", str(int(bool(difficult))))
        if math.isfinite(score):
            _sub(obj, "score", repr(float(score)))
        if instance_id is not None:
            _sub(obj, "instance_id", str(instance_id))
        x, y, w, h = (float(v) for v in xywh)
        box = _sub(obj, "bndbox")
        for tag, value in (("xmin", x), ("ymin", y), ("xmax", x + w), ("ymax", y + h)):
            _sub(box, tag, _text(value))

    n = len(ann.boxes)
    difficult = _flags(ann.meta, "difficult", n)
    truncated = _flags(ann.meta, "truncated", n)
    for k in range(n):
        add(
            ann.class_set.name_of(int(ann.boxes.class_ids[k])),
            ann.boxes.xywh[k],
            float(ann.boxes.scores[k]),
            difficult[k],
            truncated[k],
        )
    ids = ann.instance_ids()
    if ids.size:
        unclassed = [int(i) for i in ids if ann.classes.get(int(i), 0) == 0]
        if unclassed:
            raise InputError(
                f"{len(unclassed)} instance(s) have no class (ids {unclassed[:10]}); "
                "a VOC object needs a name",
                source=ann.image_name or None,
            )
        # renumber to 1..n so find_objects does not allocate one slot per unused id
        lookup = np.zeros(int(ids[-1]) + 1, dtype=np.int64)
        lookup[ids] = np.arange(1, len(ids) + 1)
        for k, sl in enumerate(ndi.find_objects(lookup[ann.labels])):
            iid = int(ids[k])
            rows, cols = sl
            add(
                ann.class_set.name_of(ann.classes[iid]),
                (cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start),
                float(ann.scores.get(iid, math.nan)),
                False,
                False,
                instance_id=iid,
            )
    ET.indent(root, space="\t")
    return root


def write_voc(
    annotations: Iterable[Annotation], out_dir: PathLike, *, overwrite: bool = False
) -> list[Path]:
    """Write one VOC XML per image, ``<out_dir>/<image stem>.xml``, each atomically.

    Boxes are written first, then the bbox of every instance (VOC holds no masks), with the
    convention ``xmax = x + w``, ``ymax = y + h`` (see the module docstring).

    Parameters
    ----------
    annotations
        One :class:`Annotation` per image; image names must have distinct stems.
    out_dir
        Folder to write into (created if needed).
    overwrite
        Replace existing files; otherwise nothing is written when any target exists.

    Returns
    -------
    list of Path
        The files written, in the order of ``annotations``.
    """
    anns = [annotations] if isinstance(annotations, Annotation) else list(annotations)
    out = Path(out_dir)
    targets = []
    for i, ann in enumerate(anns):
        if not ann.image_name:
            raise InputError(f"annotation {i} has no image_name; VOC needs a filename")
        targets.append(out / f"{Path(ann.image_name).stem}.xml")
    repeated = sorted({t.name for t in targets if targets.count(t) > 1})
    if repeated:
        raise InputError(f"two images would write the same file: {', '.join(repeated)}", source=out)
    if not overwrite:  # refuse before writing anything, so a folder is never half-exported
        for target in targets:
            if target.exists():
                raise OutputExistsError(target)
    elements = [voc_element(ann) for ann in anns]
    for target, element in zip(targets, elements):
        with atomic_path(target, overwrite=overwrite) as tmp:
            ET.ElementTree(element).write(tmp, encoding="utf-8", xml_declaration=False)
    return targets

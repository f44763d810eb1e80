"""Label images, colour-coded class maps and mask folders, to and from Annotations.

Files this module reads and writes:

- a **label image** (TIFF/PNG, one integer id per object, 0 background), or a binary mask
  whose connected components become the objects (:func:`read_label_image`);
- a **colour-coded semantic map** (RGB, one palette colour per class, as in the blood smear
  set) decoded by nearest palette colour, with touching objects of one class split
  (:func:`read_color_map`);
- a **masks folder** (:func:`write_masks` / :func:`read_masks_folder`): per image
  ``<stem>_instances.tif`` (instance ids, uint16 when they fit, else uint32) and
  ``<stem>_classes.tif`` (class id per pixel), zlib-compressed, plus one ``classes.json``
  that records the class set and each stem's image file name, so the folder reads back
  exactly without naming the classes;
- a **class-masks folder** (:func:`write_class_masks`): ``<stem>_<class>.png`` per class,
  0/255. Reading it back gives one object per connected component of each class, so objects
  of one class that touch come back merged; use the masks layout for a lossless copy.

The stem of an annotation's files is ``Path(annotation.image_name).stem``. When a masks
folder has no record of the image name, the image is looked for beside the masks (the folder
and its parent, same stem, any image suffix) and otherwise named ``<stem>.png``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import tifffile
from scipy import ndimage as ndi
from skimage.measure import label as connected_components

from .. import postprocess
from ..annotation import Annotation
from ..classes import CELL, CLASS_SETS, ClassSet
from ..errors import CellquantError, InputError, OutputExistsError
from .atomic import atomic_path, check_free
from .images import find_image, image_shape, read_image

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

#: Name of the class-set sidecar a masks folder carries.
CLASSES_JSON = "classes.json"
INSTANCES_SUFFIX = "_instances.tif"
CLASSES_SUFFIX = "_classes.tif"
_INT32_MAX = np.iinfo(np.int32).max


# --- label images ---------------------------------------------------------------------------
def read_label_image(path: PathLike, *, class_set: ClassSet | None = None) -> Annotation:
    """Read an integer label image (TIFF/PNG) or a binary mask as an Annotation.

    Parameters
    ----------
    path
        2-D integer image, 0 background. A binary mask (values within {0, 1} or {0, 255},
        or boolean) is split into its 8-connected components, one object each; any other
        integer image keeps its ids as they are.
    class_set
        Class set of the result; every object gets its first class. Default
        :data:`~napari_cellquant.core.classes.CELL`.

    Returns
    -------
    Annotation
        ``image_name`` is the label file's name.

    Raises
    ------
    InputError
        The file cannot be read, or holds colours or real numbers rather than integer labels.
    """
    p = Path(path)
    pixels = read_image(p)
    labels = _as_label_array(p, pixels)
    return Annotation.from_labels(
        labels, class_set or CELL, class_id=1, image_name=p.name, meta={"source": str(p)}
    )


def _as_label_array(path: Path, pixels: np.ndarray) -> np.ndarray:
    """Validate a label image and turn binary masks into connected components."""
    if pixels.ndim != 2:
        raise InputError(
            f"is not a label image: it has {pixels.shape[-1]} channels (shape {pixels.shape}); "
            "a colour-coded class map is read by naming its classes (--classes NAME)",
            source=path,
        )
    if pixels.dtype == bool:
        return connected_components(pixels, connectivity=2).astype(np.int32)
    if not np.issubdtype(pixels.dtype, np.integer):
        raise InputError(
            f"is not a label image: its pixels are {pixels.dtype} numbers, not integer ids "
            "(a colour-coded class map is read by naming its classes: --classes NAME)",
            source=path,
        )
    if pixels.size == 0:
        return pixels.astype(np.int32)
    low, high = int(pixels.min()), int(pixels.max())
    if low < 0:
        raise InputError(f"label image has negative ids (minimum {low})", source=path)
    if high > _INT32_MAX:
        raise InputError(f"label id {high} is too large (at most {_INT32_MAX})", source=path)
    if high <= 1 or (high == 255 and bool(np.all((pixels == 0) | (pixels == 255)))):
        return connected_components(pixels > 0, connectivity=2).astype(np.int32)
    return pixels.astype(np.int32)


def check_shape_matches(
    annotation: Annotation, image_shape: Sequence[int], source: PathLike | None
) -> None:
    """Refuse labels whose grid differs from the image they are paired with.

    Parameters
    ----------
    annotation
        The labels.
    image_shape
        ``(rows, cols)`` or ``(rows, cols, channels)`` of the image.
    source
        File named in the error (the labels).

    Raises
    ------
    InputError
        ``label shape (h, w) differs from image shape (h2, w2)``.
    """
    rows_cols = (int(image_shape[0]), int(image_shape[1]))
    if annotation.shape != rows_cols:
        raise InputError(
            f"label shape {annotation.shape} differs from image shape {rows_cols}", source=source
        )


# --- colour-coded maps --------------------------------------------------------------------
#: Classes that are aggregates by definition (a platelet clump is many platelets): their
#: regions are never split into touching objects. Matched case-insensitively.
AGGREGATE_CLASSES: frozenset[str] = frozenset({"platelet_clump"})


def read_color_map(
    path: PathLike,
    class_set: ClassSet,
    *,
    min_size: int = 30,
    split_touching: bool = True,
    keep_whole: Collection[str] = AGGREGATE_CLASSES,
) -> Annotation:
    """Read an RGB colour-coded semantic map as instances with classes.

    Each pixel takes the class of the nearest palette colour (the set's ignored colours and
    black mean background). Each class's 8-connected regions are its objects; regions
    smaller than ``min_size`` pixels are dropped (blended colours along edges snap to other
    classes and form thin fragments). With ``split_touching``, regions holding several
    touching objects are split by a watershed on the distance transform, its seeds spaced
    by the regions' own size (``postprocess.split_touching`` without ``min_distance``),
    except for the classes named in ``keep_whole``.

    Parameters
    ----------
    path
        RGB or RGBA image (8-bit).
    class_set
        Class set whose ``colors`` the map uses.
    min_size
        Smallest object kept, in pixels.
    split_touching
        Split touching objects of one class.
    keep_whole
        Class names never split (aggregates); default :data:`AGGREGATE_CLASSES`.

    Returns
    -------
    Annotation
        ``labels`` numbered class by class, ``classes``, and ``semantic`` (the decoded map
        with dropped fragments set to 0, so it equals ``class_map()``).

    Raises
    ------
    InputError
        The file cannot be read or is not an 8-bit RGB image.
    """
    p = Path(path)
    pixels = read_image(p)
    if pixels.ndim != 3 or pixels.shape[-1] not in (3, 4):
        raise InputError(
            f"is not a colour-coded map: expected an RGB image, got shape {pixels.shape}", source=p
        )
    if pixels.dtype != np.uint8:
        raise InputError(f"colour-coded map must be 8-bit RGB, got {pixels.dtype}", source=p)
    semantic = class_set.decode_colors(pixels[..., :3])
    whole = {name.lower() for name in keep_whole}
    labels = np.zeros(semantic.shape, dtype=np.int32)
    classes: dict[int, int] = {}
    present = np.flatnonzero(np.bincount(semantic.ravel(), minlength=len(class_set) + 1))
    for class_id in present[present > 0]:
        mask = semantic == class_id
        split = split_touching and class_set.name_of(int(class_id)).lower() not in whole
        objects = _instances_of_mask(mask, min_size=min_size, split=split)
        semantic[mask & (objects == 0)] = 0  # dropped fragments
        n = int(objects.max())
        if n == 0:
            continue
        offset = len(classes)
        labels[objects > 0] = objects[objects > 0] + offset
        classes.update({offset + i: int(class_id) for i in range(1, n + 1)})
    return Annotation(
        labels=labels,
        class_set=class_set,
        classes=classes,
        semantic=semantic,
        image_name=p.name,
        meta={"source": str(p)},
    )


def _instances_of_mask(mask: np.ndarray, *, min_size: int, split: bool) -> np.ndarray:
    """Objects ``1..n`` of one class's mask (worked on the mask's bounding box for speed)."""
    out = np.zeros(mask.shape, dtype=np.int32)
    found = ndi.find_objects(mask.astype(np.uint8))
    if not found or found[0] is None:
        return out
    box = found[0]
    components = connected_components(mask[box], connectivity=2)
    sizes = np.bincount(components.ravel())
    keep = sizes >= min_size
    keep[0] = False
    # renumber the kept components 1..k in scan order
    components = (np.cumsum(keep) * keep)[components].astype(np.int32)
    if split and components.max() > 0:
        components = postprocess.split_touching(components)
    out[box] = components
    return out


# --- masks folders: writing ---------------------------------------------------------------
def _stem_of(annotation: Annotation) -> str:
    if not annotation.image_name:
        raise InputError("an annotation has no image_name, so its mask files cannot be named")
    return Path(annotation.image_name).stem


def _class_set_record(class_set: ClassSet) -> dict[str, Any]:
    return {
        "name": class_set.name,
        "names": list(class_set.names),
        "colors": [list(c) for c in class_set.colors],
        "ignored_colors": [list(c) for c in class_set.ignored_colors],
    }


def write_masks(
    annotations: Sequence[Annotation], out_dir: PathLike, *, overwrite: bool = False
) -> list[Path]:
    """Write instance and class images per annotation, plus the folder's ``classes.json``.

    Parameters
    ----------
    annotations
        Annotations sharing one class set, with distinct image-name stems.
    out_dir
        Folder to write into (created if needed).
    overwrite
        Replace existing mask files. Without it nothing is written if any target exists;
        an existing ``classes.json`` for the same class set is extended, not refused.

    Returns
    -------
    list of Path
        ``<stem>_instances.tif`` and ``<stem>_classes.tif`` per annotation, then
        ``classes.json``.

    Raises
    ------
    InputError
        Mixed class sets, repeated stems, or an annotation without ``image_name``.
    OutputExistsError
        A target exists and ``overwrite`` is false.
    """
    if not annotations:
        return []
    folder = Path(out_dir)
    class_set = annotations[0].class_set
    if any(a.class_set != class_set for a in annotations):
        names = sorted({a.class_set.name for a in annotations})
        raise InputError(
            f"annotations use different class sets ({', '.join(names)})", source=folder
        )
    stems = [_stem_of(a) for a in annotations]
    repeated = sorted({s for s in stems if stems.count(s) > 1})
    if repeated:
        raise InputError(f"several images share the stem {repeated[0]!r}", source=folder)
    targets = [(folder / f"{s}{INSTANCES_SUFFIX}", folder / f"{s}{CLASSES_SUFFIX}") for s in stems]
    check_free([p for pair in targets for p in pair], overwrite)
    sidecar = folder / CLASSES_JSON
    record = {**_class_set_record(class_set), "images": {}}
    if sidecar.exists():
        try:
            old = json.loads(sidecar.read_text(encoding="utf-8"))
            same = {k: old.get(k) for k in ("name", "names", "colors")} == {
                k: record[k] for k in ("name", "names", "colors")
            }
        except (OSError, ValueError, AttributeError):
            old, same = {}, False
        if same and isinstance(old.get("images"), dict):
            record["images"] = dict(old["images"])
        elif not same and not overwrite:
            raise OutputExistsError(sidecar)
    class_dtype = np.uint8 if len(class_set) < 256 else np.uint16
    written: list[Path] = []
    for annotation, stem, (instances_path, classes_path) in zip(
        annotations, stems, targets, strict=True
    ):
        labels = annotation.labels
        id_dtype = np.uint16 if int(labels.max(initial=0)) < 65536 else np.uint32
        _write_tiff(instances_path, labels.astype(id_dtype), overwrite)
        _write_tiff(classes_path, annotation.class_map().astype(class_dtype), overwrite)
        written += [instances_path, classes_path]
        record["images"][stem] = annotation.image_name
    with atomic_path(sidecar, overwrite=True) as tmp:
        tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
    return [*written, sidecar]


def _write_tiff(path: Path, pixels: np.ndarray, overwrite: bool) -> None:
    with atomic_path(path, overwrite=overwrite) as tmp:
        tifffile.imwrite(tmp, pixels, compression="zlib", photometric="minisblack")


def write_class_masks(
    annotation: Annotation, out_dir: PathLike, *, overwrite: bool = False
) -> list[Path]:
    """Write one 0/255 PNG per class of the class set: ``<stem>_<class>.png``.

    Every class gets a file, empty ones included, so the folder states the absence of a
    class. The masks come from the instances (``class_map()``); unclassed instances appear in
    none.

    Returns
    -------
    list of Path
        The files, in class order.

    Raises
    ------
    InputError
        The annotation has no ``image_name``, or a class name cannot be a file name.
    OutputExistsError
        A target exists and ``overwrite`` is false (nothing is written then).
    """
    folder = Path(out_dir)
    stem = _stem_of(annotation)
    for name in annotation.class_set.names:
        if not name or any(ch in name for ch in '/\\:*?"<>|'):
            raise InputError(f"class name {name!r} cannot be part of a file name", source=folder)
    targets = [folder / f"{stem}_{name}.png" for name in annotation.class_set.names]
    check_free(targets, overwrite)
    class_map = annotation.class_map()
    for class_id, target in zip(annotation.class_set.ids, targets, strict=True):
        encoded = imagecodecs.png_encode(np.where(class_map == class_id, 255, 0).astype(np.uint8))
        with atomic_path(target, overwrite=overwrite) as tmp:
            tmp.write_bytes(encoded)
    return targets


# --- masks folders: reading ---------------------------------------------------------------
def read_masks_folder(path: PathLike, class_set: ClassSet | None = None) -> list[Annotation]:
    """Read a folder written by :func:`write_masks` or :func:`write_class_masks`.

    Layout (a), used when any ``*_instances.tif`` is present: ``<stem>_instances.tif`` with
    ``<stem>_classes.tif``; each instance takes the class most of its pixels have. Layout
    (b): ``<stem>_<class>.png`` binary masks, one object per 8-connected component (where
    masks of two classes overlap, the earlier class keeps the pixel).

    Parameters
    ----------
    path
        The folder.
    class_set
        Classes the ids / file names refer to. Default: the folder's ``classes.json``;
        layout (a) without either falls back to ``CELL`` when class ids are only 0/1.

    Returns
    -------
    list of Annotation
        One per stem, sorted by stem.

    Raises
    ------
    InputError
        Not a folder, no masks in it, a missing partner file, shapes that differ, class ids
        outside the class set, an unreadable ``classes.json``, or no way to know the classes.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise InputError("is not a folder of masks", source=folder)
    sidecar = _read_sidecar(folder)
    if class_set is None and sidecar is not None:
        class_set = sidecar[0]
    elif class_set is not None and sidecar is not None and sidecar[0].names != class_set.names:
        log.warning(
            "%s: classes.json names classes %s but %s was requested; using the latter",
            folder,
            ", ".join(sidecar[0].names),
            class_set.name,
        )
    image_names = sidecar[1] if sidecar is not None else {}
    files = sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))
    instance_files = [f for f in files if f.name.lower().endswith(INSTANCES_SUFFIX)]
    if instance_files:
        annotations = [_read_instance_pair(f, files, class_set) for f in instance_files]
    else:
        if class_set is None:
            raise InputError(
                "holds no *_instances.tif masks; to read one mask per class name the class "
                "set (--classes NAME)",
                source=folder,
            )
        annotations = _read_class_mask_files(folder, files, class_set)
    for annotation in annotations:
        _name_image(annotation, folder, image_names)
    return sorted(annotations, key=lambda a: a.meta["stem"])


def _read_sidecar(folder: Path) -> tuple[ClassSet, dict[str, str]] | None:
    sidecar = folder / CLASSES_JSON
    if not sidecar.is_file():
        return None
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8"))
        names = tuple(str(n) for n in record["names"])
        colors = tuple(_rgb(c) for c in record["colors"])
        ignored = tuple(_rgb(c) for c in record.get("ignored_colors", []))
        name = str(record.get("name", "custom"))
        images = record.get("images", {})
        if not isinstance(images, dict):
            raise ValueError("'images' must map stems to file names")
        builtin = CLASS_SETS.get(name)
        if builtin is not None and builtin.names == names:
            class_set = builtin
        else:
            class_set = ClassSet(name=name, names=names, colors=colors, ignored_colors=ignored)
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot be read ({exc})", source=sidecar) from exc
    except (ValueError, KeyError, TypeError, AttributeError, CellquantError) as exc:
        raise InputError(f"is not a valid class-set record ({exc})", source=sidecar) from exc
    return class_set, {str(k): str(v) for k, v in images.items()}


def _rgb(value: Any) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in value)
    if not all(0 <= v <= 255 for v in (r, g, b)):
        raise ValueError(f"colour {value} is outside 0-255")
    return r, g, b


def _read_2d_integer(path: Path, what: str) -> np.ndarray:
    pixels = read_image(path)
    if pixels.ndim != 2 or not (np.issubdtype(pixels.dtype, np.integer) or pixels.dtype == bool):
        raise InputError(
            f"is not {what}: expected a 2-D integer image, got {pixels.dtype} "
            f"of shape {pixels.shape}",
            source=path,
        )
    return pixels


def _read_instance_pair(
    instances_path: Path, files: Sequence[Path], class_set: ClassSet | None
) -> Annotation:
    stem = instances_path.name[: -len(INSTANCES_SUFFIX)]
    wanted = f"{stem}{CLASSES_SUFFIX}".lower()
    partner = [f for f in files if f.name.lower() == wanted]
    if not partner:
        raise InputError(f"has no partner {stem}{CLASSES_SUFFIX} beside it", source=instances_path)
    classes_path = partner[0]
    labels = _read_2d_integer(instances_path, "an instance image")
    class_image = _read_2d_integer(classes_path, "a class image")
    if labels.shape != class_image.shape:
        raise InputError(
            f"shape {labels.shape} differs from {classes_path.name} shape {class_image.shape}",
            source=instances_path,
        )
    if int(labels.max(initial=0)) > _INT32_MAX:
        raise InputError(f"instance id {int(labels.max())} is too large", source=instances_path)
    top_class = int(class_image.max(initial=0))
    if class_set is None:
        if top_class > 1:
            raise InputError(
                f"holds class ids up to {top_class} but the folder has no {CLASSES_JSON}; "
                "name the class set (--classes NAME)",
                source=classes_path,
            )
        class_set = CELL
    if top_class > len(class_set):
        raise InputError(
            f"class id {top_class} is not in class set {class_set.name!r} "
            f"(ids 1..{len(class_set)})",
            source=classes_path,
        )
    return Annotation(
        labels=labels.astype(np.int32),
        class_set=class_set,
        classes=majority_classes(labels, class_image),
        image_name=f"{stem}.png",
        meta={"stem": stem, "source": str(instances_path)},
    )


def majority_classes(labels: np.ndarray, class_image: np.ndarray) -> dict[int, int]:
    """Instance id -> the class most of its pixels have (ties: the lower class id).

    Pixels of class 0 do not vote; an instance with no classed pixel gets no class.
    """
    inside = (labels > 0) & (class_image > 0)
    instance = labels[inside].astype(np.int64)
    klass = class_image[inside].astype(np.int64)
    if instance.size == 0:
        return {}
    base = int(klass.max()) + 1
    keys, votes = np.unique(instance * base + klass, return_counts=True)
    key_instance, key_class = keys // base, keys % base
    # sort by instance, then most votes first, then lowest class; take each instance's first
    order = np.lexsort((key_class, -votes, key_instance))
    key_instance, key_class = key_instance[order], key_class[order]
    first = np.r_[True, key_instance[1:] != key_instance[:-1]]
    return dict(zip(key_instance[first].tolist(), key_class[first].tolist(), strict=True))


def _read_class_mask_files(
    folder: Path, files: Sequence[Path], class_set: ClassSet
) -> list[Annotation]:
    # longest class name first, so "<stem>_infected_rbc.png" is not read as class "rbc"
    by_length = sorted(class_set.names, key=len, reverse=True)
    per_stem: dict[str, dict[str, Path]] = {}
    for f in files:
        if f.suffix.lower() != ".png":
            continue
        base = f.stem.lower()
        for name in by_length:
            if base.endswith(f"_{name.lower()}") and len(base) > len(name) + 1:
                per_stem.setdefault(f.stem[: -len(name) - 1], {})[name] = f
                break
    if not per_stem:
        raise InputError(
            f"holds no masks: neither *{INSTANCES_SUFFIX} files nor <stem>_<class>.png files "
            f"for the classes of {class_set.name!r} ({', '.join(class_set.names)})",
            source=folder,
        )
    return [_read_class_masks(stem, per_stem[stem], class_set) for stem in sorted(per_stem)]


def _read_class_masks(stem: str, found: dict[str, Path], class_set: ClassSet) -> Annotation:
    labels: np.ndarray | None = None
    classes: dict[int, int] = {}
    first_path: Path | None = None
    overlap = 0
    for class_id, name in zip(class_set.ids, class_set.names, strict=True):
        path = found.get(name)
        if path is None:
            continue
        mask = _read_2d_integer(path, "a binary mask") > 0
        if labels is None:
            labels, first_path = np.zeros(mask.shape, dtype=np.int32), path
        elif mask.shape != labels.shape:
            raise InputError(
                f"shape {mask.shape} differs from {first_path.name if first_path else '?'} "
                f"shape {labels.shape}",
                source=path,
            )
        overlap += int(np.count_nonzero(mask & (labels > 0)))
        objects = connected_components(mask & (labels == 0), connectivity=2)
        n = int(objects.max())
        offset = len(classes)
        labels[objects > 0] = objects[objects > 0] + offset
        classes.update({offset + i: class_id for i in range(1, n + 1)})
    if overlap:
        log.warning(
            "%s: %d pixels are in masks of two classes; the earlier class kept them", stem, overlap
        )
    assert labels is not None  # per_stem only holds stems with at least one file
    return Annotation(
        labels=labels,
        class_set=class_set,
        classes=classes,
        image_name=f"{stem}.png",
        meta={"stem": stem, "source": str(first_path)},
    )


def _name_image(annotation: Annotation, folder: Path, recorded: dict[str, str]) -> None:
    """Set ``image_name`` (and ``image_path`` when found) from the record or the disk."""
    stem = annotation.meta["stem"]
    if stem in recorded:
        annotation.image_name = recorded[stem]
        found = find_image(Path(recorded[stem]).name, [folder, folder.parent])
    else:
        found = find_image(stem, [folder, folder.parent])
        if found is not None:
            annotation.image_name = found.name
    if found is not None and found.stem == stem:
        try:
            shape = image_shape(found)
        except InputError as exc:  # the masks stand on their own; the image fails when read
            log.warning("masks of %s: %s", stem, exc)
        else:
            check_shape_matches(annotation, shape, annotation.meta.get("source"))
        annotation.image_path = found


__all__ = [
    "AGGREGATE_CLASSES",
    "CLASSES_JSON",
    "check_shape_matches",
    "majority_classes",
    "read_color_map",
    "read_label_image",
    "read_masks_folder",
    "write_class_masks",
    "write_masks",
]

"""Class sets: the names, ids and colours that annotations, models and files share.

Class id 0 is always background; real classes are numbered from 1 in the order given.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import CellquantError

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class ClassSet:
    """An ordered set of object classes.

    Parameters
    ----------
    name
        Registry name of the set (``blood10``, ``net4`` ...).
    names
        Class names; class ``i + 1`` is ``names[i]``.
    colors
        One RGB colour (0-255) per class, used for napari colouring and colour-coded maps.
    ignored_colors
        Extra colours that occur in colour-coded maps but mean "no class here" (for example
        the partial-WBC blue of the blood set); nearest-colour decoding maps them to 0.
    """

    name: str
    names: tuple[str, ...]
    colors: tuple[RGB, ...]
    ignored_colors: tuple[RGB, ...] = field(default=())

    def __post_init__(self) -> None:
        if len(self.names) != len(self.colors):
            raise CellquantError(
                f"class set {self.name!r}: {len(self.names)} names but {len(self.colors)} colours"
            )
        if len(set(self.names)) != len(self.names):
            raise CellquantError(f"class set {self.name!r}: class names must be unique")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(range(1, len(self.names) + 1))

    def id_of(self, name: str) -> int:
        """Class id of ``name``: case-insensitive, with the spellings real data uses
        (``RBC``, ``Platelets``, ``Thrombocytes``, ``red blood cell``; :func:`canonical_name`)."""
        lowered = [n.lower() for n in self.names]
        if name.lower() in lowered:
            return lowered.index(name.lower()) + 1
        canonical = [canonical_name(n) for n in self.names]
        try:
            return canonical.index(canonical_name(name)) + 1
        except ValueError:
            raise CellquantError(
                f"class {name!r} is not in class set {self.name!r} ({', '.join(self.names)})"
            ) from None

    def name_of(self, class_id: int) -> str:
        if not 1 <= class_id <= len(self.names):
            raise CellquantError(
                f"class id {class_id} is not in class set {self.name!r} (ids 1..{len(self.names)})"
            )
        return self.names[class_id - 1]

    def color_of(self, class_id: int) -> RGB:
        if class_id == 0:
            return (0, 0, 0)
        self.name_of(class_id)  # validates
        return self.colors[class_id - 1]

    def palette(self) -> np.ndarray:
        """``(n + 1, 3)`` uint8 array: row ``i`` is the colour of class ``i``, row 0 black."""
        return np.array([(0, 0, 0), *self.colors], dtype=np.uint8)

    def decode_colors(self, rgb: np.ndarray) -> np.ndarray:
        """Map an RGB colour-coded image to class ids by nearest palette colour.

        Blended edge colours (anti-aliasing, JPEG) snap to the closest class colour, and the
        set's ``ignored_colors`` snap to background.
        """
        if rgb.ndim != 3 or rgb.shape[-1] < 3:
            raise CellquantError(f"a colour-coded map must be (H, W, 3); got shape {rgb.shape}")
        ids = np.array([0, *self.ids, *([0] * len(self.ignored_colors))], dtype=np.int32)
        palette = np.array([(0, 0, 0), *self.colors, *self.ignored_colors], dtype=np.int32)
        # Only the distinct colours need a nearest-neighbour search: maps hold few of them,
        # so this is one small distance matrix instead of one per pixel.
        flat = rgb[..., :3].reshape(-1, 3).astype(np.int32)
        keys = (flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]
        unique_keys, inverse = np.unique(keys, return_inverse=True)
        unique_rgb = np.stack(
            [(unique_keys >> 16) & 255, (unique_keys >> 8) & 255, unique_keys & 255], axis=1
        )
        distance = ((unique_rgb[:, None, :] - palette[None, :, :]) ** 2).sum(axis=2)
        return ids[distance.argmin(axis=1)][inverse].reshape(rgb.shape[:2])

    def encode_colors(self, class_map: np.ndarray) -> np.ndarray:
        """Colour-code a class-id map (inverse of :meth:`decode_colors`)."""
        return self.palette()[np.clip(class_map, 0, len(self.names))]


#: other spellings of class names in public data sets and annotation tools -> our name
CLASS_ALIASES: dict[str, str] = {
    "red_blood_cell": "rbc",
    "erythrocyte": "rbc",
    "red_cell": "rbc",
    "white_blood_cell": "wbc",
    "leukocyte": "wbc",
    "leucocyte": "wbc",
    "white_cell": "wbc",
    "thrombocyte": "platelet",
    "plt": "platelet",
    "lymphocytes": "lymphocyte",
    "monocytes": "monocyte",
    "clump": "platelet_clump",
    "clumps": "platelet_clump",
    "infected": "infected_rbc",
}


def canonical_name(name: str) -> str:
    """A class name in one spelling: lower case, ``_`` for blanks and hyphens, singular, and
    the common synonyms of :data:`CLASS_ALIASES` (``Platelets`` and ``Thrombocytes`` ->
    ``platelet``, ``Red Blood Cells`` -> ``rbc``)."""
    key = "_".join(str(name).strip().lower().replace("-", " ").split())
    if key in CLASS_ALIASES:
        return CLASS_ALIASES[key]
    if key.endswith("s") and not key.endswith("ss") and len(key) > 3:
        key = key[:-1]
    return CLASS_ALIASES.get(key, key)


def _class_set(name: str, entries: Sequence[tuple[str, RGB]], **kwargs) -> ClassSet:
    return ClassSet(
        name=name,
        names=tuple(n for n, _ in entries),
        colors=tuple(c for _, c in entries),
        **kwargs,
    )


BLOOD10 = _class_set(
    "blood10",
    [
        ("eosinophil", (0, 255, 255)),
        ("basophil", (0, 128, 128)),
        ("neutrophil", (250, 190, 190)),
        ("lymphocyte", (128, 128, 0)),
        ("monocyte", (0, 0, 128)),
        ("platelet", (255, 225, 0)),
        ("platelet_clump", (255, 0, 255)),
        ("infected_rbc", (255, 0, 0)),
        ("healthy_rbc", (0, 255, 0)),
    ],
    # partial WBCs (cut by the image border) are drawn blue in the blood set's maps
    ignored_colors=((0, 0, 255),),
)
BLOOD3 = _class_set(
    "blood3", [("rbc", (220, 60, 60)), ("wbc", (90, 60, 200)), ("platelet", (240, 200, 40))]
)
_WBC_TYPES = [  # a 5-part differential's order, with blood10's colours
    ("neutrophil", (250, 190, 190)),
    ("lymphocyte", (128, 128, 0)),
    ("monocyte", (0, 0, 128)),
    ("eosinophil", (0, 255, 255)),
    ("basophil", (0, 128, 128)),
]
#: the five white-cell types alone: what the WBC type classifier tells apart
WBC5 = _class_set("wbc5", _WBC_TYPES)
#: blood3 with each WBC typed: what blood-detector reports with its WBC type classifier
BLOOD7 = _class_set(
    "blood7", [("rbc", BLOOD3.colors[0]), *_WBC_TYPES, ("platelet", BLOOD3.colors[2])]
)
NET4 = _class_set(
    "net4",
    [
        ("NET", (0, 220, 90)),
        ("dead", (230, 60, 60)),
        ("unstimulated", (60, 140, 255)),
        ("decondensed", (250, 180, 30)),
    ],
)
CELL = _class_set("cell", [("cell", (255, 200, 0))])
#: NET-covered regions (an area, not cells): named apart from net4's ``NET`` so that files
#: holding only NET boxes still read as net4
NET_AREA = _class_set("net-area", [("net_region", (0, 220, 90))])

CLASS_SETS: dict[str, ClassSet] = {
    cs.name: cs for cs in (BLOOD10, BLOOD7, BLOOD3, WBC5, NET4, CELL, NET_AREA)
}

# blood10 -> blood3: which coarse class each fine class belongs to
BLOOD10_TO_BLOOD3: dict[str, str] = {
    "eosinophil": "wbc",
    "basophil": "wbc",
    "neutrophil": "wbc",
    "lymphocyte": "wbc",
    "monocyte": "wbc",
    "platelet": "platelet",
    "platelet_clump": "platelet",
    "infected_rbc": "rbc",
    "healthy_rbc": "rbc",
}


def get_class_set(name: str | ClassSet) -> ClassSet:
    """Look up a built-in class set by name (a ClassSet passes through)."""
    if isinstance(name, ClassSet):
        return name
    try:
        return CLASS_SETS[name.lower()]
    except KeyError:
        raise CellquantError(
            f"unknown class set {name!r}; known: {', '.join(CLASS_SETS)}"
        ) from None


def class_set_from_names(names: Iterable[str], name: str = "custom") -> ClassSet:
    """A class set for names found in a file, reusing a built-in set when the names match one.

    Colours for unknown names come from a fixed qualitative palette so they are stable.
    """
    names = tuple(names)
    for builtin in CLASS_SETS.values():
        if tuple(n.lower() for n in builtin.names) == tuple(n.lower() for n in names):
            return builtin
    colors = tuple(_QUALITATIVE[i % len(_QUALITATIVE)] for i in range(len(names)))
    return ClassSet(name=name, names=names, colors=colors)


def infer_class_set(names: Iterable[str]) -> ClassSet:
    """The smallest built-in set holding every name (by :func:`canonical_name`), else a new set.

    VOC and YOLO files list only the classes that occur or that the data set uses, so a NET
    image without ``dead`` cells must still map onto ``net4``, and BCCD's ``RBC``, ``WBC``,
    ``Platelets`` onto ``blood3``.
    """
    names = list(names)
    wanted = {canonical_name(n) for n in names}
    matches = [cs for cs in CLASS_SETS.values() if wanted <= {canonical_name(n) for n in cs.names}]
    if wanted and matches:
        return min(matches, key=len)
    unique = sorted({n.lower(): n for n in names}.values(), key=str.lower)
    return class_set_from_names(unique)


# Tableau-like qualitative palette for class sets read from files.
_QUALITATIVE: tuple[RGB, ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (188, 189, 34),
    (23, 190, 207),
    (127, 127, 127),
)

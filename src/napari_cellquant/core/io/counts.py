"""Object counts per image and class, as rows and as a CSV file.

The CSV has exactly the columns ``image,class,count``, one row per class of each image's
class set, zeros included, so a missing class is never confused with a missing row.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from ..annotation import Annotation
from ..errors import InputError
from .atomic import atomic_path

PathLike = str | os.PathLike[str]

#: The CSV columns, in order.
COLUMNS: tuple[str, ...] = ("image", "class", "count")
#: The columns of ``figures.csv``: the figures derived from the counts (``core.quantify``).
FIGURE_COLUMNS: tuple[str, ...] = ("image", "group", "name", "value", "unit")


def counts_rows(annotations: Sequence[Annotation]) -> list[dict[str, str | int]]:
    """One row per (image, class): ``{"image": name, "class": name, "count": n}``.

    Counts come from :meth:`Annotation.counts` (instances plus boxes); every class of each
    annotation's class set is listed, in class order, zeros included.
    """
    return [
        {"image": annotation.image_name, "class": name, "count": n}
        for annotation in annotations
        for name, n in annotation.counts().items()
    ]


def write_counts_csv(
    annotations: Sequence[Annotation], path: PathLike, *, overwrite: bool = False
) -> Path:
    """Write :func:`counts_rows` as a CSV file (UTF-8, columns ``image,class,count``).

    Parameters
    ----------
    annotations
        The images to count.
    path
        CSV file to write (atomically).
    overwrite
        Replace an existing file.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is false.
    """
    return write_rows_csv(COLUMNS, counts_rows(annotations), path, overwrite=overwrite)


def csv_text(columns: Sequence[str], rows: Iterable[Mapping[str, object]]) -> str:
    """``rows`` as CSV text under a ``columns`` header; a float to 6 significant digits, an
    undefined figure (NaN or None) as an empty cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([csv_cell(row.get(c, "")) for c in columns] for row in rows)
    return buffer.getvalue()


def csv_cell(value: object) -> object:
    """One CSV cell: a float to 6 significant digits (whole numbers without a point), an
    undefined figure (NaN, None) empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return ""
        return str(int(value)) if value.is_integer() else f"{value:.6g}"
    return value


def write_rows_csv(
    columns: Sequence[str],
    rows: Iterable[Mapping[str, object]],
    path: PathLike,
    *,
    overwrite: bool = False,
) -> Path:
    """Write :func:`csv_text` atomically (UTF-8); an existing ``path`` is refused unless
    ``overwrite`` (OutputExistsError). Every CSV the package writes goes through here."""
    target = Path(path)
    with atomic_path(target, overwrite=overwrite) as tmp:
        tmp.write_text(csv_text(columns, rows), encoding="utf-8", newline="")
    return target


def write_figures_csv(
    rows: Sequence[Mapping[str, object]], path: PathLike, *, overwrite: bool = False
) -> Path:
    """Write ``figures.csv``: :data:`FIGURE_COLUMNS`, one row per figure of an image (the
    rows of ``core.quantify.figure_rows``), atomically; refused if ``path`` exists unless
    ``overwrite``."""
    return write_rows_csv(FIGURE_COLUMNS, rows, path, overwrite=overwrite)


def read_counts_csv(path: PathLike) -> list[dict[str, str | int]]:
    """Read a counts CSV back as rows with integer counts.

    The header must hold the columns ``image``, ``class`` and ``count`` (in any order;
    other columns are ignored). A byte-order mark, as spreadsheet programs write, is fine.

    Raises
    ------
    InputError
        Missing or unreadable file, no header, missing columns, a row with the wrong number
        of fields, or a count that is not a whole number >= 0 (naming the line).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError("no such file" if not p.exists() else "is not a file", source=p)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"is not a UTF-8 text file ({exc.reason} at byte {exc.start})", source=p
        ) from exc
    except OSError as exc:
        raise InputError(f"cannot be read ({exc.strerror or exc})", source=p) from exc
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    numbered: list[tuple[int, list[str]]] = []  # (line, fields), blank lines skipped
    try:
        for record in reader:
            if record:
                numbered.append((reader.line_num, record))
    except csv.Error as exc:
        raise InputError(f"line {reader.line_num}: not valid CSV ({exc})", source=p) from exc
    if not numbered:
        raise InputError("is empty; expected a header line image,class,count", source=p)
    header_line, header = numbered[0]
    header = [h.strip() for h in header]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise InputError(
            f"line {header_line}: header {','.join(header)!r} lacks column(s) "
            f"{', '.join(missing)} (expected image,class,count)",
            source=p,
        )
    where = {c: header.index(c) for c in COLUMNS}
    rows: list[dict[str, str | int]] = []
    for line, record in numbered[1:]:
        if len(record) != len(header):
            raise InputError(
                f"line {line}: {len(record)} fields, expected {len(header)} as in the header",
                source=p,
            )
        raw = record[where["count"]].strip()
        try:
            count = int(raw)
        except ValueError:
            raise InputError(
                f"line {line}: count {raw!r} is not a whole number", source=p
            ) from None
        if count < 0:
            raise InputError(f"line {line}: count {count} is negative", source=p)
        rows.append(
            {"image": record[where["image"]], "class": record[where["class"]], "count": count}
        )
    return rows


__all__ = [
    "COLUMNS",
    "FIGURE_COLUMNS",
    "counts_rows",
    "csv_cell",
    "csv_text",
    "read_counts_csv",
    "write_counts_csv",
    "write_figures_csv",
    "write_rows_csv",
]

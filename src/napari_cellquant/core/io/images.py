"""Reading microscopy and photo images: TIFF, PNG, JPEG and BMP.

Every image comes back as a 2-D array (grey) or a channel-last ``(H, W, C)`` array, whatever
the file's layout:

- TIFF samples (RGB, extra samples) and channels (ImageJ / OME ``C`` axis, or plain multi-page
  files whose pages are the same size) become the last axis; this tool works on 2-D images,
  so the pages of a plain multi-page TIFF are read as channels, not as a stack.
- Z or T stacks (more than one plane along ``Z`` or ``T``) and multi-page RGB files are
  refused with an :class:`~napari_cellquant.core.errors.InputError`: pick one plane first.
- dtype is kept (8-bit, 16-bit, float); alpha channels are kept (see :func:`as_rgb_or_grey`).

The decoder is chosen from the file's first bytes, not its suffix, so a JPEG saved as
``.png`` still reads (with a logged warning); a suffix outside :data:`IMAGE_SUFFIXES`, a
missing file, or content that is corrupt or truncated is an ``InputError`` naming the file.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile

from ..errors import InputError

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

#: File suffixes read as images (lower case); the order is the preference of :func:`find_image`.
IMAGE_SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")

_SUFFIX_FORMAT = {
    ".tif": "tiff",
    ".tiff": "tiff",
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".bmp": "bmp",
}

# Axes tifffile reports that are neither rows, columns nor channels.
_STACK_AXES = {"Z": "z-planes", "T": "time points"}


# --- format detection -------------------------------------------------------------------
def _sniff(head: bytes) -> str | None:
    """The image format that ``head`` (the first bytes of a file) starts with, if any."""
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:2] == b"BM":
        return "bmp"
    return None


def _checked_format(path: PathLike) -> tuple[Path, str]:
    """Validate ``path`` (exists, image suffix, known content) and return it with its format."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in _SUFFIX_FORMAT:
        raise InputError(
            f"unsupported image type {suffix or '(no suffix)'!r}; "
            f"readable: {', '.join(IMAGE_SUFFIXES)}",
            source=p,
        )
    if not p.exists():
        raise InputError("no such file", source=p)
    if not p.is_file():
        raise InputError("is a folder, not an image file", source=p)
    try:
        with p.open("rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise InputError(f"cannot be read ({exc.strerror or exc})", source=p) from exc
    if not head:
        raise InputError("is empty (0 bytes)", source=p)
    fmt = _sniff(head)
    if fmt is None:
        raise InputError(
            f"is not a valid {_SUFFIX_FORMAT[suffix].upper()} image (unrecognised content)",
            source=p,
        )
    if fmt != _SUFFIX_FORMAT[suffix]:
        log.warning("%s: content is %s although the suffix says %s", p, fmt, suffix)
    return p, fmt


# --- reading ------------------------------------------------------------------------------
def read_image(path: PathLike) -> np.ndarray:
    """Read an image file as a 2-D (grey) or ``(H, W, C)`` channel-last array.

    Parameters
    ----------
    path
        A ``.tif``/``.tiff``, ``.png``, ``.jpg``/``.jpeg`` or ``.bmp`` file.

    Returns
    -------
    numpy.ndarray
        Pixels in the file's dtype; single-channel images are 2-D.

    Raises
    ------
    InputError
        The file is missing, has an unsupported suffix, is corrupt or truncated, or is a
        z/t stack rather than one 2-D image.
    """
    p, fmt = _checked_format(path)
    if fmt == "tiff":
        return _read_tiff(p)
    decoders: dict[str, Callable[[bytes], np.ndarray]] = {
        "png": imagecodecs.png_decode,
        "jpeg": imagecodecs.jpeg8_decode,
        "bmp": imagecodecs.bmp_decode,
    }
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot be read ({exc.strerror or exc})", source=p) from exc
    header_parsers = {"png": _png_shape, "bmp": _bmp_shape, "jpeg": _jpeg_shape}
    try:
        declared = header_parsers[fmt](data)
    except (struct.error, IndexError, ValueError):
        declared = None  # the decoder reports what is wrong
    if declared is not None:
        _check_declared_size(p, declared, 1, len(data))
    if fmt == "jpeg" and _jpeg_truncated(data):
        # libjpeg fills a cut-off JPEG with grey and only warns, so check the end marker.
        raise InputError("corrupt or truncated JPEG image (no end-of-image marker)", source=p)
    try:
        pixels = np.asarray(decoders[fmt](data))
    except MemoryError:
        raise
    except Exception as exc:  # decoders raise their own error types; all mean bad content
        raise InputError(f"corrupt or truncated {fmt.upper()} image ({exc})", source=p) from exc
    return _squeeze_channels(pixels)


#: More decoded bytes per file byte than any supported codec gives (deflate tops out near
#: 1032:1, LZW near 2730:1): a header that declares more is corrupt, and is refused before
#: the decoder tries to allocate it.
_MAX_EXPANSION = 4096


def _check_declared_size(
    path: Path, shape: tuple[int, ...], itemsize: int, file_bytes: int
) -> None:
    declared = int(np.prod([int(n) for n in shape], dtype=object)) * itemsize
    if declared > _MAX_EXPANSION * file_bytes + (1 << 20):
        size = "x".join(str(int(n)) for n in shape)
        raise InputError(
            f"corrupt image: its header declares {size} pixels "
            f"({declared / 2**30:.1f} GiB or more) but the file holds only {file_bytes} bytes",
            source=path,
        )


def _jpeg_truncated(data: bytes) -> bool:
    # 0xFF in entropy-coded data is always followed by 0x00, so FF D9 (end of image) after
    # the last start-of-scan marker is a reliable sign the file is complete.
    return data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda")


def _squeeze_channels(pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        return pixels[..., 0]
    return pixels


def _read_tiff(path: Path) -> np.ndarray:
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes, shape = _tiff_axes(path, series.axes, series.shape)
            _check_declared_size(path, shape, np.dtype(series.dtype).itemsize, path.stat().st_size)
            pixels = series.asarray()
    except InputError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # tifffile raises ValueError, struct.error, TiffFileError ...
        raise InputError(f"corrupt or truncated TIFF image ({exc})", source=path) from exc
    if pixels.size != int(np.prod(shape)):  # tifffile returns what it could decode
        raise InputError(
            f"corrupt or truncated TIFF image ({pixels.size} values decoded for shape {shape})",
            source=path,
        )
    pixels = pixels.reshape(shape)
    channel_axes = [i for i, a in enumerate(axes) if a not in "YX"]
    order = [axes.index("Y"), axes.index("X"), *channel_axes]
    pixels = np.transpose(pixels, order)
    if channel_axes:
        pixels = pixels.reshape(pixels.shape[0], pixels.shape[1], -1)
    return _squeeze_channels(np.ascontiguousarray(pixels))


def _tiff_axes(path: Path, axes: str, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
    """Drop singleton axes and check that what is left is one 2-D image with channels."""
    kept = [(a, n) for a, n in zip(axes, shape, strict=True) if n > 1 or a in "YX"]
    if not any(a == "Y" for a, _ in kept) or not any(a == "X" for a, _ in kept):
        raise InputError(f"TIFF has no rows and columns (axes {axes}, shape {shape})", source=path)
    extra = [(a, n) for a, n in kept if a not in "YX"]
    for a, n in extra:
        if a in _STACK_AXES:
            raise InputError(
                f"is a stack of {n} {_STACK_AXES[a]} (axes {axes}, shape {shape}); "
                "cellquant reads 2-D images: save one plane",
                source=path,
            )
    if len(extra) > 1:
        raise InputError(
            f"has {len(extra)} non-spatial axes (axes {axes}, shape {shape}); expected one "
            "2-D image with at most one channel axis",
            source=path,
        )
    return "".join(a for a, _ in kept), tuple(n for _, n in kept)


# --- header-only shape ---------------------------------------------------------------------
def image_shape(path: PathLike) -> tuple[int, int]:
    """``(rows, columns)`` of an image, reading only its header where the format allows.

    TIFF, PNG, BMP and baseline/progressive JPEG headers are parsed directly; anything the
    header parser does not understand is decoded in full, which also reports corrupt files.

    Raises
    ------
    InputError
        As :func:`read_image`.
    """
    p, fmt = _checked_format(path)
    if fmt == "tiff":
        try:
            with tifffile.TiffFile(p) as tif:
                series = tif.series[0]
                axes, shape = _tiff_axes(p, series.axes, series.shape)
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"corrupt or truncated TIFF image ({exc})", source=p) from exc
        return shape[axes.index("Y")], shape[axes.index("X")]
    parsers: dict[str, Callable[[bytes], tuple[int, int] | None]] = {
        "png": _png_shape,
        "bmp": _bmp_shape,
        "jpeg": _jpeg_shape,
    }
    try:
        with p.open("rb") as fh:
            # JPEG headers can follow large EXIF/ICC segments; 256 KiB covers real cameras.
            head = fh.read(1 << 18)
    except OSError as exc:
        raise InputError(f"cannot be read ({exc.strerror or exc})", source=p) from exc
    try:
        found = parsers[fmt](head)
    except (struct.error, IndexError, ValueError):
        found = None
    if found is not None and found[0] > 0 and found[1] > 0:
        return found
    pixels = read_image(p)
    return int(pixels.shape[0]), int(pixels.shape[1])


def _png_shape(head: bytes) -> tuple[int, int] | None:
    if head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return int(height), int(width)


def _bmp_shape(head: bytes) -> tuple[int, int] | None:
    header_size = struct.unpack("<I", head[14:18])[0]
    if header_size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        width, height = struct.unpack("<HH", head[18:22])
    else:
        width, height = struct.unpack("<ii", head[18:26])
    return abs(int(height)), int(width)  # negative height means top-down rows


def _jpeg_shape(head: bytes) -> tuple[int, int] | None:
    # Start-of-frame markers (C0-CF except DHT C4, JPG C8 and DAC CC) carry the frame size.
    sof = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
    i = 2
    while i + 9 < len(head):
        if head[i] != 0xFF:
            return None
        marker = head[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            i += 2
            continue
        length = struct.unpack(">H", head[i + 2 : i + 4])[0]
        if marker in sof:
            height, width = struct.unpack(">HH", head[i + 5 : i + 9])
            return int(height), int(width)
        if marker == 0xDA:  # start of scan before any frame header: malformed
            return None
        i += 2 + length
    return None


# --- finding -------------------------------------------------------------------------------
def find_image(name: PathLike, search_dirs: PathLike | Iterable[PathLike]) -> Path | None:
    """Find the image a file name refers to in one or more folders.

    Tried in order, each over all folders before the next: ``name`` as given (absolute, or
    relative to each folder); the base name of ``name`` in each folder; then, ignoring case,
    a file with the same name or the same stem and any suffix of :data:`IMAGE_SUFFIXES`
    (preferring that tuple's order), so ``cell_01.TIF`` is found for ``cell_01.png``.

    Parameters
    ----------
    name
        File name as an annotation records it (may include sub-folders).
    search_dirs
        A folder or folders to look in; missing ones are skipped.

    Returns
    -------
    Path or None
        The first match, or ``None`` when there is none.
    """
    wanted = Path(name)
    dirs = (
        [Path(search_dirs)]
        if isinstance(search_dirs, (str, os.PathLike))
        else [Path(d) for d in search_dirs]
    )
    dirs = [d for d in dirs if d.is_dir()]
    if wanted.is_absolute() and wanted.is_file():
        return wanted
    for candidate in [d / wanted for d in dirs] + [d / wanted.name for d in dirs]:
        if candidate.is_file():
            return candidate
    lower_name = wanted.name.lower()
    lower_stem = wanted.stem.lower() if wanted.suffix.lower() in _SUFFIX_FORMAT else lower_name
    for folder in dirs:
        files = sorted(f for f in folder.iterdir() if f.is_file())
        same_name = [f for f in files if f.name.lower() == lower_name]
        if same_name:
            return same_name[0]
        same_stem = [
            f for f in files if f.stem.lower() == lower_stem and f.suffix.lower() in _SUFFIX_FORMAT
        ]
        if same_stem:
            return min(same_stem, key=lambda f: IMAGE_SUFFIXES.index(f.suffix.lower()))
    return None


# --- channel helpers -----------------------------------------------------------------------
def as_rgb_or_grey(pixels: np.ndarray) -> np.ndarray:
    """Drop an alpha channel: ``(H, W, 2)`` grey+alpha -> 2-D, ``(H, W, 4)`` RGBA -> RGB.

    Other arrays are returned unchanged; multi-channel fluorescence (C > 4, or C == 3/4 that
    are really channels) is the caller's to interpret.
    """
    if pixels.ndim == 3 and pixels.shape[-1] == 2:
        return pixels[..., 0]
    if pixels.ndim == 3 and pixels.shape[-1] == 4:
        return pixels[..., :3]
    return pixels


__all__ = ["IMAGE_SUFFIXES", "as_rgb_or_grey", "find_image", "image_shape", "read_image"]

"""``report.html``: one self-contained page to check a whole run by eye.

Every image appears as a small JPEG thumbnail with its objects outlined in their class colours
(instance borders from :func:`skimage.segmentation.find_boundaries` on a downscaled label
image, boxes as rectangles) and its counts; above them a summary table and a bar chart over
the run, and the images that failed with their errors. Nothing is fetched from anywhere: CSS
is inline, thumbnails are ``data:`` URIs and the chart is inline SVG, so the page opens
offline and can be mailed as one file. Thumbnails are at most :data:`THUMBNAIL_SIZE` pixels
on their long side (about 10-20 kB each), so a thousand images stay a page a browser opens;
each links to its overlay at up to :data:`OVERLAY_SIZE` pixels, a JPEG beside the page
(``overlays/<stem>.jpg``), for checking the outlines cell by cell.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.annotation import Annotation
from ..core.classes import ClassSet

#: Long side of a thumbnail, in pixels.
THUMBNAIL_SIZE = 256
#: Long side of the overlay a thumbnail opens (full size up to this).
OVERLAY_SIZE = 2048
_JPEG_QUALITY = 88
_UNCLASSED_RGB = (255, 255, 255)


# --- thumbnails --------------------------------------------------------------------------------
def display_rgb(pixels: np.ndarray) -> np.ndarray:
    """An 8-bit RGB view of any image the readers return, for showing only.

    8-bit RGB stays as it is (stain colours matter in smears); grey, 16-bit, float and
    multi-channel images are stretched per channel between their 1st and 99.8th percentiles
    (of a strided sample, so a huge image is not sorted), and the first three channels shown.
    """
    from ..core.io.images import as_rgb_or_grey

    image = as_rgb_or_grey(np.asarray(pixels))
    if image.ndim == 3 and image.shape[-1] > 3:
        image = image[..., :3]
    if image.ndim == 3 and image.shape[-1] == 2:
        image = np.concatenate([image, np.zeros_like(image[..., :1])], axis=-1)
    if image.ndim == 2:
        image = image[..., None]
    if image.dtype != np.uint8 or image.shape[-1] == 1:
        step = max(1, int(np.sqrt(image.shape[0] * image.shape[1] / 250_000)))
        sample = image[::step, ::step].reshape(-1, image.shape[-1]).astype(np.float64)
        low, high = np.percentile(sample, [1.0, 99.8], axis=0)
        scale = np.where(high > low, 255.0 / np.maximum(high - low, 1e-12), 0.0)
        image = np.clip((image.astype(np.float32) - low) * scale, 0, 255).astype(np.uint8)
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return image


def thumbnail_shape(shape: tuple[int, int], long_side: int = THUMBNAIL_SIZE) -> tuple[int, int]:
    """``(rows, cols)`` of the thumbnail of an image of ``shape``; never enlarged."""
    factor = min(1.0, long_side / max(shape[0], shape[1], 1))
    return max(1, round(shape[0] * factor)), max(1, round(shape[1] * factor))


def outlined_thumbnail(
    pixels: np.ndarray, annotation: Annotation, long_side: int = THUMBNAIL_SIZE
) -> np.ndarray:
    """``(h, w, 3)`` uint8: the image made small with its objects outlined in class colours."""
    from skimage.segmentation import find_boundaries
    from skimage.transform import resize

    rows, cols = annotation.shape
    shape = thumbnail_shape((rows, cols), long_side)
    # a cheap stride first, so a 12-megapixel image is never filtered at full size
    step = max(1, min(rows, cols) // (2 * min(shape)))
    rgb = display_rgb(np.asarray(pixels)[::step, ::step])
    if shape != rgb.shape[:2]:
        rgb = resize(rgb, shape, order=1, anti_aliasing=True, preserve_range=True)
        rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    else:
        rgb = rgb.copy()
    palette = np.vstack([annotation.class_set.palette(), _UNCLASSED_RGB]).astype(np.uint8)
    labels = annotation.labels
    if labels.any():
        small = (
            labels
            if labels.shape == shape
            else resize(
                labels[::step, ::step], shape, order=0, preserve_range=True, anti_aliasing=False
            ).astype(np.int32)
        )
        lookup = np.full(int(small.max()) + 1, len(palette) - 1, dtype=np.intp)  # unclassed
        lookup[0] = 0
        for instance_id, class_id in annotation.classes.items():
            if instance_id < len(lookup):
                lookup[instance_id] = class_id
        border = find_boundaries(small, mode="inner")
        rgb[border] = palette[lookup[small[border]]]
    if len(annotation.boxes):
        sy, sx = shape[0] / rows, shape[1] / cols
        for (x, y, w, h), class_id in zip(annotation.boxes.xywh, annotation.boxes.class_ids):
            top, left = int(np.floor(y * sy)), int(np.floor(x * sx))
            bottom, right = int(np.ceil((y + h) * sy)) - 1, int(np.ceil((x + w) * sx)) - 1
            _draw_rectangle(rgb, top, left, bottom, right, palette[int(class_id)])
    return rgb


def _draw_rectangle(
    rgb: np.ndarray, top: int, left: int, bottom: int, right: int, colour: np.ndarray
) -> None:
    """Draw a 1-px rectangle outline (inclusive corners), clipped to the image."""
    rows, cols = rgb.shape[:2]
    r0, r1 = max(top, 0), min(bottom, rows - 1)
    c0, c1 = max(left, 0), min(right, cols - 1)
    if r0 > r1 or c0 > c1:
        return
    for row in (top, bottom):
        if 0 <= row < rows:
            rgb[row, c0 : c1 + 1] = colour
    for col in (left, right):
        if 0 <= col < cols:
            rgb[r0 : r1 + 1, col] = colour


def write_report(
    folder: Path,
    entries: Sequence[tuple[np.ndarray, Annotation]],
    class_set: ClassSet,
    *,
    title: str,
    overwrite: bool = False,
) -> list[Path]:
    """``folder/report.html`` and ``folder/overlays/<stem>.jpg`` for in-memory results
    (``cellquant demo``; a batch run builds the same page from its part files)."""
    from ..core.io.atomic import atomic_path, write_text_atomic
    from ..core.quantify import figure_rows

    written, images = [], []
    for pixels, annotation in entries:
        overlay = folder / "overlays" / f"{Path(annotation.image_name).stem}.jpg"
        overlay.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(overlay, overwrite=overwrite) as tmp:
            tmp.write_bytes(render_thumbnail(pixels, annotation, OVERLAY_SIZE))
        written.append(overlay)
        rows, cols = thumbnail_shape(annotation.shape)
        images.append(
            ReportImage(
                name=annotation.image_name,
                counts=annotation.counts(),
                thumbnail=render_thumbnail(pixels, annotation),
                width=cols,
                height=rows,
                figures=[
                    (r["group"], r["name"], r["value"], r["unit"]) for r in figure_rows(annotation)
                ],
                link=overlay.relative_to(folder).as_posix(),
            )
        )
    page = report_html(images, [], class_set, title=title)
    written.append(write_text_atomic(folder / "report.html", page, overwrite=overwrite))
    return written


def render_thumbnail(
    pixels: np.ndarray, annotation: Annotation, long_side: int = THUMBNAIL_SIZE
) -> bytes:
    """JPEG bytes of :func:`outlined_thumbnail` (no chroma subsampling: outlines stay crisp)."""
    import imagecodecs

    return bytes(
        imagecodecs.jpeg8_encode(
            outlined_thumbnail(pixels, annotation, long_side),
            level=_JPEG_QUALITY,
            subsampling="444",
        )
    )


# --- the page ----------------------------------------------------------------------------------
@dataclass
class ReportImage:
    """One done image on the page."""

    name: str
    counts: dict[str, int]
    thumbnail: bytes  # JPEG
    width: int  # thumbnail size in pixels
    height: int
    #: ``(group, name, value, unit)`` of ``core.quantify.figure_rows``; value None: undefined
    figures: list[tuple] = field(default_factory=list)
    #: the larger overlay the thumbnail opens, relative to the page (None: no link)
    link: str | None = None


#: the figures shown under each thumbnail (the plain shares are in the summary table)
_SHOWN_FIGURES = {
    ("net_percent", "NET"),
    ("net_area", "field_share"),
    ("net_area", "area"),
    ("parasitaemia", "infected_rbc"),
}


def _figure_text(figures: Sequence[tuple]) -> str:
    """NET %, NET area, parasitaemia and the WBC differential of one image, as text."""
    shown = []
    for group, name, value, unit in figures:
        if value is None or not ((group, name) in _SHOWN_FIGURES or group == "wbc_differential"):
            continue
        label = {"net_percent": "NET", "net_area": "NET area", "parasitaemia": "parasitaemia"}.get(
            group, name
        )
        shown.append(f"<span>{html.escape(label)} {value:.4g} {html.escape(unit)}</span>")
    return f'<div class="figures">{"".join(shown)}</div>' if shown else ""


def _colour(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in rgb))


def bar_chart_svg(totals: dict[str, int], class_set: ClassSet, width: int = 560) -> str:
    """Inline SVG: one horizontal bar per class, in its colour, labelled with its total."""
    bar, gap, label_w, number_w = 20, 8, 140, 80
    height = len(totals) * (bar + gap) + gap
    top = max(totals.values(), default=0) or 1
    span = width - label_w - number_w
    parts = [f'<svg width="{width}" height="{height}" role="img" aria-label="objects per class">']
    for i, (name, total) in enumerate(totals.items()):
        y = gap + i * (bar + gap)
        length = round(span * total / top)
        colour = _colour(class_set.color_of(class_set.id_of(name)))
        parts.append(
            f'<text x="{label_w - 8}" y="{y + bar - 5}" text-anchor="end">{html.escape(name)}'
            f'</text><rect x="{label_w}" y="{y}" width="{length}" height="{bar}" '
            f'fill="{colour}" stroke="#333" stroke-width="0.5"/>'
            f'<text x="{label_w + length + 6}" y="{y + bar - 5}">{total}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


_CSS = """
body{font-family:system-ui,sans-serif;margin:16px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 8px}h2{font-size:16px;margin:20px 0 8px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px}
th{background:#eee}td.n{text-align:right}.swatch{display:inline-block;width:12px;height:12px;
margin-right:6px;vertical-align:middle;border:1px solid #333}
.summary{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
svg text{font:12px system-ui,sans-serif}
.gallery{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;padding:6px;background:#fff;border:1px solid #ccc;width:256px}
figure img{display:block;image-rendering:auto}
figcaption{font-size:12px;margin-top:4px;word-break:break-all}
.counts span,.figures span{white-space:nowrap;margin-right:8px}.figures{color:#135}
.failed td{color:#a00}
"""


def report_html(
    images: Sequence[ReportImage],
    failures: Sequence[tuple[str, str]],
    class_set: ClassSet,
    *,
    title: str,
    details: dict[str, str] | None = None,
) -> str:
    """The page, as one string (see the module docstring)."""
    names = list(class_set.names)
    totals = {name: sum(image.counts.get(name, 0) for image in images) for name in names}
    n_images = len(images)
    all_objects = sum(totals.values())
    esc = html.escape
    rows = []
    for name in names:
        colour = _colour(class_set.color_of(class_set.id_of(name)))
        mean = totals[name] / n_images if n_images else 0.0
        share = 100.0 * totals[name] / all_objects if all_objects else 0.0
        rows.append(
            f'<tr><td><span class="swatch" style="background:{colour}"></span>'
            f'{esc(name)}</td><td class="n">{totals[name]}</td>'
            f'<td class="n">{mean:.1f}</td><td class="n">{share:.1f}%</td></tr>'
        )
    info = {
        "images done": str(n_images),
        "images failed": str(len(failures)),
        "objects": str(all_objects),
        **(details or {}),
    }
    info_rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in info.items())
    figures = []
    for image in images:
        data = base64.b64encode(image.thumbnail).decode("ascii")
        counts = "".join(
            f'<span><span class="swatch" style="background:'
            f'{_colour(class_set.color_of(class_set.id_of(name)))}"></span>{esc(name)} '
            f"{image.counts.get(name, 0)}</span>"
            for name in names
        )
        thumbnail = (
            f'<img src="data:image/jpeg;base64,{data}" width="{image.width}" '
            f'height="{image.height}" alt="{esc(image.name)}">'
        )
        if image.link:
            thumbnail = (
                f'<a href="{esc(image.link)}" title="open the overlay at full size">{thumbnail}</a>'
            )
        figures.append(
            f"<figure>{thumbnail}<figcaption><b>{esc(image.name)}"
            f'</b><div class="counts">{counts}</div>{_figure_text(image.figures)}'
            f"</figcaption></figure>"
        )
    failed = ""
    if failures:
        failed_rows = "".join(f"<tr><td>{esc(n)}</td><td>{esc(e)}</td></tr>" for n, e in failures)
        failed = (
            f'<h2>Failed images ({len(failures)})</h2><table class="failed">'
            f"<tr><th>image</th><th>error</th></tr>{failed_rows}</table>"
        )
    head = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>"
    )
    summary = (
        f"<h1>{esc(title)}</h1><p>Objects are outlined in their class colours.</p>"
        f'<div class="summary"><table>{info_rows}</table><table><tr><th>class</th>'
        f"<th>total</th><th>per image</th><th>share</th></tr>{''.join(rows)}</table>"
        f"{bar_chart_svg(totals, class_set)}</div>"
    )
    gallery = f'<h2>Images ({n_images})</h2><div class="gallery">{"".join(figures)}</div>'
    return head + summary + failed + gallery + "</body></html>\n"

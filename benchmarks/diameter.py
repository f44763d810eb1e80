"""Object-diameter estimate: time on a 4032 x 3024 photograph and error on the real images.

Measures ``napari_cellquant.core.scale.estimate_diameter`` against a named peer run in the
same process: a full-resolution granulometry (the pattern spectrum of openings by disks of
growing radius on the same foreground, its area-weighted median opening size as the
diameter), the classical way to read an object size from an image without a model.
cellpose's size model would be the natural peer, but it is not installed here and needs
downloaded weights, so it is not run.

Prints:

1. time of each on 4032 x 3024 RGB images (a blood mosaic with ~300-px RBCs, as a phone on
   the eyepiece at 1000x sees them, and a NET image enlarged 4x), median of ``--rounds``;
2. per image set and resize factor (0.5, 1, 2, 4): the estimate divided by the factor,
   its error against the measured truth and its spread against the 1x estimate:

   - blood_smear_224: truth = median equivalent diameter of single RBCs in the colour maps
     (solidity > 0.93, not cut by the border), per image;
   - net_fluorescence: truth = median box side sqrt(w h) of the unstimulated nuclei (29.4 px),
     against the estimate calibrated by the card (``diameter_px``: what predict uses);
   - bccd: truth = median sqrt(w h) of the RBC boxes not cut by the border, per image;
3. on the DSB2018 validation images at 1x and 2x: ``fluo-resunet``'s size model against the
   weight-free estimate and the peer (truth: median equivalent diameter of the nuclei).

    python benchmarks/diameter.py [--rounds 3] [--bccd 12] [--no-peer-4x]

Needs ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage import io
from skimage.filters import threshold_triangle
from skimage.measure import regionprops
from skimage.transform import rescale

from napari_cellquant.core.models.registry import get_card
from napari_cellquant.core.scale import estimate_diameter, foreground_signal, image_scale

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FACTORS = (0.5, 1.0, 2.0, 4.0)
PHOTO = (3024, 4032)


# --- the peer: full-resolution granulometry ---------------------------------------------------
def granulometry_diameter(image: np.ndarray, steps: int = 24) -> float | None:
    """Diameter at the area-weighted median of the pattern spectrum of disk openings."""
    pixels = image[..., None] if image.ndim == 2 else image[..., :3]
    signal = ndi.gaussian_filter(foreground_signal(pixels.astype(np.float32)), 1.0)
    foreground = ndi.binary_fill_holes(signal > threshold_triangle(signal))
    total = foreground.sum()
    if total == 0:
        return None
    inside = ndi.distance_transform_edt(foreground)
    radii = np.geomspace(1.0, max(float(inside.max()), 1.5), steps)
    remaining = []
    for radius in radii:  # opening = dilation of the erosion, both through distance maps
        core = inside > radius
        opened = ndi.distance_transform_edt(~core) <= radius if core.any() else core
        remaining.append((opened & foreground).sum())
    spectrum = -np.diff(np.concatenate([[total], remaining]))  # area removed at each radius
    if spectrum.sum() == 0:
        return None
    cumulative = np.cumsum(spectrum) / spectrum.sum()
    return float(2 * radii[np.searchsorted(cumulative, 0.5)])


# --- data and truth -------------------------------------------------------------------------
def resized(image: np.ndarray, factor: float) -> np.ndarray:
    if factor == 1.0:
        return image
    out = rescale(
        image.astype(np.float32),
        factor,
        order=1,
        channel_axis=-1,
        anti_aliasing=factor < 1,
        preserve_range=True,
    )
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def blood_set() -> list[tuple[str, np.ndarray, float]]:
    from napari_cellquant.core.classes import BLOOD10
    from napari_cellquant.core.io.masks import read_color_map

    root = DATA / "blood_smear_224"
    out = []
    for path in sorted((root / "images").glob("*.bmp")):
        colours = read_color_map(root / "segments" / path.name, BLOOD10)
        sizes = [
            r.equivalent_diameter_area
            for r in regionprops(colours.labels)
            if BLOOD10.name_of(colours.classes[r.label]).endswith("rbc")
            and r.solidity > 0.93
            and min(r.bbox[:2]) > 0
            and max(r.bbox[2:]) < 224
        ]
        out.append((path.name, io.imread(path)[..., :3], float(np.median(sizes))))
    return out


def net_set() -> list[tuple[str, np.ndarray, float]]:
    root = DATA / "net_fluorescence"
    coco = json.loads((root / "coco.json").read_text())
    unstimulated = [c["id"] for c in coco["categories"] if c["name"] == "unstimulated"]
    truth = float(
        np.median(
            [
                np.sqrt(a["bbox"][2] * a["bbox"][3])
                for a in coco["annotations"]
                if a["category_id"] in unstimulated
            ]
        )
    )
    return [(p.name, io.imread(p)[..., :3], truth) for p in sorted((root / "images").glob("*.jpg"))]


def bccd_set(count: int) -> list[tuple[str, np.ndarray, float]]:
    root = DATA / "bccd"
    paths = sorted((root / "images").glob("*.jpg"))
    out = []
    for path in paths[:: max(1, len(paths) // count)][:count]:
        tree = ET.parse(root / "voc" / f"{path.stem}.xml")
        width, height = int(tree.findtext("size/width")), int(tree.findtext("size/height"))
        sizes = []
        for obj in tree.iter("object"):
            if obj.findtext("name") != "RBC":
                continue
            box = obj.find("bndbox")
            x0, y0, x1, y1 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            if x0 > 1 and y0 > 1 and x1 < width - 1 and y1 < height - 1:
                sizes.append(np.sqrt((x1 - x0) * (y1 - y0)))
        if sizes:
            out.append((path.name, io.imread(path)[..., :3], float(np.median(sizes))))
    return out


# --- runs -----------------------------------------------------------------------------------
def timed(func, image, rounds: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        result = func(image)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def photo_images() -> dict[str, tuple[np.ndarray, float]]:
    """4032 x 3024 test photographs and their true object diameter."""
    name, blood, rbc = blood_set()[0]
    enlarged = resized(blood, 8.0)  # RBCs ~300 px, as a phone on the eyepiece at 1000x
    pad = [(0, PHOTO[0] - enlarged.shape[0]), (0, PHOTO[1] - enlarged.shape[1]), (0, 0)]
    photo = np.pad(enlarged, pad, mode="symmetric")  # mirrored copies of the field
    _, net, nucleus = net_set()[0]
    return {
        f"{name} x8, mirrored": (photo, 8 * rbc),
        "NET image x4": (resized(net, 4.0)[: PHOTO[0], : PHOTO[1]], 4 * nucleus),
    }


def report_set(name: str, items, card_name: str, calibrate: bool, peer_4x: bool) -> None:
    card = get_card(card_name)
    print(
        f"\n{name} ({len(items)} images; truth median {np.median([t for *_, t in items]):.1f} px)"
        f"{'; estimate calibrated by ' + card_name + ' diameter_px' if calibrate else ''}"
    )
    print(
        f"  {'factor':>6}  {'ours: |err| median':>18}  {'within 15%':>10}  {'gave up':>7}  "
        f"{'vs 1x':>6}  {'peer: |err| median':>18}  {'within 15%':>10}  {'vs 1x':>6}"
    )
    base: dict[str, list] = {"ours": [], "peer": []}
    for factor in sorted(FACTORS, key=lambda f: f != 1.0):  # 1x first: the reference
        rows = {"ours": [], "peer": []}
        for _name, image, truth in items:
            pixels = resized(image, factor)
            if calibrate:
                scale = image_scale(pixels, card)
                ours = scale.diameter if scale.source == "estimated" else None
            else:
                found = estimate_diameter(pixels)
                ours = None if found is None else found.diameter
            peer = (
                granulometry_diameter(pixels)
                if peer_4x or pixels.shape[0] * pixels.shape[1] < 4e6
                else np.nan
            )
            rows["ours"].append(np.nan if ours is None else ours / factor / truth)
            rows["peer"].append(np.nan if peer is None else peer / factor / truth)
        cells = []
        for key in ("ours", "peer"):
            ratio = np.array(rows[key])
            if factor == 1.0:
                base[key] = ratio
            err = np.abs(ratio - 1)
            spread = np.nanmedian(np.abs(ratio / base[key] - 1)) if len(base[key]) else np.nan
            cells.append(
                (np.nanmedian(err), np.nanmean(err <= 0.15), np.isnan(ratio).sum(), spread)
            )
        (e, w, g, s), (pe, pw, _, ps) = cells
        print(
            f"  {factor:>6g}  {100 * e:>17.1f}%  {100 * w:>9.0f}%  {g:>7d}  "
            f"{100 * s:>5.1f}%  {100 * pe:>17.1f}%  {100 * pw:>9.0f}%  {100 * ps:>5.1f}%"
        )


def report_size_model(limit: int | None) -> None:
    """fluo-resunet's size model (``core.size_model``) against the weight-free estimate and
    the granulometry peer on the DSB2018 validation images it never saw, at 1x and 2x."""
    import math
    import sys

    from napari_cellquant.core.predict import _resize, load_model
    from napari_cellquant.core.scale import median_object_diameter
    from napari_cellquant.core.size_model import regress_diameter

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from accuracy import dsb2018_val

    model = load_model("fluo-resunet", "cpu")
    readers = {
        "size model (fluo-resunet)": lambda image: regress_diameter(image, model),
        "weight-free estimate": estimate_diameter,
        "granulometry (peer)": granulometry_diameter,
    }
    pairs = dsb2018_val(DATA, limit)
    print(f"\ndsb2018 validation ({len(pairs)} fluorescence images, never fitted on)")
    print(
        f"  {'factor':>6}  {'reader':26s}  {'|err| median':>12}  {'within 15%':>10}  "
        f"{'off > 1.5x':>10}  {'gave up':>7}  {'s / image':>9}"
    )
    for factor in (1.0, 2.0):
        images = [(_resize(image, factor), truth) for image, truth in pairs]
        for name, reader in readers.items():
            ratios, started = [], time.perf_counter()
            for image, truth in images:
                found = reader(image)
                value = getattr(found, "diameter", found)
                true = factor * (median_object_diameter(truth.labels) or math.nan)
                ratios.append(math.nan if value is None else value / true)
            seconds = (time.perf_counter() - started) / len(images)
            err = np.abs(np.log(np.array(ratios)))
            print(
                f"  {factor:>6g}  {name:26s}  {100 * (math.exp(np.nanmedian(err)) - 1):>11.1f}%  "
                f"{np.sum(err <= math.log(1.15)):>10d}  {np.sum(err > math.log(1.5)):>10d}  "
                f"{np.isnan(err).sum():>7d}  {seconds:>9.3f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bccd", type=int, default=12, help="BCCD images to use")
    parser.add_argument(
        "--no-peer-4x",
        dest="peer_4x",
        action="store_false",
        help="skip the peer on images over 4 megapixels (it takes ~10 s each)",
    )
    parser.add_argument(
        "--dsb", type=int, default=None, help="DSB2018 validation images to use (default all)"
    )
    args = parser.parse_args()
    import os

    print(f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"time on {PHOTO[1]} x {PHOTO[0]} RGB uint8 (median of {args.rounds}; peer once)")
    for name, (image, truth) in photo_images().items():
        ours_s, ours = timed(estimate_diameter, image, args.rounds)
        peer_s, peer = timed(granulometry_diameter, image, 1)
        print(
            f"  {name:36s} truth {truth:5.0f} px | ours {ours_s:6.3f} s -> "
            f"{ours.diameter:6.1f} px | full-resolution granulometry {peer_s:6.2f} s -> "
            f"{peer:6.1f} px | speed-up x{peer_s / ours_s:.0f}"
        )
    print(
        "  (NET: truth is the unstimulated nucleus; the raw estimate reads the typical "
        "object, which the card calibrates: see below)"
    )
    # the pixel error: raw estimate vs RBC truth (blood), calibrated vs nucleus truth (NET)
    report_set("blood_smear_224", blood_set(), "blood-unet", False, args.peer_4x)
    report_set("net_fluorescence (nucleus)", net_set(), "net-classical", True, args.peer_4x)
    report_set("bccd (RBC boxes)", bccd_set(args.bccd), "blood-classical", False, args.peer_4x)
    report_size_model(args.dsb)
    print(
        "\n'gave up': images where the estimate found no separate objects (predict then uses "
        "the model's own scale); 'vs 1x': median |estimate(f) / f / estimate(1x) - 1|."
    )


if __name__ == "__main__":
    main()

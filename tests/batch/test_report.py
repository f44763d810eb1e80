"""report.html: outlined thumbnails, a self-contained page, and what a browser shows of it."""

import base64
import re
import shutil
import subprocess

import imagecodecs
import numpy as np
import pytest
from skimage.feature import match_template
from skimage.io import imsave

from napari_cellquant.batch import collect_images, predict_images
from napari_cellquant.batch.report import (
    ReportImage,
    outlined_thumbnail,
    report_html,
    thumbnail_shape,
)
from napari_cellquant.core.annotation import Annotation, Boxes
from napari_cellquant.core.classes import BLOOD3, NET4
from napari_cellquant.core.predict import load_model
from napari_cellquant.core.synthetic import synthetic_blood_smear

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_thumbnail_outlines_objects_in_their_class_colours_and_draws_boxes():
    pixels = np.full((400, 600), 40, np.uint16)  # 16-bit grey: stretched for showing
    pixels[100:200, 100:200] = 900
    labels = np.zeros((400, 600), np.int32)
    labels[100:200, 100:200] = 1  # rbc
    labels[250:330, 350:450] = 2  # wbc
    annotation = Annotation(labels, BLOOD3, classes={1: 1, 2: 2})
    thumb = outlined_thumbnail(pixels, annotation, long_side=300)
    assert thumb.shape == (200, 300, 3) and thumb.dtype == np.uint8
    red, blue = np.array(BLOOD3.colors[0]), np.array(BLOOD3.colors[1])
    assert (thumb[50, 50:100] == red).all() and (thumb[50:100, 50] == red).all()  # top, left
    assert (thumb[125, 175:225] == blue).all()  # top edge of the wbc
    assert not (thumb[75, 75] == red).all()  # inside stays the image
    assert (thumb[75, 75] == thumb[75, 76]).all()
    boxes = Boxes([[60, 40, 300, 200]], [1], [0.9])  # x, y, w, h in image pixels
    net = Annotation.empty((400, 600), NET4, boxes=boxes)
    thumb = outlined_thumbnail(np.zeros((400, 600, 3), np.uint8), net, long_side=300)
    colour = np.array(NET4.colors[0])
    assert (thumb[20, 30:180] == colour).all() and (thumb[20:120, 30] == colour).all()
    assert (thumb[119, 30:180] == colour).all() and (thumb[20:120, 179] == colour).all()
    assert thumb[21:119, 31:179].max() == 0


def test_small_images_are_not_enlarged():
    assert thumbnail_shape((100, 80)) == (100, 80)
    assert thumbnail_shape((1024, 768)) == (256, 192)
    assert thumbnail_shape((768, 1024)) == (192, 256)


def test_page_is_self_contained_with_summary_and_every_image():
    thumb = imagecodecs.jpeg8_encode(np.zeros((8, 10, 3), np.uint8))
    images = [
        ReportImage(f"img_{i}.png", {"rbc": i, "wbc": 1, "platelet": 0}, thumb, 10, 8)
        for i in range(3)
    ]
    page = report_html(images, [("bad <1>.png", "corrupt & truncated")], BLOOD3, title="run")
    assert "http" not in page and "<script" not in page and "@import" not in page
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 3 and all(s.startswith("data:image/jpeg;base64,") for s in sources)
    assert base64.b64decode(sources[0].split(",", 1)[1]) == thumb
    assert page.count("<figure>") == 3 and "<svg" in page
    # totals: rbc 0+1+2, wbc 3; escaped failure text
    assert re.search(r"rbc</td><td class=\"n\">3</td>", page)
    assert re.search(r"wbc</td><td class=\"n\">3</td>", page)
    assert "bad &lt;1&gt;.png" in page and "corrupt &amp; truncated" in page


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="needs headless Chromium (Debian package "
    "`chromium`; scripts/setup_display.sh installs it)",
)
def test_chromium_shows_each_thumbnail_with_class_coloured_outlines(tmp_path):
    folder = tmp_path / "smears"
    folder.mkdir()
    for seed in (1, 2, 3):
        pixels, _ = synthetic_blood_smear(shape=(240, 320), seed=seed)
        imsave(folder / f"smear_{seed}.png", pixels, check_contrast=False)
    out = tmp_path / "out"
    predict_images(collect_images([folder]), load_model("blood-classical"), out, diameter=34)
    page = (out / "report.html").read_text()
    assert "http" not in page  # nothing to fetch
    thumbs = [
        imagecodecs.jpeg8_decode(base64.b64decode(s))
        for s in re.findall(r'src="data:image/jpeg;base64,([^"]*)"', page)
    ]
    assert len(thumbs) == 3 and all(t.shape == (192, 256, 3) for t in thumbs)

    screenshot = tmp_path / "page.png"
    profile = tmp_path / "profile"
    profile.mkdir()
    run = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            f"--user-data-dir={profile}",
            f"--screenshot={screenshot}",
            "--window-size=1280,900",
            (out / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert screenshot.is_file(), run.stderr[-2000:]
    shot = imagecodecs.png_decode(screenshot.read_bytes())[..., :3]
    grey = shot.astype(np.float64).mean(axis=-1)
    red = np.array(BLOOD3.colors[0], dtype=np.float64)  # rbc outlines
    near_red = np.linalg.norm(shot.astype(np.float64) - red, axis=-1) < 45
    corners = []
    for thumb in thumbs:
        # where the browser drew this thumbnail: the best match of it in the screenshot
        score = match_template(grey, thumb.astype(np.float64).mean(axis=-1))
        row, col = np.unravel_index(np.argmax(score), score.shape)
        assert score[row, col] > 0.95
        shown = shot[row : row + 192, col : col + 256].astype(np.int16)
        assert np.abs(shown - thumb).mean() < 4  # drawn at its own size, colours intact
        # the rbc outlines are there in the class colour, in every thumbnail
        assert near_red[row : row + 192, col : col + 256].sum() > 300
        corners.append((int(row), int(col)))
    assert len(set(corners)) == 3  # three different places on the page

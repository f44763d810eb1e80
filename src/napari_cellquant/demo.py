"""The main job on the bundled samples, as a user would run it on their own images.

``cellquant demo OUTDIR`` writes, for each sample (``net_fluorescence``, ``blood_photo``,
``blood_smear``):

- ``OUTDIR/<sample>/<image>``: the bundled NET micrograph, a BCCD smear photograph (MIT
  licence; not among the photographs ``blood-detector`` trained on), or a synthetic smear;
- ``OUTDIR/<sample>/truth/``: its annotations (the expert NET boxes, BCCD's VOC boxes, the
  smear's exact instances) as COCO ``annotations.json``, ``masks/`` and ``counts.csv``;
- ``OUTDIR/<sample>/predictions/``: what the model finds (``net-classical``,
  ``blood-detector``, ``blood-classical``), through the same ``predict`` path as
  ``cellquant predict`` (no diameter given for the photograph: the detector measures it), in
  the same three formats, and ``report.html`` with each prediction outlined (its thumbnail
  opens ``overlays/<image>.jpg``, the overlay at full size);

and ``OUTDIR/comparison.csv``: counts per class, truth next to prediction.
"""

from __future__ import annotations

import csv
import io
import shutil
from dataclasses import dataclass
from pathlib import Path

from .core.annotation import Annotation
from .core.io import write_annotations
from .core.io.atomic import atomic_path, write_text_atomic

SAMPLES_DIR = Path(__file__).with_name("samples")
NET_IMAGE = SAMPLES_DIR / "K.Fiok3_1Per2h006_scale.jpg"
NET_BOXES = SAMPLES_DIR / "net_fluorescence.json"
#: BCCD's photograph 0 (MIT licence, LICENSE-BCCD.txt); BCCD leaves some of its RBCs unboxed
BLOOD_PHOTO_BOXES = SAMPLES_DIR / "BloodImage_00000.xml"
OUTPUT_FORMATS = (("coco", "annotations.json"), ("masks", "masks"), ("csv", "counts.csv"))


@dataclass
class DemoSample:
    key: str
    truth: Annotation
    model: str
    diameter: float | None = None


def _write_image(sample_dir: Path, truth: Annotation, pixels, overwrite: bool) -> Path:
    from skimage.io import imsave

    target = sample_dir / truth.image_name
    with atomic_path(target, overwrite=overwrite) as tmp:
        if pixels is None:
            shutil.copyfile(truth.image_path, tmp)
        else:
            imsave(tmp, pixels, check_contrast=False)
    return target


def _samples(outdir: Path, overwrite: bool) -> tuple[list[DemoSample], list[Path]]:
    from .core.io.coco import read_coco
    from .core.io.voc import read_voc
    from .core.synthetic import synthetic_blood_smear

    (net,) = read_coco(NET_BOXES, images_dir=SAMPLES_DIR)
    (photo,) = read_voc(BLOOD_PHOTO_BOXES, images_dir=SAMPLES_DIR)
    pixels, smear = synthetic_blood_smear(shape=(512, 512), seed=0)
    smear.image_name = "synthetic_blood_smear.png"
    samples = [
        DemoSample("net_fluorescence", net, "net-classical"),
        DemoSample("blood_photo", photo, "blood-detector"),
        # the generator's red cells are 2 x 17 px across
        DemoSample("blood_smear", smear, "blood-classical", diameter=34.0),
    ]
    images = [
        _write_image(outdir / "net_fluorescence", net, None, overwrite),
        _write_image(outdir / "blood_photo", photo, None, overwrite),
        _write_image(outdir / "blood_smear", smear, pixels, overwrite),
    ]
    return samples, images


def _comparison_rows(sample: DemoSample, found: Annotation) -> list[list]:
    """Truth and model side by side, in blood3 when either side is blood3 (the truth's
    blood10 classes, or the model's typed WBCs, are summed by name)."""
    from .core.classes import BLOOD3

    truth = sample.truth
    if BLOOD3.name in (truth.class_set.name, found.class_set.name):
        truth, found = truth.mapped_to(BLOOD3), found.mapped_to(BLOOD3)
    want = truth.counts()
    return [
        [found.image_name, sample.model, name, want.get(name, ""), count]
        for name, count in found.counts().items()
    ]


def run_demo(outdir: Path, *, overwrite: bool = False) -> list[Path]:
    """Write the sample images, their truth and the models' predictions."""
    from .batch.report import write_report
    from .core.io.images import read_image
    from .core.predict import load_model, predict

    samples, images = _samples(outdir, overwrite)
    written = list(images)
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["image", "model", "class", "truth", "predicted"])
    for sample, image_path in zip(samples, images, strict=True):
        found = predict(read_image(image_path), load_model(sample.model), diameter=sample.diameter)
        found.image_name = sample.truth.image_name
        for part, annotation in (("truth", sample.truth), ("predictions", found)):
            for to, name in OUTPUT_FORMATS:
                written += write_annotations(
                    [annotation], image_path.parent / part / name, to=to, overwrite=overwrite
                )
        written += write_report(
            image_path.parent / "predictions",
            [(read_image(image_path), found)],
            found.class_set,
            title=f"{sample.model} on {found.image_name}",
            overwrite=overwrite,
        )
        writer.writerows(_comparison_rows(sample, found))
    written.append(
        write_text_atomic(outdir / "comparison.csv", table.getvalue(), overwrite=overwrite)
    )
    return written

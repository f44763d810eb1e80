"""The ``cellquant`` command: the same core as the napari plugin, for scripts and batch runs.

Exit status: 0 success, 1 an input or output problem (named on stderr), 2 a usage error,
3 some images failed while the others were written.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .core.errors import CellquantError, OutputExistsError

if TYPE_CHECKING:
    from .core.models.card import ModelCard

log = logging.getLogger("napari_cellquant")

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3


def _convert(args: argparse.Namespace) -> int:
    from .core.io import read_annotations, write_annotations

    annotations = read_annotations(
        args.src, kind=args.from_kind, class_set=args.classes, images_dir=args.images
    )
    written = write_annotations(
        annotations, args.dst, to=args.to, encoding=args.encoding, overwrite=args.overwrite
    )
    objects = sum(len(a.instance_ids()) + len(a.boxes) for a in annotations)
    log.info(
        "read %d image(s), %d object(s); wrote %d file(s)", len(annotations), objects, len(written)
    )
    for path in written:
        print(path)
    return EXIT_OK


def _flip_views_text(card: ModelCard) -> str:
    """The card's mirror views, for the models whose maps can be averaged over them."""
    from .core.predict import flip_views_of, takes_flip_views

    return str(flip_views_of(card, None)) if takes_flip_views(card) else "-"


def _models(args: argparse.Namespace) -> int:
    from .core.models.registry import builtin_cards, weights_status
    from .core.scale import expected_pixel_size_um

    rows = [
        (
            "name",
            "kind",
            "task",
            "classes",
            "diameter px",
            "pixel um",
            "flip views",
            "weights",
            "description",
        )
    ]
    for card in builtin_cards().values():
        diameter = ", ".join(f"{k} {v:g}" for k, v in card.diameter_px.items()) or "-"
        pixel = expected_pixel_size_um(card)
        rows.append(
            (
                card.name,
                card.kind,
                card.task,
                card.class_set,
                diameter,
                "-" if pixel is None else f"{pixel:.3g}",
                _flip_views_text(card),
                weights_status(card),
                card.description,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    return EXIT_OK


def _predict(args: argparse.Namespace) -> int:
    from .batch import ModelSpec, collect_images, predict_images
    from .core.predict import flip_views_of, load_model

    if args.workers is not None and args.workers < 1:
        print(
            "error: --workers must be 1 or more (leave it out to run in this process)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.diameter is not None and not (args.diameter >= 0 and math.isfinite(args.diameter)):
        print(
            f"error: --diameter must be a positive number of pixels, or 0 to estimate it "
            f"from each image (got {args.diameter:g})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.pixel_size is not None and not (args.pixel_size > 0 and math.isfinite(args.pixel_size)):
        print(
            f"error: --pixel-size must be a positive number of micrometres per pixel "
            f"(got {args.pixel_size:g})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.diameter == 0:  # as in Segment: 0 means "estimate it"
        args.diameter = None
    try:  # nothing has run yet, so a bad input, model or weights is a usage error
        images = collect_images(args.inputs)
        model = load_model(args.model, args.device, weights=args.weights)
        flip_views_of(model.card, args.flip_views)
    except CellquantError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # workers may run elsewhere: name card and weights files by absolute path
    name = str(Path(args.model).resolve()) if Path(args.model).is_file() else str(args.model)
    spec = ModelSpec(
        name, args.device, None if args.weights is None else str(Path(args.weights).resolve())
    )

    def report(done: int, total: int, path: Path, status: str) -> None:
        print(f"[{done}/{total}] {path.name}: {status}", file=sys.stderr)

    result = predict_images(
        images,
        spec,
        args.outdir,
        tile=args.tile,
        overlap=args.overlap,
        diameter=args.diameter,
        pixel_size_um=args.pixel_size,
        flip_views=args.flip_views,
        overwrite=args.overwrite,
        force=args.force,
        workers=args.workers or 0,
        scheduler=args.scheduler,
        loaded=model,
        on_image=report,
    )
    for path, message in result.failures:
        print(f"error: {path}: {message}", file=sys.stderr)
    resumed = f" ({len(result.skipped)} already done before)" if result.skipped else ""
    failed = f"; {len(result.failures)} failed, listed in failures.csv" if result.failures else ""
    print(
        f"{result.complete} of {len(images)} image(s) done{resumed}{failed}; results and "
        f"report.html in {args.outdir}",
        file=sys.stderr,
    )
    return EXIT_PARTIAL if result.failures else EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    for path in run_demo(Path(args.outdir), overwrite=args.overwrite):
        print(path)
    return EXIT_OK


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from .core.io import read_annotations
    from .core.metrics import evaluate

    gt = read_annotations(args.gt, class_set=args.classes, images_dir=args.images)
    pred = read_annotations(args.pred, class_set=args.classes, images_dir=args.images)
    # predictions in a finer class set are scored in the truth's (blood10 -> blood3 by name)
    pred = [p.mapped_to(gt[0].class_set, strict=True) for p in pred]
    print(json.dumps(evaluate(gt, pred, iou=args.iou), indent=2))
    return EXIT_OK


def _train(args: argparse.Namespace) -> int:
    from .core.training import TrainingConfig, load_training_pairs, train

    pairs = load_training_pairs(args.images, args.annotations, class_set=args.classes)
    config = TrainingConfig(
        base=args.model,
        images=[image for image, _ in pairs],
        annotations=[annotation for _, annotation in pairs],
        output=args.output,
        epochs=args.epochs,
        val_fraction=args.val_fraction,
        batch_size=args.batch_size,
        crop=args.crop,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        resume=args.resume,
        patience=args.patience,
        from_scratch=args.from_scratch,
        overwrite=args.overwrite,
    )
    live = sys.stderr.isatty()

    def report(event) -> None:  # event: a core.training TrainingEvent
        if event.phase == "start":
            base = "none" if event.base_score is None else f"{event.base_score:.3f}"
            print(
                f"training {len(pairs)} image(s) for {event.epochs} epochs, "
                f"{event.total_steps} steps; base model score {base}",
                file=sys.stderr,
            )
        elif event.phase == "step" and live:
            print(f"\r{event.describe()}", end="", file=sys.stderr, flush=True)
        elif event.phase == "epoch":
            print(f"{chr(13) if live else ''}{event.describe()}", file=sys.stderr)

    result = train(config, progress=report)
    base = "none" if result.base_score is None else f"{result.base_score:.3f}"
    new = "none" if result.score is None else f"{result.score:.3f}"
    print(
        f"{result.score_name}: base {base}, new {new} (epoch {result.best_epoch}"
        f"{', stopped early' if result.stopped_early else ''})",
        file=sys.stderr,
    )
    for message in result.warnings:
        print(f"warning: {message}", file=sys.stderr)
    if result.weights is None:
        print("error: no epoch finished, nothing was written", file=sys.stderr)
        return EXIT_ERROR
    print(result.weights)
    print(result.card)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    from .core.io import FORMATS, KINDS

    parser = argparse.ArgumentParser(
        prog="cellquant",
        description="Segment, count and convert cell annotations (napari-cellquant).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="say more on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = sub.add_parser(
        "convert",
        help="convert annotations between COCO, VOC, YOLO, QuPath GeoJSON, Fiji ROI sets, "
        "masks and counts CSV",
        description="Read annotations from SRC (kind detected from content) and write them to DST.",
    )
    convert.add_argument("src", type=Path, metavar="SRC", help="annotation file or folder")
    convert.add_argument("dst", type=Path, metavar="DST", help="output file or folder")
    convert.add_argument("--to", required=True, choices=FORMATS, help="output format")
    convert.add_argument("--from", dest="from_kind", choices=KINDS, help="force the input kind")
    convert.add_argument(
        "--classes", help="class set of masks and colour maps (blood10, blood3, net4, cell)"
    )
    convert.add_argument("--images", type=Path, help="folder holding the images")
    convert.add_argument(
        "--rle",
        dest="encoding",
        action="store_const",
        const="rle",
        default="polygon",
        help="COCO segmentations as RLE (exact) instead of polygons",
    )
    convert.add_argument("--overwrite", action="store_true", help="replace existing files")
    convert.set_defaults(handler=_convert)

    predict = sub.add_parser(
        "predict",
        help="segment or detect objects in images and write COCO, masks and counts",
        description="Run a model on images (files, folders or glob patterns) and write "
        "OUTDIR/annotations.json, counts.csv, figures.csv, objects.csv, masks/, overlays/, "
        "failures.csv and report.html. A rerun with the same OUTDIR, model and settings "
        "resumes: only images without complete outputs are done. Exit status 3 when some "
        "images failed (see failures.csv).",
    )
    predict.add_argument("inputs", nargs="+", metavar="IMAGES_OR_FOLDERS")
    predict.add_argument(
        "-m",
        "--model",
        required=True,
        help="built-in model name (see `cellquant models`), card or weights file",
    )
    predict.add_argument("-o", "--outdir", type=Path, required=True, help="output folder")
    predict.add_argument("--weights", type=Path, help="local weights file for the model")
    predict.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda:0 ...")
    predict.add_argument("--tile", type=int, help="tile size in pixels (default: the card's)")
    predict.add_argument(
        "--overlap", type=float, help="tile overlap fraction (default: the card's)"
    )
    predict.add_argument(
        "--diameter",
        type=float,
        help="typical object diameter in pixels (RBC for blood, nucleus for "
        "NETs and fluorescence); the image is rescaled to the model's scale "
        "and the result back. Leave it out to estimate it from each image "
        "(printed per image); pass it when the images hold few separate "
        "objects (dense smears)",
    )
    predict.add_argument(
        "--pixel-size",
        type=float,
        metavar="UM",
        help="micrometres per pixel, for images whose files do not record "
        "it (OME-TIFF, ImageJ and TIFF resolution tags are read from each "
        "file); gives the model's scale, densities and areas in um^2",
    )
    predict.add_argument(
        "--flip-views",
        type=int,
        choices=(1, 2, 4),
        help="how many mirror images of each tile a segmentation network averages its "
        "maps over (default: the model's, see `cellquant models`); 1 is fastest, "
        "4 costs four network passes",
    )
    predict.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an OUTDIR that holds other results (another model or settings, or files "
        "not from `cellquant predict`); a run with the same settings is still resumed",
    )
    predict.add_argument(
        "--force",
        action="store_true",
        help="redo every image, even those with complete outputs in OUTDIR (implies --overwrite)",
    )
    where = predict.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="run on a local dask cluster of N worker processes (default: in this process)",
    )
    where.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on a running dask.distributed cluster, e.g. tcp://host:8786",
    )
    predict.set_defaults(handler=_predict)

    models = sub.add_parser("models", help="list the models, their class sets and weights")
    models.set_defaults(handler=_models)

    demo = sub.add_parser(
        "demo",
        help="run the main job on the bundled sample data",
        description="Open the bundled samples with their annotations and write COCO, masks "
        "and counts into OUTDIR.",
    )
    demo.add_argument("outdir", type=Path, metavar="OUTDIR")
    demo.add_argument("--overwrite", action="store_true", help="replace existing files")
    demo.set_defaults(handler=_demo)

    train = sub.add_parser(
        "train",
        help="train or fine-tune a model on annotated images",
        description="Fine-tune MODEL (or train its architecture from scratch when it has no "
        "weights) on images and their annotations (COCO, VOC, label images, colour maps with "
        "--classes, mask folders); writes the weights to OUTPUT and a model card beside it "
        "that `cellquant predict -m OUTPUT` accepts.",
    )
    train.add_argument("--images", type=Path, help="folder holding the images")
    train.add_argument("--annotations", type=Path, required=True, help="annotation file or folder")
    train.add_argument(
        "-m", "--model", required=True, help="base model: built-in name, card or weights file"
    )
    train.add_argument("-o", "--output", type=Path, required=True, help="new weights file (.pt)")
    train.add_argument("--epochs", type=int, default=50, help="epochs (default 50)")
    train.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="share of images held out for validation (default 0.2)",
    )
    train.add_argument("--batch-size", type=int, default=4, help="crops per step (default 4)")
    train.add_argument("--crop", type=int, default=256, help="crop edge in pixels (default 256)")
    train.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    train.add_argument(
        "--patience",
        type=int,
        default=15,
        help="stop after this many epochs without improvement (default 15)",
    )
    train.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    train.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda:0 ...")
    train.add_argument(
        "--classes", help="class set of colour maps and mask folders (blood10, blood3, net4, cell)"
    )
    train.add_argument(
        "--resume", action="store_true", help="continue from OUTPUT's checkpoint (<stem>.resume.pt)"
    )
    train.add_argument(
        "--from-scratch", action="store_true", help="ignore the base model's weights"
    )
    train.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    train.set_defaults(handler=_train)

    evaluate = sub.add_parser(
        "evaluate",
        help="score predictions against ground truth; prints JSON",
        description="Compare predicted annotations with ground truth (COCO files or mask "
        "folders, images matched by file name) and print one JSON object: COCO AP and AP50 "
        "for masks and boxes, precision/recall/F1 at --iou, per-class and mean IoU, counts "
        "per class, count MAE and, for NET data, NET %% error.",
    )
    evaluate.add_argument("--gt", type=Path, required=True, help="ground-truth file or folder")
    evaluate.add_argument("--pred", type=Path, required=True, help="predictions file or folder")
    evaluate.add_argument(
        "--iou",
        type=float,
        default=0.5,
        help="IoU at which a prediction finds an object (default 0.5)",
    )
    evaluate.add_argument(
        "--classes", help="class set of masks and colour maps (blood10, blood3, net4, cell)"
    )
    evaluate.add_argument("--images", type=Path, help="folder holding the images")
    evaluate.set_defaults(handler=_evaluate)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s: %(message)s",
    )
    # Warnings such as a rescaled annotation must reach a person running a script.
    warnings.showwarning = _show_warning
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except OutputExistsError as exc:  # the command line's flag, not the Python keyword
        print(f"error: {exc.for_command_line()}", file=sys.stderr)
        return EXIT_ERROR
    except CellquantError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

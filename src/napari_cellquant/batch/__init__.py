"""Predict over many images and write the same files the plugin writes; resumable.

:func:`predict_images` runs a model over a list of images, in this process or on a
dask.distributed cluster (a LocalCluster of worker processes, or a running scheduler), and
writes one output folder (layout in :mod:`.outdir`): per-image masks and part files as each
image finishes, then the merged ``annotations.json``, ``counts.csv``, ``failures.csv`` and
``report.html`` rebuilt from the part files. The files are the same whatever runs the work:
each image is predicted on its own, and ids follow file-name order.

A folder is resumed when it holds a run with the same model and settings: only images
without complete outputs are done. ``force`` redoes every image; ``overwrite`` allows
replacing a folder that holds other results (another model or settings, or files not written
by a batch run), which then starts afresh. An image that fails (unreadable, corrupt, wrong
dimensions) is listed in ``failures.csv`` and the others still complete; an output that cannot
be written stops the run with :class:`~..core.errors.OutputError` after the images before it
are complete on disk, so the next run resumes from there.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import InputError, OutputError
from ..core.predict import Model, flip_views_of
from ..core.scale import describe_scale
from .inputs import collect_images
from .outdir import OutputFolder, run_record
from .work import ImageResult, ModelSpec, Settings, predict_one

log = logging.getLogger(__name__)

#: ``on_image(done, total, path, status)`` after each image finishes.
ImageCallback = Callable[[int, int, Path, str], None]


@dataclass
class BatchResult:
    """What a batch run did: images done now, images already done, failures, files written."""

    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)

    @property
    def complete(self) -> int:
        """Images with complete outputs after the run (done now or before)."""
        return len(self.done) + len(self.skipped)


def predict_images(
    images: Sequence[Path],
    model: Model | ModelSpec,
    outdir: Path,
    *,
    tile: int | None = None,
    overlap: float | None = None,
    diameter: float | None = None,
    pixel_size_um: float | None = None,
    flip_views: int | None = None,
    overwrite: bool = False,
    force: bool = False,
    workers: int = 0,
    scheduler: str | None = None,
    loaded: Model | None = None,
    on_image: ImageCallback | None = None,
) -> BatchResult:
    """Run a model on every image and write the output folder ``outdir``.

    Parameters
    ----------
    images
        Image files, e.g. from :func:`collect_images` (file names must be unique).
    model
        A loaded :class:`~..core.predict.Model` (in-process only) or a :class:`ModelSpec`
        (name or card path, device, weights) that each dask worker loads itself.
    outdir
        The output folder; checked (writable, free space, what it holds) before any work.
    tile, overlap, diameter, flip_views
        Prediction settings (see :func:`~..core.predict.predict`).
    pixel_size_um
        Micrometres per pixel of every image, for those whose files do not record it
        (:func:`~..core.io.image_metadata.read_image_metadata`); it gives the model's scale,
        the density and the µm² of ``objects.csv``.
    overwrite
        Replace a folder holding other results instead of refusing; a folder holding this
        same run is still resumed.
    force
        Redo every image, even those with complete outputs (implies ``overwrite``).
    workers
        Run on a new local dask cluster of this many worker processes (0: in this process).
    scheduler
        Address of a running dask scheduler to run on instead (``tcp://host:8786``).
    loaded
        The model of ``model`` when it is a spec and already loaded here (in-process runs
        then use it instead of loading it again).
    on_image
        Called after each image this run works on, with the count over all images.

    Raises
    ------
    OutputError, OutputExistsError
        The folder cannot be used; or an output failed to write (disk full ...), in which
        case the images finished before are complete on disk and a rerun resumes.
    InputError
        A cluster cannot be started or reached, or a Model is given for a cluster run.
    """
    from ..core.models.registry import get_card

    if workers < 0:
        raise InputError(f"--workers must be 0 or more, got {workers}")
    distributed = bool(workers) or scheduler is not None
    if isinstance(model, ModelSpec):
        spec: ModelSpec | None = model
        card = loaded.card if loaded is not None else get_card(model.name_or_path)
        weights = model.weights
    else:
        if distributed:
            raise InputError(
                "a dask run needs a ModelSpec (model name or card path): "
                "workers load the model themselves"
            )
        spec, loaded, card, weights = None, model, model.card, None
    if pixel_size_um is not None and not (pixel_size_um > 0 and math.isfinite(pixel_size_um)):
        raise InputError(
            f"--pixel-size must be a positive number of micrometres, got {pixel_size_um:g}"
        )
    flip_views_of(card, flip_views)  # a bad value is refused before the folder is touched
    settings = Settings(
        tile=tile,
        overlap=overlap,
        diameter=diameter,
        pixel_size_um=pixel_size_um,
        flip_views=flip_views,
    )
    record = run_record(
        card.name, card.to_dict(), None if weights is None else str(weights), settings.as_record()
    )
    folder, resume = OutputFolder.open(Path(outdir), record, force=force, overwrite=overwrite)

    result = BatchResult()
    todo = []
    for path in images:
        if resume and folder.read_part(path) is not None:
            result.skipped.append(path)
        else:
            todo.append(path)
    if result.skipped:
        log.info(
            "%d of %d image(s) already have complete outputs in %s",
            len(result.skipped),
            len(images),
            outdir,
        )
    with _results(todo, spec, loaded, settings, workers, scheduler) as results:
        for result_of_image in results:
            _record(folder, result_of_image, result)
            if on_image is not None:
                status = (
                    f"failed: {result_of_image.error}"
                    if result_of_image.error
                    else _describe(result_of_image)
                )
                on_image(
                    result.complete + len(result.failures),
                    len(images),
                    result_of_image.path,
                    status,
                )
    result.written += folder.rebuild(
        images,
        result.failures,
        card.classes,
        title=f"cellquant: {card.name} on {len(images)} image(s)",
    )
    return result


def _record(folder: OutputFolder, image: ImageResult, result: BatchResult) -> None:
    if not image.ok:
        result.failures.append((image.path, str(image.error)))
        return
    try:
        result.written += folder.write_image(image)
    except OutputError as exc:
        raise OutputError(
            f"{exc}; stopped. The {result.complete} image(s) finished before are complete in "
            f"{folder.root}: free space or fix the folder and run the same command to resume"
        ) from exc
    result.done.append(image.path)


def _describe(image: ImageResult) -> str:
    assert image.annotation is not None
    counts = image.annotation.counts()
    text = (
        f"{sum(counts.values())} objects ("
        + ", ".join(f"{name} {n}" for name, n in counts.items())
        + ")"
    )
    described = describe_scale(image.annotation.meta)
    return f"{text}, {described}" if described else text


@contextlib.contextmanager
def _results(
    todo: Sequence[Path],
    spec: ModelSpec | None,
    loaded: Model | None,
    settings: Settings,
    workers: int,
    scheduler: str | None,
) -> Iterator[Iterator[ImageResult]]:
    """The results of ``todo``, from this process or from a dask cluster (closed on exit)."""
    if not todo:
        yield iter(())
        return
    if not workers and scheduler is None:
        model = loaded if loaded is not None else spec.load()  # type: ignore[union-attr]
        yield (predict_one(model, Path(path), settings) for path in todo)
        return
    from .cluster import dask_client, iter_on_cluster

    assert spec is not None
    with dask_client(workers=workers, scheduler=scheduler) as client:
        results = iter_on_cluster(client, spec, todo, settings, workers=workers)
        try:
            yield results
        finally:
            results.close()


__all__ = ["BatchResult", "ModelSpec", "collect_images", "predict_images"]

"""Running the per-image work on a dask.distributed cluster: local processes or a scheduler.

Each image is one task (:func:`~.work.predict_on_worker`); workers load the model from its
name or card path once per process, and results come back to the driver as they finish, which
writes them. Worker processes that die (out of memory, a crash in a native library) are retried
by dask on other workers; an image that kills workers repeatedly comes back as a failure.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..core.errors import InputError
from .work import ImageResult, ModelSpec, Settings, describe_error, predict_on_worker

log = logging.getLogger(__name__)

#: How long to wait for a scheduler and for its first worker.
CONNECT_TIMEOUT_S = 60
#: Packages that must have the same version on the driver and every worker.
SAME_VERSION = ("napari_cellquant", "torch")


def torch_threads_per_worker(workers: int) -> int:
    """Torch threads for each of ``workers`` one-thread worker processes on this machine."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


@contextlib.contextmanager
def dask_client(*, workers: int = 0, scheduler: str | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` on a new LocalCluster of ``workers`` processes (one thread
    each), or on the running cluster at ``scheduler``; closed (and the local cluster shut
    down) on exit.

    Raises
    ------
    InputError
        dask.distributed is not installed, the scheduler cannot be reached or has no
        workers, or its workers lack this package or torch in the driver's versions.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise InputError(
            "--workers and --scheduler need dask.distributed: "
            "pip install 'napari-cellquant[cluster]'"
        ) from None
    cluster = None
    if scheduler is None:
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            scheduler_kwargs={"dashboard": False},
            silence_logs=logging.ERROR,
        )
        client = Client(cluster)
    else:
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError) as exc:
            raise InputError(
                f"cannot connect to the dask scheduler ({exc})", source=f"--scheduler {scheduler}"
            ) from None
    try:
        if scheduler is not None:
            _check_workers(client, scheduler)
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _check_workers(client: Any, scheduler: str) -> None:
    try:
        client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
    except (TimeoutError, OSError):
        raise InputError(
            f"no worker joined within "
            f"{CONNECT_TIMEOUT_S} s; start some with `dask worker {scheduler}`",
            source=f"--scheduler {scheduler}",
        ) from None
    versions = client.get_versions(packages=list(SAME_VERSION))
    mine = versions["client"]["packages"]
    for address, info in sorted(versions["workers"].items()):
        theirs = info["packages"]
        for package in SAME_VERSION:
            if theirs.get(package) != mine.get(package):
                found = theirs.get(package) or "not installed"
                raise InputError(
                    f"worker {address} has {package} {found}, this machine "
                    f"{mine.get(package)}; install the same versions on every worker",
                    source=f"--scheduler {scheduler}",
                )


def iter_on_cluster(
    client: Any, spec: ModelSpec, images: Sequence[Path], settings: Settings, *, workers: int = 0
) -> Iterator[ImageResult]:
    """Submit one task per image and yield the results as they finish (any order)."""
    from distributed import as_completed

    if workers:
        spec = replace(spec, torch_threads=torch_threads_per_worker(workers))
    futures = {
        client.submit(predict_on_worker, spec, str(path), settings, pure=False): Path(path)
        for path in images
    }
    try:
        for future, result in as_completed(list(futures), with_results=True, raise_errors=False):
            path = futures.pop(future)
            future.release()
            if isinstance(result, ImageResult):
                yield result
            else:  # the task itself failed: e.g. its worker died again and again
                error = result if isinstance(result, BaseException) else RuntimeError(result)
                yield ImageResult(path=path, error=describe_error(error, path))
    finally:
        for future in futures:  # stopped early: do not leave work running
            future.cancel()

"""Running long work to its end: the one driver of the project's progress generators.

Long work (:func:`~napari_cellquant.core.inference.iter_predict_maps`,
:func:`~napari_cellquant.core.predict.iter_predict`,
:func:`~napari_cellquant.core.training.iter_train`) is a generator that yields progress and
returns its result, so napari's ``thread_worker`` can run it and cancel it at any yield.
Scripts, the CLI and the batch engine call the plain functions, which run the generator here.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TypeVar

from .errors import CancelledError

__all__ = ["drive"]

Event = TypeVar("Event")
Result = TypeVar("Result")


def drive(
    steps: Generator[Event, None, Result],
    progress: Callable[[Event], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    *,
    what: str = "work",
) -> Result:
    """Run ``steps`` to the end and return its value.

    ``progress(event)`` is called with every event. When ``cancel()`` returns True after an
    event, the generator is closed (its ``finally`` blocks run, so files stay whole) and
    :class:`~napari_cellquant.core.errors.CancelledError` ("<what> cancelled") is raised.
    """
    while True:
        try:
            event = next(steps)
        except StopIteration as finished:
            return finished.value
        if progress is not None:
            progress(event)
        if cancel is not None and cancel():
            steps.close()
            raise CancelledError(f"{what} cancelled")

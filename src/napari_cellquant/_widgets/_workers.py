"""Starting napari thread workers from the widgets, and the Run / Cancel job they share."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: workers started through :func:`start_soon` that have not finished yet
_running = 0


def start_soon(worker: Any) -> None:
    """Start ``worker`` on the next turn of the Qt event loop.

    A worker emits ``finished`` from its own thread; a slot connected after that emission
    never hears it. Deferring the start lets whoever asked for the worker (a test's
    ``qtbot.waitSignal``, a script) connect to it first; the user sees no difference.
    """
    from qtpy.QtCore import QTimer

    _freeze_gc_until_finished(worker)
    QTimer.singleShot(0, worker.start)


def _freeze_gc_until_finished(worker: Any) -> None:
    """Keep the objects that exist now out of the garbage collector while ``worker`` runs.

    A viewer holds millions of objects. A full collection over them, set off by the worker's
    allocations, runs in the worker with the interpreter lock held: 0.2-0.3 s of frozen
    GUI each time (measured while Segment post-processed a 3-megapixel result). Frozen, they
    are skipped; they rejoin the collector when the last running worker finishes, so nothing
    that became garbage meanwhile is kept for good.
    """
    global _running
    if _running == 0:
        gc.freeze()
    _running += 1

    def thaw() -> None:
        global _running
        _running -= 1
        if _running == 0:
            gc.unfreeze()

    worker.finished.connect(thaw)


@dataclass(frozen=True)
class Failed:
    """What a worker body returns instead of raising, so the widget shows a notification.

    napari relays an exception raised in a worker as a notification with its traceback (and
    napari 0.9.2's task-status hook for ``errored`` itself raises a TypeError); a problem with
    the user's input or files is not a bug, so the bodies return it as a value and the widget
    shows its message with ``show_error``.
    """

    error: BaseException

    @property
    def message(self) -> str:
        return str(self.error) or type(self.error).__name__


def notify_error(message: str) -> None:
    """A red notification (and a log line) for a problem the user can fix."""
    from napari.utils.notifications import show_error

    log.warning(message)
    show_error(message)


def notify_warning(message: str) -> None:
    from napari.utils.notifications import show_warning

    log.warning(message)
    show_warning(message)


class WidgetJob:
    """The one background job of a widget: Run and Cancel buttons, busy state, a napari
    progress bar, a status line and errors as notifications (Segment and Train).

    The widget builds the job and says what a step, a result and a cancel mean to it; the
    bookkeeping around them is here. Steps that Qt delivers after the result or the cancel
    are dropped, so the status line keeps the last word.
    """

    def __init__(self, title: str, run_button: Any, cancel_button: Any, status: Any) -> None:
        self.title = title
        self.worker: Any = None  # the running (or last) thread worker
        self._buttons = (run_button, cancel_button)
        self._status = status
        self._progress: Any = None
        self._busy = False
        self._over = False

    @property
    def busy(self) -> bool:
        """Whether a run is under way (Run is disabled meanwhile)."""
        return self._busy

    def start(
        self,
        body: Callable[..., Any],
        job: dict[str, Any],
        *,
        on_step: Callable[[Any], None],
        on_result: Callable[[Any], None],
        on_aborted: Callable[[], None],
        status: str,
    ) -> Any:
        """Run ``body(**job)`` in a thread worker; returns the worker, started on the next
        turn of the event loop (:func:`start_soon`). ``body`` returns :class:`Failed` for
        errors, which become a notification and the status ``failed``."""
        from napari.qt.threading import create_worker

        worker = create_worker(body, _start_thread=False, **job)
        worker.yielded.connect(lambda value: None if self._over else on_step(value))
        worker.returned.connect(lambda result: self._on_returned(result, on_result))
        worker.aborted.connect(lambda: self._on_aborted(on_aborted))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._busy, self._over = True, False
        run_button, cancel_button = self._buttons
        run_button.enabled, cancel_button.enabled = False, True
        self.set_status(status)
        start_soon(worker)
        return worker

    def cancel(self) -> None:
        """Stop the run at its next step."""
        if self._busy:
            self.worker.quit()

    def advance(self, done: int, total: int) -> None:
        """Move the progress bar. Call it last in a step: napari's bar processes pending
        events while it updates, so the result or the cancel may be handled inside it."""
        if self._progress is None:
            from napari.utils import progress

            self._progress = progress(total=total, desc=self.title)
        if self._progress.total != total:
            self._progress.total = total
        self._progress.update(done - self._progress.n)

    def set_status(self, text: str) -> None:
        self._status.value = text
        log.info("%s: %s", self.title, text)

    def fail(self, message: str) -> None:
        notify_error(f"{self.title}: {message}")

    def _on_returned(self, result: Any, on_result: Callable[[Any], None]) -> None:
        self._over = True
        if isinstance(result, Failed):
            self.set_status("failed: nothing changed")
            notify_error(f"{self.title} failed: {result.message}")
            return
        on_result(result)

    def _on_aborted(self, on_aborted: Callable[[], None]) -> None:
        self._over = True
        on_aborted()

    def _on_finished(self) -> None:
        self._busy = False
        run_button, cancel_button = self._buttons
        run_button.enabled, cancel_button.enabled = True, False
        if self._progress is not None:
            self._progress.close()
            self._progress = None


class RunsOneJob:
    """``worker``, ``busy`` and ``cancel`` of a widget whose job a :class:`WidgetJob` in
    ``self._job_runner`` runs (Segment, Train)."""

    _job_runner: WidgetJob

    @property
    def worker(self) -> Any:
        """The running (or last) thread worker."""
        return self._job_runner.worker

    @property
    def busy(self) -> bool:
        """Whether a run is under way (Run is disabled meanwhile)."""
        return self._job_runner.busy

    def cancel(self) -> None:
        """Stop the run at its next step (a result already on screen or disk stays)."""
        self._job_runner.cancel()

"""Starting napari thread workers from the widgets."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any

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

"""Starting napari thread workers from the widgets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def start_soon(worker: Any) -> None:
    """Start ``worker`` on the next turn of the Qt event loop.

    A worker emits ``finished`` from its own thread; a slot connected after that emission
    never hears it. Deferring the start lets whoever asked for the worker (a test's
    ``qtbot.waitSignal``, a script) connect to it first; the user sees no difference.
    """
    from qtpy.QtCore import QTimer

    QTimer.singleShot(0, worker.start)


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

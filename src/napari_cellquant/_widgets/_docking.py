"""Keep the plugin's docks tabbed together, so five of them fit a 1280 x 800 window.

napari stacks each new dock widget under the others in the right-hand area; five of ours
stacked need about 2,300 px of height, and Qt grows the window past the screen to fit them.
Tabbed in one area they need the height of the tallest (each widget scrolls inside its tab),
and the canvas keeps its width. napari's own ``tabify`` flag is not set when a widget opens
from the Plugins menu, so each widget tabs itself as soon as it is docked, and gives
back the height Qt added to the window for it while it was stacked.
"""

from __future__ import annotations

import weakref
from typing import Any

from qtpy.QtCore import QEvent, QObject, QSize, QTimer
from qtpy.QtWidgets import QComboBox, QDockWidget, QMainWindow, QWidget

_docks: weakref.WeakSet[QDockWidget] = weakref.WeakSet()
#: each window's size once the last of our docks had settled in it
_settled: weakref.WeakKeyDictionary[QMainWindow, QSize] = weakref.WeakKeyDictionary()
#: characters a drop-down list shows at its narrowest; its open list still shows whole items
NARROW_CHOICE_CHARS = 10


class _TabWhenDocked(QObject):
    """Follows the widget into its dock, and the dock into the main window; then tabs it."""

    def __init__(self, widget: QWidget) -> None:
        super().__init__(widget)
        self.widget = widget

    def eventFilter(self, watched: Any, event: Any) -> bool:
        if event.type() == QEvent.Type.ParentChange:
            dock = _dock_of(self.widget)
            if dock is not None and watched is self.widget:
                dock.installEventFilter(self)  # next: the dock joins the main window
            if dock is not None and isinstance(dock.parentWidget(), QMainWindow):
                for obj in (self.widget, dock):
                    obj.removeEventFilter(self)
                QTimer.singleShot(0, lambda: _tab_with_siblings(self.widget))
        return False


def tab_with_plugin_docks(widget: QWidget) -> None:
    """Tab ``widget``'s dock with the plugin's other docks as soon as it is docked."""
    widget.installEventFilter(_TabWhenDocked(widget))


def _dock_of(widget: QWidget) -> QDockWidget | None:
    dock = widget.parentWidget()
    while dock is not None and not isinstance(dock, QDockWidget):
        dock = dock.parentWidget()
    return dock


def _alive(obj: QObject) -> bool:
    """False once Qt has deleted the object behind a Python wrapper (a closed viewer)."""
    try:
        obj.objectName()
    except RuntimeError:
        return False
    return True


def _tab_with_siblings(widget: QWidget) -> None:
    if not _alive(widget):
        return
    dock = _dock_of(widget)
    if dock is None:
        return
    window = dock.parentWidget()
    if not isinstance(window, QMainWindow):
        return
    _narrow_choices(widget)
    if not dock.isFloating():
        area = window.dockWidgetArea(dock)
        for sibling in [d for d in _docks if _alive(d)]:
            if (
                sibling is not dock
                and sibling.parentWidget() is window
                and not sibling.isFloating()
                and window.dockWidgetArea(sibling) == area
            ):
                window.tabifyDockWidget(sibling, dock)
                dock.raise_()
                # Qt grows the window once the layout settles: shrink it back after that
                QTimer.singleShot(0, lambda: _give_back_height(window))
                break
    _docks.add(dock)
    _settled.setdefault(window, window.size())


def _give_back_height(window: QMainWindow) -> None:
    if not _alive(window):
        return
    before = _settled.get(window)
    if (
        before is not None
        and window.height() > before.height()
        and not (window.isMaximized() or window.isFullScreen())
    ):
        window.resize(window.width(), max(before.height(), window.minimumSizeHint().height()))
    _settled[window] = window.size()


def _narrow_choices(widget: QWidget) -> None:
    """Let the drop-down lists shrink below their longest item. A list sized to its longest
    choice ("blood-detector (instances, blood3)") set the width of every tabbed dock, since
    the widest tab sets it, and took the canvas below half of a 1280-px window."""
    for combo in widget.findChildren(QComboBox):
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(NARROW_CHOICE_CHARS)

"""core.drive: a progress generator run to its end, or cancelled with its files closed."""

from __future__ import annotations

import pytest

from napari_cellquant.core.drive import drive
from napari_cellquant.core.errors import CancelledError


def _work(log: list[str]):
    try:
        for step in range(5):
            log.append(f"step {step}")
            yield step
        return "done"
    finally:
        log.append("closed")


def test_runs_to_the_end_reporting_every_event() -> None:
    log: list[str] = []
    seen: list[int] = []
    assert drive(_work(log), seen.append) == "done"
    assert seen == [0, 1, 2, 3, 4] and log[-1] == "closed"


def test_cancel_closes_the_generator_after_the_event_it_follows() -> None:
    log: list[str] = []
    seen: list[int] = []
    with pytest.raises(CancelledError, match="prediction cancelled"):
        drive(_work(log), seen.append, lambda: len(seen) == 2, what="prediction")
    assert seen == [0, 1] and log == ["step 0", "step 1", "closed"]

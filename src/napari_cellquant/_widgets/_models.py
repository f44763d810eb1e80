"""Models the user brought in during this session, shared by the Segment and Train widgets.

The built-in models come from :func:`napari_cellquant.core.models.registry.builtin_cards`;
this list adds the ones loaded through Segment's "Load model..." button, the ones Train has
just written, and in-memory :class:`~napari_cellquant.core.predict.Model` objects a script
hands over (e.g. a network with random weights for a benchmark). Segment listens to
:attr:`UserModels.changed` so a newly trained model appears in its list at once.

No Qt here: a psygnal ``Signal`` is enough and keeps the list usable from scripts.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psygnal import Signal

from ..core.errors import InputError
from ..core.models.card import ModelCard
from ..core.models.registry import get_card

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UserModel:
    """One entry of the list.

    Attributes
    ----------
    label
        What the model list shows.
    source
        What :func:`napari_cellquant.core.predict.load_model` takes: a card or weights path;
        ``None`` for an in-memory model.
    card
        The model card (read once, when registered, so a bad file fails at once).
    model
        An already loaded ``Model`` (in-memory entries only).
    """

    label: str
    source: str | None
    card: ModelCard
    model: Any = None


class UserModels:
    """The session's own models, in the order they were registered (newest last)."""

    #: emitted with the new entry whenever one is registered
    changed = Signal(object)

    def __init__(self) -> None:
        self._entries: dict[str, UserModel] = {}

    def __iter__(self):
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> UserModel | None:
        """The entry registered under ``key`` (its source path or in-memory label)."""
        return self._entries.get(key)

    def register(self, path_or_model: str | os.PathLike[str] | Any) -> UserModel:
        """Add a model card ``.json``, a weights file (card beside it) or a loaded ``Model``.

        Registering the same file again replaces its entry (a retrained model keeps its
        place). Returns the entry; raises :class:`~napari_cellquant.core.errors.InputError`
        when the file is not a model card or has none beside it.
        """
        if hasattr(path_or_model, "card") and hasattr(path_or_model, "network"):
            card = path_or_model.card
            key = f"{card.name} (in memory)"
            entry = UserModel(label=key, source=None, card=card, model=path_or_model)
        else:
            path = Path(os.fspath(path_or_model)).expanduser().resolve()
            if not path.is_file():
                raise InputError("no such model card or weights file", source=path)
            card = get_card(path)
            key = str(path)
            entry = UserModel(label=f"{card.name} ({path.name})", source=key, card=card)
        self._entries.pop(key, None)  # re-registering moves the entry to the end
        self._entries[key] = entry
        log.info("model %s registered", entry.label)
        self.changed.emit(entry)
        return entry

    def key_of(self, entry: UserModel) -> str:
        """The key ``entry`` is stored under (the value Segment's model list holds)."""
        return entry.source if entry.source is not None else entry.label


#: The one list of the session: Train calls ``user_models.register(card_path)``.
user_models = UserModels()


def device_choices() -> list[str]:
    """The devices a widget offers: ``auto`` and the CPU, then CUDA and MPS where present."""
    import torch

    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


__all__ = ["UserModel", "UserModels", "device_choices", "user_models"]

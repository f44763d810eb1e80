"""The project's documented error types.

Every problem with a user's input or output surfaces as one of these, with a message that
names the file and what is wrong, never as a traceback from deep inside numpy.
"""

from __future__ import annotations

from os import PathLike


class CellquantError(Exception):
    """Base class of every error this package raises on purpose."""


class InputError(CellquantError, ValueError):
    """A file or array given to us cannot be used; the message names it and the problem.

    ``source`` is the file (or the thing) at fault when there is one: the message then reads
    ``<source>: <problem>``, and callers that already name the file can show ``problem``.
    """

    def __init__(self, problem: str, *, source: str | PathLike[str] | None = None) -> None:
        self.source = None if source is None else str(source)
        self.problem = problem
        super().__init__(problem if source is None else f"{source}: {problem}")


class OutputExistsError(CellquantError, FileExistsError):
    """Refusing to overwrite an existing file the user did not ask us to replace."""

    #: how to go ahead, in the Python API's words and the command line's
    HINT = "pass overwrite=True / --overwrite to replace it"
    CLI_HINT = "pass --overwrite to replace it"

    def __init__(self, path: str | PathLike[str]) -> None:
        self.path = str(path)
        super().__init__(f"{path}: already exists ({self.HINT})")

    def for_command_line(self) -> str:
        """The message naming only the command line's flag."""
        return str(self).replace(self.HINT, self.CLI_HINT)


class OutputError(CellquantError, OSError):
    """An output could not be written (read-only folder, full disk ...); nothing was left
    half-written."""


class CancelledError(CellquantError):
    """Long work was cancelled by the user."""

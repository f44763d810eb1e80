"""Atomic file writing: a temporary file beside the target, then a rename.

The temporary file gets the permissions a plain ``open()`` would give under the user's
umask (``mkstemp`` makes every file 0600, which colleagues on a shared server cannot read).
Without ``overwrite`` the file is published with ``os.link``, which fails when the target
exists, so a target that another process creates while we write is never replaced: a check
before the rename would leave that window open.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import OutputError, OutputExistsError

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask (read from /proc where it can be, else set and restored at once)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _publish_new(tmp: Path, target: Path) -> None:
    """Give ``tmp`` the name ``target`` only if no file has it; OutputExistsError otherwise."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise OutputExistsError(target) from None
    except OSError as exc:
        if exc.errno not in (
            errno.EPERM,
            errno.ENOTSUP,
            errno.EOPNOTSUPP,
            errno.EXDEV,
            errno.EMLINK,
        ):
            raise
        # no hard links here (some network and FAT file systems): reserve the name
        # exclusively, then move the finished file onto the reservation
        try:
            os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            raise OutputExistsError(target) from None
        os.replace(tmp, target)
        return
    tmp.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` in one rename.

    The target is never half-written: on any error the temporary file is removed and the
    old file (if any) is untouched. An existing ``path`` is refused unless ``overwrite``.
    The temporary name keeps the target's suffix so writers that choose a format by
    extension (tifffile, imageio) still work.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise OutputExistsError(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=f".tmp{target.suffix}"
        )
    except OSError as exc:
        raise OutputError(f"{target}: cannot write here ({exc.strerror or exc})") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())
        if overwrite:
            os.replace(tmp, target)
        else:
            _publish_new(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OutputExistsError):
            raise
        raise OutputError(f"{target}: could not be written ({exc.strerror or exc})") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str, *, overwrite: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def check_free(paths: Iterable[Path], overwrite: bool) -> None:
    """Refuse before writing anything, so a refused run of several files leaves none of them
    (each file's own publish is still exclusive: see :func:`atomic_path`)."""
    if overwrite:
        return
    for path in paths:
        if path.exists():
            raise OutputExistsError(path)

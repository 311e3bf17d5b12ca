"""Private files: state and secrets are created 0600 in folders made 0700 (INTERFACES §10.3).

Every service creates its state through here, and provisioning writes its secrets through
here. SQLite creates a database's ``-wal`` and ``-shm`` files with the mode of the database
file, so a database created by :func:`private_file` stays private with all its companions.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def private_dir(path: Path, *, tighten: bool = False) -> Path:
    """``path`` created (with missing parents) as a folder only its owner can enter.

    An existing folder keeps its mode unless ``tighten`` (a folder of our own, such as a
    provisioning output): a state folder may be shared (``--state-dir .``), so it is only
    warned about when others can enter it."""
    try:
        path.mkdir(mode=PRIVATE_DIR, parents=True)
    except FileExistsError:
        if tighten:
            os.chmod(path, PRIVATE_DIR)
        elif path.stat().st_mode & 0o077:
            log.warning("%s can be entered by other users; citysense creates it 0700", path)
        return path
    os.chmod(path, PRIVATE_DIR)  # mkdir's mode is filtered by the umask
    return path


def private_file(path: Path) -> Path:
    """``path``'s folder made private (0700) and ``path`` created 0600 when missing, or
    tightened to 0600 when it exists: call before opening a state file."""
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
    finally:
        os.close(fd)
    return path


def write_private(path: Path, data: bytes | str, mode: int = PRIVATE_FILE) -> Path:
    """Write ``data`` to ``path`` with ``mode`` from the first byte on (no readable window)."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path

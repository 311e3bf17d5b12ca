"""OSCORE (RFC 8613) on aiocoap 0.4.17: per-device security contexts and the site wrapper.

What this contains of aiocoap's internals:

* :class:`DeviceSecurityContext` is aiocoap's ``FilesystemSecurityContext`` (one folder per
  device: its parameters, and the sequence number and replay window aiocoap persists in
  chunks) that reports replays and Echo recoveries (RFC 9175) to a callback.
* :func:`save_context` is the clean save aiocoap does only from ``__del__`` (a private
  ``_destroy``): the replay window is written back, so a device is not asked for an Echo
  round trip after a clean restart. After an unclean stop (``kill -9``) aiocoap's B.1.2
  recovery answers each device's first request with a 4.01 Echo that its client repeats.
* :func:`open_context` writes the folder of a key (0700, files 0600) when it is missing or
  its secret changed (a rotated key starts a fresh context), then loads it. The file lock
  aiocoap takes per context refuses a second process on the same folder.
* :class:`OscoreSite` is aiocoap's ``OscoreSiteWrapper``: unprotected requests go on to the
  inner site with no claims (the site refuses them for keyed devices itself).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiocoap import oscore
from aiocoap.oscore_sitewrapper import OscoreSiteWrapper

from citysense.credentials import DeviceKey, oscore_context_files

log = logging.getLogger(__name__)

#: outcome names reported to the callback
REPLAY = "replay"
ECHO = "echo"
INVALID = "invalid"

COSE_KID = oscore.COSE_KID
COSE_KID_CONTEXT = oscore.COSE_KID_CONTEXT


class DeviceSecurityContext(oscore.FilesystemSecurityContext):
    """A device's context; ``on_event(outcome)`` hears of replays and Echo recoveries."""

    on_event: Callable[[str], None] = staticmethod(lambda outcome: None)

    def unprotect(self, protected_message: Any, request_id: Any = None) -> Any:
        try:
            return super().unprotect(protected_message, request_id)
        except oscore.ReplayErrorWithEcho:
            self.on_event(ECHO)
            raise
        except oscore.ReplayError:
            self.on_event(REPLAY)
            raise
        except oscore.ProtectionInvalid:
            self.on_event(INVALID)
            raise


def _write_private(path: Path, data: object) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def open_context(folder: Path, key: DeviceKey, role: str = "gateway") -> DeviceSecurityContext:
    """Load (creating or renewing if needed) the security context of ``key`` in ``folder``.

    Raises ``OSError`` (for instance when another process holds the context's lock) or
    ``ValueError`` for an unreadable folder.
    """
    files = oscore_context_files(key, role)
    folder.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.parent.chmod(0o700)
    folder.mkdir(mode=0o700, exist_ok=True)
    secret_file = folder / "secret.json"
    try:
        current = json.loads(secret_file.read_text())
    except (OSError, ValueError):
        current = None
    if current != files["secret.json"]:
        # a new or rotated key: a fresh context (sequence numbers start again)
        (folder / "sequence.json").unlink(missing_ok=True)
        _write_private(folder / "settings.json", files["settings.json"])
        _write_private(secret_file, files["secret.json"])
    try:
        return DeviceSecurityContext(str(folder))
    except oscore.FilesystemSecurityContext.LoadError as exc:
        raise ValueError(f"OSCORE context {folder}: {exc}") from exc
    except Exception as exc:  # filelock.Timeout: another process uses the context
        raise OSError(f"OSCORE context {folder} is in use by another process") from exc


def save_context(context: DeviceSecurityContext) -> None:
    """Write back the sequence number and replay window and release the folder's lock."""
    if getattr(context, "lockfile", None) is not None:
        context._destroy()


class OscoreSite(OscoreSiteWrapper):
    """aiocoap's OSCORE site wrapper (a named seam: the wrapped site sees ``remote`` claims)."""

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
* :class:`OscoreSite` is aiocoap's ``OscoreSiteWrapper`` without a request formatted per
  uplink for a task's name. Unprotected requests go on to the inner site with no claims (the
  site refuses them for keyed devices itself).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiocoap
import aiocoap.pipe
from aiocoap import error, oscore
from aiocoap.numbers.codes import FETCH, POST
from aiocoap.oscore_sitewrapper import OscoreSiteWrapper
from aiocoap.pipe import error_to_message, run_driving_pipe
from aiocoap.transports.oscore import OSCOREAddress

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
    """aiocoap's OSCORE site wrapper, without formatting every request for a task name.

    ``OscoreSiteWrapper.render_to_pipe`` names the task that renders each unprotected request
    ``"OSCORE response rendering for %r" % request``, which formats the whole request --
    resolving the peer's address and interface -- for every uplink, although the name is only
    ever read by a debugger. This is the same method with a fixed name; EDHOC requests and
    unprotected ones go to aiocoap's own code.
    """

    async def render_to_pipe(self, pipe: Any) -> None:
        request = pipe.request
        if request.opt.oscore is None or request.opt.uri_path == (".well-known", "edhoc"):
            await super().render_to_pipe(pipe)
            return
        try:
            unprotected = oscore.verify_start(request)
        except oscore.NotAProtectedMessage:
            await self._inner_site.render_to_pipe(pipe)
            return
        if request.code not in (FETCH, POST):
            raise error.MethodNotAllowed
        try:
            sc = self.server_credentials.find_oscore(unprotected)
        except KeyError:
            if request.mtype == aiocoap.CON:
                raise error.Unauthorized("Security context not found") from None
            return
        try:
            unprotected, seqno = sc.unprotect(request)
        except error.RenderableError:
            raise
        except oscore.ReplayError:
            if request.mtype == aiocoap.CON:
                pipe.add_response(
                    aiocoap.Message(
                        code=aiocoap.UNAUTHORIZED, max_age=0, payload=b"Replay detected"
                    ),
                    is_last=True,
                )
            return
        except oscore.DecodeError:
            if request.mtype == aiocoap.CON:
                raise error.BadOption("Failed to decode COSE") from None
            return
        except oscore.ProtectionInvalid:
            if request.mtype == aiocoap.CON:
                raise error.BadRequest("Decryption failed") from None
            return
        unprotected.remote = OSCOREAddress(sc, request.remote)
        sc = sc.context_for_response()
        inner_pipe = aiocoap.pipe.IterablePipe(unprotected)
        run_driving_pipe(
            error_to_message(inner_pipe, self.log),
            self._inner_site.render_to_pipe(inner_pipe),
            name="OSCORE response rendering",
        )
        async for event in inner_pipe:
            if event.exception is not None:
                self.log.warning(
                    "Turning error raised from renderer into nondescript protected error %r",
                    event.exception,
                )
                message = aiocoap.Message(code=aiocoap.INTERNAL_SERVER_ERROR)
                is_last = True
            else:
                message = event.message
                is_last = event.is_last
            if not is_last:
                message.opt.observe = 0
            protected_response, _ = sc.protect(message, seqno)
            if message.opt.observe is not None:
                protected_response.opt.observe = sc.sender_sequence_number & 0xFFFFFFFF
            pipe.add_response(protected_response, is_last=is_last)
            if event.is_last:
                break

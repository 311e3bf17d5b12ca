"""The CoAP site (aiocoap): ``POST /up`` and ``GET /.well-known/core``.

A thin adapter: the resource hands the payload and Content-Format to an ``accept`` callable
(the gateway's intake pipeline) and turns its :class:`Answer` into a CoAP response. The
answer codes are those of INTERFACES.md section 3; every refusal carries a short text
diagnostic. Deduplication of retransmitted CONs by (endpoint, MID) is aiocoap's; a
retransmission it misses is absorbed by the outbox's idempotency.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiocoap
import aiocoap.resource
from aiocoap.numbers.codes import Code

log = logging.getLogger(__name__)

CHANGED = "2.04"
BAD_REQUEST = "4.00"
UNAUTHORIZED = "4.01"
FORBIDDEN = "4.03"
TOO_LARGE = "4.13"
UNSUPPORTED_FORMAT = "4.15"
TOO_MANY_REQUESTS = "4.29"
UNAVAILABLE = "5.03"

_CODES = {
    CHANGED: Code.CHANGED,
    BAD_REQUEST: Code.BAD_REQUEST,
    UNAUTHORIZED: Code.UNAUTHORIZED,
    FORBIDDEN: Code.FORBIDDEN,
    TOO_LARGE: Code.REQUEST_ENTITY_TOO_LARGE,
    UNSUPPORTED_FORMAT: Code.UNSUPPORTED_CONTENT_FORMAT,
    TOO_MANY_REQUESTS: Code.TOO_MANY_REQUESTS,
    UNAVAILABLE: Code.SERVICE_UNAVAILABLE,
}

#: Content-Format of a refusal's diagnostic payload (text/plain; charset=utf-8).
CF_TEXT = 0


@dataclass(frozen=True, slots=True)
class Answer:
    """What to tell the device: a code from above, a payload, and its options."""

    code: str
    payload: bytes = b""
    content_format: int | None = None
    max_age: int | None = None  #: seconds, for 5.03 and 4.29
    size1: int | None = None  #: the size limit, for 4.13
    outcome: str = ""  #: what ``/metrics`` counts it as (default: ok or refused)


Accept = Callable[[bytes, int | None, object], Awaitable[Answer]]


class UplinkResource(aiocoap.resource.Resource):
    """``/up``: one uplink per POST."""

    ct = "110 112"
    rt = "citysense.up"

    def __init__(
        self,
        accept: Accept,
        max_bytes: int | None = None,
        on_too_large: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__()
        self._accept = accept
        self._max_bytes = max_bytes
        self._on_too_large = on_too_large

    async def render_to_pipe(self, pipe: Any) -> None:
        # A Block1 upload is refused as soon as its announced size (Size1) or what has
        # arrived passes the limit, before aiocoap reassembles the rest.
        request = pipe.request
        block1 = request.opt.block1
        if block1 is not None and self._max_bytes is not None:
            received = block1.start + len(request.payload)
            if max(received, request.opt.size1 or 0) > self._max_bytes:
                self._on_too_large()
                response = aiocoap.Message(
                    code=Code.REQUEST_ENTITY_TOO_LARGE,
                    payload=f"more than {self._max_bytes} bytes".encode(),
                )
                response.opt.content_format = CF_TEXT
                response.opt.size1 = self._max_bytes
                pipe.add_response(response, is_last=True)
                return
        await super().render_to_pipe(pipe)

    async def needs_blockwise_assembly(self, request: aiocoap.Message) -> bool:
        # Only an uplink that arrives in Block1 pieces needs reassembly; answers are small
        # (a diagnostic or one downlink command), so Block2 slicing never applies. Skipping
        # aiocoap's block caches saves a deep copy of every request.
        return request.opt.block1 is not None

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        # the remote is formatted only if a log line needs it: hostinfo parses addresses
        answer = await self._accept(request.payload, request.opt.content_format, request.remote)
        response = aiocoap.Message(code=_CODES[answer.code], payload=answer.payload)
        if answer.content_format is not None:
            response.opt.content_format = answer.content_format
        elif answer.payload:
            response.opt.content_format = CF_TEXT
        if answer.max_age is not None:
            response.opt.max_age = answer.max_age
        if answer.size1 is not None:
            response.opt.size1 = answer.size1
        return response


UP_PATH = ("up",)


class GatewaySite(aiocoap.resource.Site):
    """A site with a direct route to ``/up``.

    aiocoap's ``Site`` computes the full request URI and deep-copies the request to strip
    its path before handing it to a resource; on the uplink path that is a large share of
    the cost of a request. ``/up`` takes the request as it is; every other path goes through
    the ordinary lookup (``/.well-known/core``, 4.04 for unknown paths).
    """

    def __init__(self, up: UplinkResource) -> None:
        super().__init__()
        self._up = up
        self.add_resource(list(UP_PATH), up)

    async def render_to_pipe(self, pipe: Any) -> None:
        request = pipe.request
        if request.opt.uri_path == UP_PATH and request.opt.uri_path_abbrev is None:
            await self._up.render_to_pipe(pipe)
            return
        await super().render_to_pipe(pipe)


def build_site(
    accept: Accept, max_bytes: int | None = None, on_too_large: Callable[[], None] = lambda: None
) -> aiocoap.resource.Site:
    site = GatewaySite(UplinkResource(accept, max_bytes, on_too_large))
    site.add_resource(
        [".well-known", "core"],
        aiocoap.resource.WKCResource(site.get_resources_as_linkheader, impl_info=None),
    )
    return site

"""A STAND-IN for the edge gateway's CoAP side, for fleet tests that must not depend on it.

It keeps to INTERFACES.md section 3 as far as the fleet can observe: ``POST /up`` with SenML
JSON or CBOR, 2.04 / 4.00 / 4.03 / 4.13 / 4.15 answers, one downlink command in a 2.04
payload. It is an aiocoap server (real UDP on 127.0.0.1), so message-id deduplication of
retransmitted CONs is aiocoap's own; what it stores is a list, so double storage shows.
The real gateway is tested against the fleet separately.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import aiocoap
import aiocoap.resource

from citysense.errors import SenmlError
from citysense.registry import Device
from citysense.senml import CF_SENML_CBOR, CF_SENML_JSON, decode_senml, to_samples
from citysense.validation import check_time, check_values


class UplinkStandIn(aiocoap.resource.Resource):
    def __init__(self, registry: Mapping[str, Device], max_bytes: int = 1024) -> None:
        super().__init__()
        self.registry = registry
        self.max_bytes = max_bytes
        self.stored: list[tuple[str, int]] = []
        self.received_at: list[float] = []
        self.answers: dict[str, int] = {}
        #: device -> SenML JSON payload to hand it in its next 2.04
        self.downlinks: dict[str, bytes] = {}

    def _answer(self, code: aiocoap.numbers.codes.Code, payload: bytes = b"") -> aiocoap.Message:
        text = code.dotted
        self.answers[text] = self.answers.get(text, 0) + 1
        return aiocoap.Message(code=code, payload=payload)

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        self.received_at.append(time.monotonic())
        if len(request.payload) > self.max_bytes:
            return self._answer(aiocoap.REQUEST_ENTITY_TOO_LARGE)
        cf = request.opt.content_format
        if cf not in (CF_SENML_JSON, CF_SENML_CBOR):
            return self._answer(aiocoap.UNSUPPORTED_CONTENT_FORMAT)
        now_ms = int(time.time() * 1000)
        try:
            samples = to_samples(decode_senml(request.payload, int(cf), now_ms / 1000))
        except SenmlError as exc:
            return self._answer(aiocoap.BAD_REQUEST, str(exc).encode()[:100])
        keys = []
        for (device, t), values in samples.items():
            known = self.registry.get(device)
            if known is None:
                return self._answer(aiocoap.FORBIDDEN)
            problem = check_time(t, now_ms)
            problems = check_values(known.kind, values)
            if problem is not None or problems:
                return self._answer(aiocoap.BAD_REQUEST, str(problem or problems[0]).encode())
            keys.append((device, t))
        self.stored.extend(keys)
        downlink = b""
        if len(keys) == 1:
            downlink = self.downlinks.pop(keys[0][0], b"")
        return self._answer(aiocoap.CHANGED, downlink)


async def start_standin(
    registry: Mapping[str, Device], port: int
) -> tuple[aiocoap.Context, UplinkStandIn]:
    site = aiocoap.resource.Site()
    resource = UplinkStandIn(registry)
    site.add_resource(["up"], resource)
    # UDP only: the stand-in needs no CoAP-over-TCP listener on the same port number
    context = await aiocoap.Context.create_server_context(
        site, bind=("127.0.0.1", port), transports=["udp6"]
    )
    return context, resource

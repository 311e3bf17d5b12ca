"""``JSONParts``: an answer sent as the pieces it was built from -- the same bytes and length
as one body, the cached megabytes passed on as they are (not copied)."""

from __future__ import annotations

import asyncio
from typing import Any

from dashboard_api.routes_common import JSONParts


def sent(response: JSONParts) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        messages.append(message)

    async def receive() -> Any:
        return {"type": "http.request"}

    asyncio.run(response({"type": "http", "method": "GET"}, receive, send))
    return messages


def test_the_parts_make_one_body_of_the_declared_length() -> None:
    cached = b'[{"device":"a"}]' * 1000
    messages = sent(JSONParts((b'{"at":1', b"", b',"devices":', cached, b"}")))
    start, *bodies = messages
    headers = dict(start["headers"])
    body = b"".join(m["body"] for m in bodies)
    assert body == b'{"at":1,"devices":' + cached + b"}"
    assert int(headers[b"content-length"]) == len(body)
    assert headers[b"content-type"] == b"application/json"
    assert [m["more_body"] for m in bodies] == [True, True, True, False]  # the empty one left out
    assert any(m["body"] is cached for m in bodies)  # passed on, not copied


def test_no_parts_is_an_empty_body() -> None:
    start, body = sent(JSONParts(()))
    assert dict(start["headers"])[b"content-length"] == b"0"
    assert body == {"type": "http.response.body", "body": b""}

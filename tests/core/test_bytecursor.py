"""ByteCursor: reads front to back, and running short raises the decoder's own error."""

from __future__ import annotations

import pytest

from citysense.bytecursor import ByteCursor


class _Short(Exception):
    pass


class _Decoder(ByteCursor):
    __slots__ = ()

    def short(self) -> Exception:
        return _Short("truncated")


def test_take_advances_and_at_end_says_when_all_is_read() -> None:
    c = ByteCursor(b"abcde")
    assert c.take(2) == b"ab"
    assert c.take(0) == b""
    assert not c.at_end()
    assert c.take(3) == b"cde"
    assert c.at_end()


def test_running_short_raises_the_subclass_error_and_keeps_the_position() -> None:
    c = _Decoder(b"abc")
    c.take(1)
    with pytest.raises(_Short):
        c.take(3)
    assert c.pos == 1
    assert c.take(2) == b"bc"


def test_the_base_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        ByteCursor(b"").take(1)


def test_no_instance_dict() -> None:
    with pytest.raises(AttributeError):
        _Decoder(b"").extra = 1  # type: ignore[attr-defined]

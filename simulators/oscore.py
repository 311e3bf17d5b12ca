"""A device's side of OSCORE (RFC 8613), written from the RFC on ``cryptography``.

An independent OSCORE peer (no other exists on these machines): it protects requests and
unprotects their responses for one device context -- AES-CCM-16-64-128, HKDF-SHA256, empty
master salt, no ID context, the device's sender id its key id, the gateway's empty -- the
parameters of INTERFACES.md section 10.4. The load generators of the benchmarks build their
datagrams with it before the clock starts, and a test holds it against the gateway. The
sequence number is kept in memory only (a benchmark's device starts from a fresh key).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from simulators import coap

AES_CCM_16_64_128 = 10
KEY_BYTES = 16
NONCE_BYTES = 13
TAG_BYTES = 8
OSCORE_OPTION = 9


def _hkdf(secret: bytes, salt: bytes, ident: bytes, kind: str, length: int) -> bytes:
    info = cbor2.dumps([ident, None, AES_CCM_16_64_128, kind, length])
    return HKDF(hashes.SHA256(), length, salt or None, info).derive(secret)


def _piv(seq: int) -> bytes:
    return seq.to_bytes(max(1, (seq.bit_length() + 7) // 8), "big")


def _aad(kid: bytes, piv: bytes) -> bytes:
    external = cbor2.dumps([1, [AES_CCM_16_64_128], kid, piv, b""])
    return cbor2.dumps(["Encrypt0", b"", external])


@dataclass
class DeviceContext:
    """One device's OSCORE security context (its own side)."""

    sender_id: bytes
    secret: bytes
    recipient_id: bytes = b""
    salt: bytes = b""
    seq: int = 0
    _send: AESCCM = field(init=False, repr=False)
    _recv: AESCCM = field(init=False, repr=False)
    _iv: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._send = AESCCM(
            _hkdf(self.secret, self.salt, self.sender_id, "Key", KEY_BYTES), TAG_BYTES
        )
        self._recv = AESCCM(
            _hkdf(self.secret, self.salt, self.recipient_id, "Key", KEY_BYTES), TAG_BYTES
        )
        self._iv = _hkdf(self.secret, self.salt, b"", "IV", NONCE_BYTES)

    def _nonce(self, ident: bytes, piv: bytes) -> bytes:
        raw = bytes([len(ident)]) + ident.rjust(NONCE_BYTES - 6, b"\0") + piv.rjust(5, b"\0")
        return bytes(a ^ b for a, b in zip(raw, self._iv, strict=True))

    def protect_post(
        self, mid: int, token: bytes, path: str, payload: bytes, content_format: int
    ) -> tuple[bytes, bytes]:
        """A protected CON POST datagram, and the partial IV its response is bound to."""
        piv = _piv(self.seq)
        self.seq += 1
        inner = coap.encode(
            coap.Message(
                coap.CON,
                coap.POST,
                0,
                b"",
                (*coap.uri_path(path), (coap.CONTENT_FORMAT, coap.uint_bytes(content_format))),
                payload,
            )
        )[4:]  # options and payload: the header (with no token) dropped
        plaintext = bytes([coap.POST]) + inner
        ciphertext = self._send.encrypt(
            self._nonce(self.sender_id, piv), plaintext, _aad(self.sender_id, piv)
        )
        option = bytes([0x08 | len(piv)]) + piv + self.sender_id
        datagram = coap.encode(
            coap.Message(coap.CON, coap.POST, mid, token, ((OSCORE_OPTION, option),), ciphertext)
        )
        return datagram, piv

    def unprotect_response(self, response: coap.Message, request_piv: bytes) -> coap.Message:
        """The inner response of a protected one (``ValueError`` if it does not verify)."""
        option = response.option(OSCORE_OPTION)
        if option is None:
            return response  # an unprotected error answer (4.01 replay, 4.02 ...)
        if option:
            n = option[0] & 0x07
            piv = option[1 : 1 + n]
            nonce = self._nonce(self.recipient_id, piv)
        else:
            nonce = self._nonce(self.sender_id, request_piv)
        try:
            plain = self._recv.decrypt(nonce, response.payload, _aad(self.sender_id, request_piv))
        except Exception as exc:
            raise ValueError("the response does not verify") from exc
        inner = coap.decode(bytes([0x40, plain[0], 0, 0]) + plain[1:])
        return coap.Message(
            response.type, inner.code, response.mid, response.token, inner.options, inner.payload
        )

"""Callback signatures: lowercase hex HMAC-SHA256 of the raw body, any of several keys, never an exception."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from common.signing import sign, verify

BODY = b'{"id":"pred_1","status":"succeeded"}'


def test_signature_is_lowercase_hex_hmac_sha256_of_the_raw_body():
    expected = hmac.new(b"k", BODY, hashlib.sha256).hexdigest()
    assert sign(BODY, "k") == expected
    assert verify(BODY, expected, ["k"])
    assert verify(BODY, "sha256=" + expected, ["k"])


def test_any_rotated_key_verifies_and_others_do_not():
    assert verify(BODY, sign(BODY, "old"), ["new", "old"])
    assert not verify(BODY, sign(BODY, "other"), ["new", "old"])
    assert not verify(BODY + b" ", sign(BODY, "new"), ["new"])


@pytest.mark.parametrize("key", ["", "k", "x" * 64, "x" * 65, "ключ" * 20, "y" * 500])
@pytest.mark.parametrize("body", [b"", BODY, bytes(range(256)) * 40])
def test_verification_agrees_with_the_stdlib_hmac_for_every_key_length(key, body):
    # The gateway keeps each key's padded hash states; a key longer than SHA-256's block is hashed first.
    signature = hmac.new(key.encode(), body, hashlib.sha256).hexdigest()
    assert verify(body, signature, ["other", key])
    assert not verify(body, signature, ["other", key + "!"])


@pytest.mark.parametrize("header", [None, "", "abc", "z" * 64, sign(BODY, "k")[:-1], "é" * 64, "sha256="])
def test_malformed_headers_are_rejected(header):
    assert verify(BODY, header, ["k"]) is False

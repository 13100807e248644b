"""Hostile HTTP/1.1 requests as bytes, drawn from a seeded generator: what tests/test_wire_fuzz.py throws at the
API and the gateway.

Each case is built from its own `random.Random(f"{seed}:{service}:{index}")`, so one failing case is rebuilt from
the three numbers its failure message prints, without replaying the run before it.

Besides the framing, the API's bodies reach past the parser: generation requests with odd `input` (wrong types,
nesting, a `prompt` inside, unknown fields, `upload:` references of the caller's, of someone else's and of none),
`webhook` and `webhookEventsFilter`; and raw upload bodies (empty, image signatures cut short, random bytes,
large ones within the limit).
"""

from __future__ import annotations

import gzip
import json
import random
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from common.signing import SIGNATURE_HEADER, sign
from tests.wire import HOST


@dataclass(frozen=True)
class Case:
    kind: str
    pieces: tuple[bytes, ...]  # written one after another
    expect: int = 1  # answers to wait for (fewer when the server closes first)
    half_close: bool = False  # the client stops sending: for requests whose framing may be cut short

    def describe(self) -> str:
        sent = b"".join(self.pieces)
        return f"{self.kind}: {sent[:600]!r}{' ...' if len(sent) > 600 else ''}"


@dataclass(frozen=True)
class Target:
    """What the fuzzer knows of a service: its routes, the valid credentials that get a request past the door."""

    name: str
    routes: tuple[tuple[bytes, bytes], ...]
    token: str = ""  # a valid bearer token (API)
    secret: str = ""  # the callback signing secret (gateway)
    refs: tuple[str, ...] = ()  # `upload:<id>` references that exist: the caller's own and another user's


NASTY = (
    b"\xff.\xff.\xff",
    b"\x00",
    b"%00",
    b"%ff%fe",
    b"\xc0\x80",
    b"\xed\xa0\x80",  # a UTF-16 surrogate in CESU-8 form
    b"\r\nX-Injected: yes",
    b"\n",
    b"\xef\xbb\xbf",
    "\u202e\u0301\U0001f600".encode(),
    b"../../etc/passwd",
    b"Bearer ",
    b"Bearer a.b.c",
    b"wait=99999999999999999999",
    b"wait=-1, respond-async; wait=\xff",
    b"chunked",
    b"gzip, chunked",
    b"-1",
    b"99999999999999999999",
    b"0x10",
)
HEADERS = (
    b"Authorization",
    b"Idempotency-Key",
    b"X-Request-Id",
    b"Prefer",
    b"Last-Event-ID",
    b"Content-Type",
    b"Content-Length",
    b"Transfer-Encoding",
    b"Content-Encoding",
    b"Host",
    b"Origin",
    b"Connection",
    b"Expect",
    b"Accept-Encoding",
    b"Cookie",
    b"Access-Control-Request-Method",
    SIGNATURE_HEADER.encode(),
)
FRAMING = {b"content-length", b"transfer-encoding", b"expect"}


def odd_bytes(rng: random.Random, longest: int = 40) -> bytes:
    kind = rng.randrange(7)
    size = rng.randrange(0, longest)
    if kind == 0:
        return rng.randbytes(size)
    if kind == 1:
        return bytes(rng.randrange(0x80, 0x100) for _ in range(size))
    if kind == 2:
        return bytes(rng.choice(b"\x00\x01\x08\t\n\r\x1b\x7f") for _ in range(size))
    if kind == 3:
        return "".join(
            chr(rng.choice((rng.randrange(0x80, 0xD800), rng.randrange(0xE000, 0x110000)))) for _ in range(size)
        ).encode()
    if kind == 4:
        return bytes(rng.randrange(0x20, 0x7F) for _ in range(rng.choice((size, 129, 201, 1000, 9000))))
    if kind == 5:
        return rng.choice(NASTY)
    return rng.choice(NASTY) + rng.randbytes(size)


def odd_text(rng: random.Random) -> str:
    return odd_bytes(rng).decode("utf-8", "surrogateescape") + rng.choice(("", "\x00", "\ud800", "#sim:fail"))


def _json(value: object, rng: random.Random) -> bytes:
    return json.dumps(value, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")


def _payload(target: Target, rng: random.Random) -> object:
    """A JSON value shaped like what the service reads, with odd values in its fields."""
    if target.secret:
        prediction = {
            "id": rng.choice((f"pred_{uuid.uuid4().hex[:12]}", odd_text(rng), 7, None)),
            "status": rng.choice(("succeeded", "failed", "processing", "cancelled", odd_text(rng), None)),
            "output": rng.choice(([], ["https://cdn.skytells.ai/x.png"], odd_text(rng), [None, 1], {"a": 1})),
            "error": rng.choice((None, odd_text(rng))),
        }
        return rng.choice(
            (
                prediction,
                {"type": "prediction.succeeded", "created_at": odd_text(rng), "data": prediction},
                [prediction],
                odd_text(rng),
            )
        )
    request: dict[str, object] = {
        "prompt": rng.choice(("a quiet harbour", odd_text(rng), 5, None, ["x"])),
        "model": rng.choice(("truefusion-pro", "truefusion-2.0", odd_text(rng), None)),
    }
    if rng.random() < 0.3:
        request["userId"] = rng.choice((odd_text(rng), 0, "someone-else"))
    if rng.random() < 0.5:
        request["input"] = _model_input(target, rng)
    if rng.random() < 0.3:
        request["webhook"] = rng.choice(WEBHOOKS + (odd_text(rng), 42, None, ["https://example.com/hook"]))
    if rng.random() < 0.3:
        request["webhookEventsFilter"] = rng.choice(
            (["start"], ["completed", "start"], [], ["start", "start"], [odd_text(rng)], "start", [1], {"start": 1})
        )
    return rng.choice((request, request, [request], odd_text(rng), 1e308, {"prompt": {"prompt": request}}))


WEBHOOKS = (
    "https://example.com/hook",
    "http://127.0.0.1:9/hook",  # allowed by the test stack's NOTIFY_ALLOW_HOSTS; nothing listens
    "http://example.com/hook",
    "https://[::1]:0/x",
    "https://exa mple.com/",
    "https://example.com/" + "a" * 3000,
    "javascript:alert(1)",
    "https://user:pass@example.com:99999/",
    "https://\u00e9xample.com/",
)


OPTIONS = ("image", "width", "seed", "num_outputs", "image_strength", "negative_prompt", "output_format")


def _model_input(target: Target, rng: random.Random) -> object:
    """A generation's `input`: the model's own options, with wrong types, references and odd nesting."""
    ref = rng.choice(
        (
            *target.refs,
            f"upload:{uuid.uuid4()}",  # no such upload
            "upload:",
            "upload:" + odd_text(rng),
            "UPLOAD:" + str(uuid.uuid4()),
        )
    )
    options: dict[str, object] = {}
    for _ in range(rng.randrange(1, 4)):
        options[rng.choice(OPTIONS)] = rng.choice(
            (ref, ref, odd_text(rng), -1, 2**70, 1e308, 0.5, True, None, [ref], {"url": ref}, "")
        )
    if rng.random() < 0.2:
        options["prompt"] = "inside input"
    if rng.random() < 0.2:
        options[odd_text(rng)] = ref  # a field no model has, its name odd too
    nested: object = options
    for _ in range(rng.choice((0, 0, 1, 5, 200))):
        nested = {"image": nested} if rng.random() < 0.5 else [nested]
    return rng.choice((options, nested, [options], ref, odd_text(rng), 7))


# What an upload's first bytes may claim to be; the API recognises the first three.
SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF\x00\x00\x00\x00WEBP", b"GIF89a", b"BM", b"%PDF-")


def upload_body(target: Target, rng: random.Random) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """A raw upload body and the `Content-Type` that (mis)describes it."""
    signature = rng.choice(SIGNATURES)
    kind = rng.randrange(6)
    if kind == 0:
        body = b""
    elif kind == 1:
        body = signature[: rng.randrange(len(signature))]  # the signature cut short
    elif kind == 2:
        body = rng.randbytes(rng.choice((1, 15, 16, 17, 500)))
    elif kind == 3:
        body = signature + rng.randbytes(rng.randrange(0, 2000))
    elif kind == 4:
        body = signature + b"\x00" * rng.choice((64 * 1024, 1024 * 1024, 3 * 1024 * 1024))  # large, within the limit
    else:
        body = _json(_payload(target, rng), rng)  # JSON where an image belongs
    content_type = rng.choice(
        (b"image/png", b"image/jpeg", b"application/octet-stream", b"application/json", b"image/*", odd_bytes(rng))
    )
    return body, [(b"Content-Type", content_type)]


def odd_body(target: Target, rng: random.Random, path: bytes = b"") -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """A body and the headers that describe it (or misdescribe it)."""
    if path.startswith(b"/api/uploads") and rng.random() < 0.7:
        return upload_body(target, rng)
    plain = _json(_payload(target, rng), rng)
    kind = rng.randrange(10)
    headers: list[tuple[bytes, bytes]] = [
        (
            b"Content-Type",
            rng.choice(
                (
                    b"application/json",
                    b"text/plain",
                    b"application/json; charset=utf-16",
                    b"multipart/form-data; boundary=x",
                )
            ),
        )
    ]
    if kind == 0:
        body = plain.replace(b'"', b'"\xff', 1)  # bytes outside UTF-8
    elif kind == 1:
        body = plain.decode("utf-8", "surrogatepass").encode("utf-16", "surrogatepass")  # with its BOM
    elif kind == 2:
        body = b"\xef\xbb\xbf" + plain
    elif kind == 3:
        body = plain.replace(b" ", b"\x00") + b"\x00" * rng.randrange(3)
    elif kind == 4:
        body = rng.choice((b"[" * 100_000, b'{"a":' * 50_000, b"1e99999", b'"\\ud800"', b'{"prompt":"\\u0000"}'))
    elif kind == 5:
        coding, compress = rng.choice(
            ((b"gzip", gzip.compress), (b"deflate", zlib.compress), (b"br", bytes), (b"gzip", bytes))
        )
        body = compress(plain)
        headers.append((b"Content-Encoding", coding))
    elif kind == 6:
        body = gzip.compress(b"{" + b" " * 5_000_000 + b"}")  # small on the wire, 5 MB inflated
        headers.append((b"Content-Encoding", b"gzip"))
    elif kind == 7:
        body = rng.randbytes(rng.choice((0, 1, 100, 70_000)))
    else:
        body = plain
    if target.secret and rng.random() < 0.6:
        headers.append((SIGNATURE_HEADER.encode(), sign(body, target.secret).encode()))
    return body, headers


def _request(line: bytes, headers: list[tuple[bytes, bytes]], body: bytes = b"", length: bool = True) -> bytes:
    head = [line] + [name + b": " + value for name, value in headers]
    if length:
        head.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def _base(target: Target, rng: random.Random) -> tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]:
    """A sensible request to one of the target's routes: method, path, headers, body."""
    method, path = rng.choice(target.routes)
    headers = [(b"Host", HOST.encode())]
    if target.token and rng.random() < 0.8:
        headers.append((b"Authorization", b"Bearer " + target.token.encode()))
    body = b""
    if method == b"POST":
        body, described = odd_body(target, rng, path)
        headers += described
    return method, path, headers, body


def header_case(target: Target, rng: random.Random) -> Case:
    method, path, headers, body = _base(target, rng)
    framing = False
    for _ in range(rng.randrange(1, 4)):
        name = rng.choice(HEADERS) if rng.random() < 0.85 else odd_bytes(rng, 20) or b"X"
        value = odd_bytes(rng) if rng.random() < 0.7 else rng.choice(NASTY)
        if rng.random() < 0.5:
            headers = [(n, v) for n, v in headers if n.lower() != name.lower()]
        headers.append((name, value))
        framing |= name.lower() in FRAMING or b"\n" in value or b"\r" in value
    return Case("header", (_request(method + b" " + path + b" HTTP/1.1", headers, body),), half_close=framing)


def request_line_case(target: Target, rng: random.Random) -> Case:
    method, path, headers, body = _base(target, rng)
    parts = [method, path, b"HTTP/1.1"]
    slot = rng.randrange(3)
    parts[slot] = rng.choice(
        (odd_bytes(rng), parts[slot] + odd_bytes(rng), parts[slot].lower(), b"", parts[slot] * 3000)
    )
    if slot == 1 and rng.random() < 0.5:
        parts[1] = rng.choice(
            (
                b"*",
                b"http://evil.example/api/generate",
                b"//",
                b"/api/predictions/%00",
                b"/api/predictions/%ff/cancel",
                b"/api/generations?limit=%ff&cursor=%00",
                b"/api/generations?cursor=" + odd_bytes(rng),
            )
        )
    separator = rng.choice((b" ", b"  ", b"\t", b" \x00 "))
    line = separator.join(parts)
    if rng.random() < 0.1:
        line = method + b" " + path  # no version: HTTP/0.9's form
    return Case("request line", (_request(line, headers, body),), half_close=True)


def truncated_case(target: Target, rng: random.Random) -> Case:
    method, path, headers, body = _base(target, rng)
    whole = _request(method + b" " + path + b" HTTP/1.1", headers, body or b'{"prompt": "cut short"}')
    return Case("truncated", (whole[: rng.randrange(1, len(whole))],), half_close=True)


def chunked_case(target: Target, rng: random.Random) -> Case:
    method, path, headers, body = _base(target, rng)
    sizes = [rng.randrange(1, 50) for _ in range(5)]
    chunks, rest = b"", body
    for size in sizes:
        piece, rest = rest[:size], rest[size:]
        declared = rng.choice(
            (
                b"%x" % len(piece),
                b"%x" % len(piece),
                b"%x" % (len(piece) + 3),
                b"zz",
                b"-1",
                b"%x;ext=\xff" % len(piece),
            )
        )
        chunks += declared + b"\r\n" + piece + b"\r\n"
    chunks += rest and (b"%x\r\n" % len(rest) + rest + b"\r\n")
    chunks += rng.choice((b"0\r\n\r\n", b"0\r\nX-Trailer: \xff\r\n\r\n", b"", b"0\r\n"))
    wire = _request(
        method + b" " + path + b" HTTP/1.1", [*headers, (b"Transfer-Encoding", b"chunked")], chunks, length=False
    )
    return Case("chunked", (wire,), half_close=True)


def pipelined_case(target: Target, rng: random.Random) -> Case:
    count = rng.randrange(2, 5)
    cases = [header_case(target, rng) if rng.random() < 0.3 else _plain(target, rng) for _ in range(count)]
    # All in one write, or split at odd places: the server must frame them the same way either way.
    wire = b"".join(piece for case in cases for piece in case.pieces)
    cuts = sorted(rng.sample(range(1, len(wire)), min(3, len(wire) - 1))) if rng.random() < 0.5 else []
    pieces = tuple(wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True))
    return Case("pipelined", pieces, expect=count, half_close=any(case.half_close for case in cases))


def _plain(target: Target, rng: random.Random) -> Case:
    method, path, headers, body = _base(target, rng)
    return Case("plain", (_request(method + b" " + path + b" HTTP/1.1", headers, body),))


def oversized_case(target: Target, rng: random.Random) -> Case:
    method, path, headers, body = _base(target, rng)
    kind = rng.randrange(4)
    if kind == 0:
        headers.append((rng.choice(HEADERS), b"x" * rng.choice((8190, 8191, 20_000, 100_000))))
    elif kind == 1:
        headers += [(b"X-Many-%d" % n, b"v") for n in range(rng.choice((100, 200, 1000)))]
    elif kind == 2:
        path += b"?" + b"q=1&" * rng.choice((2_000, 10_000))
    else:
        body = rng.randbytes(rng.choice((64 * 1024 + 1, 1024 * 1024 + 1, 2 * 1024 * 1024)))
    return Case("oversized", (_request(method + b" " + path + b" HTTP/1.1", headers, body),), half_close=True)


KINDS: tuple[tuple[Callable[[Target, random.Random], Case], int], ...] = (
    (header_case, 30),
    (request_line_case, 15),
    (truncated_case, 10),
    (chunked_case, 10),
    (pipelined_case, 15),
    (oversized_case, 5),
    (_plain, 15),
)


def case(target: Target, seed: int, index: int) -> Case:
    rng = random.Random(f"{seed}:{target.name}:{index}")
    make = rng.choices([make for make, _ in KINDS], weights=[weight for _, weight in KINDS])[0]
    return make(target, rng)

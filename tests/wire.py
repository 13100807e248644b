"""Raw HTTP/1.1 over asyncio streams: bytes in, answers out, for requests no well-behaved client would send.

httpx and aiohttp's client refuse to send control bytes, bytes outside UTF-8 or broken framing; a hostile client
does not ask. `exchange` writes exactly the given bytes and reads back every answer the server gives on that
connection, so pipelined requests and truncated ones are seen as the server sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

HOST = "127.0.0.1"


@dataclass
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased names; the last of repeated ones
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


class WireError(AssertionError):
    """The server's bytes are not HTTP/1.1: a failure of the server, not of the client's request."""


async def _read_answer(reader: asyncio.StreamReader, head: bytes | None = None) -> Answer | None:
    """The next final answer on the connection (interim 1xx ones are skipped), None at its end."""
    while True:
        try:
            head = head or await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                raise WireError(f"connection closed inside an answer's head: {exc.partial[:200]!r}") from None
            return None
        except ConnectionError:  # reset, or a broken pipe while the client was still sending: the end, too
            return None
        status_line, *lines = head.decode("latin-1").split("\r\n")
        version, _, rest = status_line.partition(" ")
        # aiohttp takes a request line without a version for HTTP/0.9 and labels its answer so, framed as 1.x.
        if not (version.startswith("HTTP/1.") or version == "HTTP/0.9") or not rest[:3].isdigit():
            raise WireError(f"not an HTTP status line: {status_line!r}")
        if not rest.startswith("1"):
            break
        head = None
    headers = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    answer = Answer(int(rest[:3]), headers)
    try:
        if "content-length" in headers:
            answer.body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = bytearray()
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                body += await reader.readexactly(size + 2)
                del body[-2:]
            await reader.readuntil(b"\r\n")  # the empty trailer
            answer.body = bytes(body)
    except ConnectionError:
        # A server closing on a client still sending makes the kernel reset the connection, which can discard
        # the end of an answer already sent: its status, the part that matters here, has arrived.
        answer.body = b""
    return answer


async def exchange(
    port: int,
    request: bytes | Sequence[bytes],
    *,
    expect: int = 1,
    half_close: bool = False,
    grace: float = 0.25,
    timeout: float = 20,
) -> list[Answer]:
    """Send `request` (pieces written one after another) and collect up to `expect` answers, fewer when the
    server closes the connection first. A server that neither answers nor closes within `timeout` is an error: a
    stranger must not be able to hold a connection that way for free.

    `half_close` is for requests whose framing may be cut short (the server would wait for the rest): after
    `grace` seconds without an answer the client ends its side, as a client that gives up does. (aiohttp closes
    a connection whose client has ended its side, so the grace lets a complete request be answered first.)
    """
    reader, writer = await asyncio.open_connection(HOST, port)
    answers: list[Answer] = []
    try:
        for piece in [request] if isinstance(request, bytes) else request:
            writer.write(piece)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        head = None
        if half_close:
            try:  # readuntil consumes nothing until it finds the end of a head: safe to time out
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), grace)
            except TimeoutError:
                pass
            except asyncio.IncompleteReadError as exc:
                if exc.partial.strip():
                    raise WireError(f"connection closed inside an answer's head: {exc.partial[:200]!r}") from None
            except ConnectionError:
                pass
            with contextlib.suppress(ConnectionError, OSError):
                writer.write_eof()
        async with asyncio.timeout(timeout):
            while len(answers) < expect and (answer := await _read_answer(reader, head)) is not None:
                answers.append(answer)
                head = None
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return answers


def request(
    method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]] = (), body: bytes = b"", *, length: bool = True
) -> bytes:
    """One HTTP/1.1 request as bytes; `length` adds a Content-Length naming the body's real size."""
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: " + HOST.encode()]
    lines += [name + b": " + value for name, value in headers]
    if length and body:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body

"""A small TCP load balancer: one public port in front of a service's replicas, as a proxy would be in production.

Each new connection goes to the next replica in turn; a replica that refuses the connection (killed, restarting)
is skipped. A connection already open to a replica that dies is cut, as it would be behind a real proxy. The
balancer can also be taken down as a whole (`down()`): that is how the soak makes the S3 server unreachable
without losing what it holds (the S3 server keeps objects in memory only).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools

CHUNK = 256 * 1024


class Balancer:
    def __init__(self, name: str, port: int, backends: list[int]) -> None:
        self.name = name
        self.port = port
        self.backends = backends
        self._turn = itertools.count()
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)

    async def down(self) -> None:
        """Stop listening and cut every open connection: clients see refused and reset connections."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        start = next(self._turn)
        for n in range(len(self.backends)):
            port = self.backends[(start + n) % len(self.backends)]
            with contextlib.suppress(OSError):
                return await asyncio.open_connection("127.0.0.1", port, limit=CHUNK)
        return None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = await self._connect()
        if upstream is None:
            writer.transport.abort()  # no replica answers: as a proxy with no healthy backend, refuse
            return
        up_reader, up_writer = upstream
        self._open.update((writer, up_writer))
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self._open.discard(w)
                w.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.transport.abort()

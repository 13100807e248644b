"""Real PNG files made from scratch (no imaging library): small gradients, or noise of a chosen size."""

from __future__ import annotations

import hashlib
import math
import os
import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(width: int, height: int, raw_rows: bytes, level: int) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw_rows, level)) + _chunk(b"IEND", b"")


def gradient(seed: str, width: int = 256, height: int = 256) -> bytes:
    """A small image whose colours depend on `seed`, so different prompts give different bytes."""
    r0, g0, b0 = hashlib.sha256(seed.encode()).digest()[:3]
    rows = bytearray()
    for y in range(height):
        rows.append(0)
        for x in range(width):
            rows += bytes(((r0 + x) & 255, (g0 + y) & 255, (b0 + x + y) & 255))
    return _png(width, height, bytes(rows), 6)


def of_size(size: int) -> bytes:
    """A noise PNG of about `size` bytes (incompressible pixels, stored uncompressed)."""
    pixels = max(1, size - 100) // 3
    side = max(1, math.isqrt(pixels))
    height = max(1, pixels // side)
    rows = bytearray()
    noise = os.urandom(side * 3 * height)
    for y in range(height):
        rows.append(0)
        rows += noise[y * side * 3 : (y + 1) * side * 3]
    return _png(side, height, bytes(rows), 0)

"""What kind of image some bytes are, from their own first bytes (never from a name or a header)."""

from __future__ import annotations

SNIFF_BYTES = 16


def sniff(head: bytes) -> tuple[str, str] | None:
    """(extension, content type) from an image's first bytes, or None when it is none of ours."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png", "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpg", "image/jpeg"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp", "image/webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif", "image/gif"
    return None

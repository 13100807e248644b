"""What a PostgreSQL `text` value can hold: any character but NUL, and only what UTF-8 can encode.

Strings from clients (JSON bodies, token claims) can carry both: `\\u0000`, and `\\ud800`-style escapes that decode
to lone surrogates. asyncpg refuses them only at the query, as a 500; the edges refuse them first, as bad input.
"""

from __future__ import annotations


def storable(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True

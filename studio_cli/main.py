"""Placeholder entry point, replaced below."""


def main() -> None:
    raise SystemExit(0)

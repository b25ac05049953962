"""Credentials out of anything printed or logged: a password held in :class:`Secret`, and the ones
camera URLs carry (``rtsp://user:pass@host``)."""

from __future__ import annotations


def redact_url(url: str) -> str:
    """``rtsp://user:pass@host/x`` -> ``rtsp://***@host/x``: credentials never reach logs or output."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        # Up to the *last* '@': a password may hold '@' or '/' unencoded. A path with an '@' in it is
        # redacted too much, never too little.
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


class Secret:
    """A string that never prints itself; ``reveal()`` is the only way to read it."""

    __slots__ = ("_value",)

    def __init__(self, value: str = "") -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__

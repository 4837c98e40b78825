"""A string that never shows itself: auth keys, tokens, DSNs with passwords."""

from __future__ import annotations

from typing import Any


class Secret:
    """Holds a secret value; repr/str print a mask, and only `reveal()` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


def dec_hook(type_: type, obj: Any) -> Any:
    """msgspec decode hook: strings become Secrets where the schema asks for one."""
    if type_ is Secret:
        if not isinstance(obj, str):
            raise TypeError("Expected str")
        return Secret(obj)
    raise NotImplementedError(type_)


def enc_hook(obj: Any) -> Any:
    """msgspec encode hook: Secrets encode as a mask, never as their value."""
    if isinstance(obj, Secret):
        return "********"
    raise NotImplementedError(type(obj))

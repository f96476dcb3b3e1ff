"""A successful reply's ``Result``, whose headers are copied only when read.

Copying a reply's headers into a plain ``dict`` (masking any secret an
upstream echoes there) costs about 6,500 instructions per call for four
headers, as much as the rest of iogate's response handling; most callers
never read them. A ``ResponseResult`` keeps aiohttp's read-only header view
and copies it the first time ``headers`` is read — ``result.headers``,
``to_dict()``, ``==``, ``copy``, ``pickle``, ``orjson.dumps`` and
``dataclasses.replace``/``asdict`` all read it — so what a caller sees is the same
plain, masked ``dict`` as before (docs/benchmarks.md, "The API path, third
pass").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from iogate.core.redact import SecretMask
from iogate.core.result import Result

__all__ = ["UNREAD", "ResponseResult", "copy_headers"]

# Response header names seen so far, as plain str; bounded, since an
# upstream chooses them.
_HEADER_NAMES: dict[str, str] = {}
_HEADER_NAMES_SIZE = 512
# The ``headers`` slot of Result itself, under the property below.
_SLOT: Any = Result.__dict__["headers"]


def copy_headers(source: Mapping[str, str], mask: SecretMask) -> dict[str, str]:
    """``source`` as a plain dict of str, each value masked by ``mask``.

    aiohttp's names are ``istr``, which orjson refuses as keys. The same few
    names recur, so their str copies are kept (istr has str's hash and
    equality, case-sensitive): a lookup costs less than ``str()``, and a
    plain loop less than a comprehension's frame (measured).
    """
    secrets = mask.secrets  # not ``if mask``: a Python-level __bool__ per call
    names = _HEADER_NAMES
    headers: dict[str, str] = {}
    for name, value in source.items():
        plain = names.get(name)
        if plain is None:
            plain = str(name)
            if len(names) < _HEADER_NAMES_SIZE:
                names[plain] = plain
        # Response headers too: an upstream may echo our credentials there.
        headers[plain] = mask(value) if secrets else value
    return headers


class _Unread:
    """The value of a ``ResponseResult``'s headers until they are read."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<headers not read yet>"


UNREAD: Any = _Unread()


class ResponseResult(Result):
    """A ``Result`` of a 2xx reply; ``headers`` is filled from the reply when read.

    The wire builds it with ``headers=UNREAD`` and sets ``_source`` (the
    reply's header view) and ``_mask``; the first read copies them. Setting
    ``headers`` (even to None) replaces them, as on any Result: the setter is
    the slot's own, so building one costs no Python call for it.
    """

    __slots__ = ("_mask", "_source")
    # Result's fields, in this class's own dict too: orjson recognises a
    # dataclass only by that, and serialises one as Result is (reading each
    # field, so the headers are copied).
    __dataclass_fields__ = Result.__dataclass_fields__

    _source: Mapping[str, str] | None
    _mask: SecretMask

    def _read_headers(self) -> dict[str, str] | None:
        headers = _SLOT.__get__(self, Result)
        if headers is UNREAD:
            source, self._source = self._source, None
            assert source is not None
            headers = copy_headers(source, self._mask)
            _SLOT.__set__(self, headers)
        return cast("dict[str, str] | None", headers)

    headers = property(_read_headers, _SLOT.__set__)

    def __eq__(self, other: object) -> bool:
        # Equal to a plain Result with the same fields, as two Results are.
        if not isinstance(other, Result):
            return NotImplemented
        return _fields(self) == _fields(other)

    def __reduce__(self) -> tuple[Any, ...]:
        # copy, deepcopy and pickle: the fields, headers copied (aiohttp's
        # view cannot be pickled, and it is read-only anyway).
        return (ResponseResult, _fields(self))


def _fields(result: Result) -> tuple[Any, ...]:
    return tuple(getattr(result, name) for name in Result.__dataclass_fields__)

"""A small, strict reader and writer for SPIn's flat XML: `<request>` and `<response>` documents
whose children are simple `<Tag>text</Tag>` elements.

Why not `xml.etree`: SPIn Local's documents are a flat list of tags with percent-encoded text,
and the stdlib parser would bring in what the dialect never needs and an attacker on the LAN
could use (a DTD, entity expansion: defusedxml, which disarms them, is not a dependency). This
reader knows no DTD, no entities but the five predefined ones, no attributes, no processing
instructions: it finds the `<response>` element and reads its children in one linear pass
(each search for a closing tag either succeeds and is consumed, or ends the parse), so its cost
is bounded by the answer's size. A child holding further markup is kept as raw text, never
parsed; text is percent-decoded only after the structure is read, so an encoded `<` can never
become markup.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable

from gatewayd.errors import ProtocolError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_ENTITIES = {"&lt;": "<", "&gt;": ">", "&quot;": '"', "&apos;": "'", "&amp;": "&"}
_ENTITY = re.compile(r"&(?:lt|gt|quot|apos|amp);")


def escape(text: str) -> str:
    """Text safe inside an element: &, < and > escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def element(root: str, fields: Iterable[tuple[str, str]]) -> str:
    """`<root><Tag>value</Tag>…</root>` with every value escaped."""
    inner = "".join(f"<{tag}>{escape(value)}</{tag}>" for tag, value in fields)
    return f"<{root}>{inner}</{root}>"


def _unescape(text: str) -> str:
    return _ENTITY.sub(lambda m: _ENTITIES[m.group(0)], text)


def children(document: str, root: str) -> dict[str, list[str]]:
    """The simple children of the first `<root>` element of `document` (anything may surround
    it: SPIn wraps answers in `<xmp>`), by tag name, raw (not percent-decoded). ProtocolError if
    there is no such element or it is not well formed."""
    lower = document.lower()
    start = lower.find(f"<{root}>")
    if start < 0:
        raise ProtocolError(f"no <{root}> element")
    end = lower.find(f"</{root}>", start)
    if end < 0:
        raise ProtocolError(f"<{root}> is not closed")
    body = document[start + len(root) + 2 : end]
    found: dict[str, list[str]] = {}
    pos = 0
    while True:
        lt = body.find("<", pos)
        if lt < 0:
            if body[pos:].strip():
                raise ProtocolError(f"text outside any tag in <{root}>")
            return found
        if body[pos:lt].strip():
            raise ProtocolError(f"text outside any tag in <{root}>")
        match = _NAME.match(body, lt + 1)
        if match is None:
            raise ProtocolError(f"malformed tag in <{root}>")
        name, after = match.group(0), match.end()
        if body.startswith("/>", after):  # <Tag/>
            found.setdefault(name, []).append("")
            pos = after + 2
            continue
        if not body.startswith(">", after):
            raise ProtocolError(f"<{name}> has attributes or is malformed")
        close = body.find(f"</{name}>", after + 1)
        if close < 0:
            raise ProtocolError(f"<{name}> is not closed")
        found.setdefault(name, []).append(_unescape(body[after + 1 : close]))
        pos = close + len(name) + 3


def decode_text(raw: str) -> str:
    """A percent-encoded text field (`APPROVAL%20AXS156`), decoded; invalid UTF-8 replaced."""
    return urllib.parse.unquote(raw, errors="replace")


def pairs(raw: str) -> dict[str, str]:
    """`ExtData` / `EMVData`: comma-separated `key=value`, each side percent-decoded after the
    split (an encoded comma stays inside its value); the first of a repeated key wins; a part
    without `=` is ignored."""
    out: dict[str, str] = {}
    for part in raw.split(","):
        key, sep, value = part.partition("=")
        key = decode_text(key).strip()
        if sep and key and key not in out:
            out[key] = decode_text(value).strip()
    return out

"""Safe parsing of WeChat's XML bodies into dicts and message objects."""

from typing import Any
from xml.etree.ElementTree import Element, ParseError, TreeBuilder

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser

from .events import EVENT_TYPES, UnknownEvent
from .exceptions import ForbiddenXMLError, InvalidEncodingError, MalformedXMLError, RootElementError
from .messages import MESSAGE_TYPES, BaseMessage, UnknownMessage, dedupe_key, get_text

__all__ = ["dedupe_key", "parse_message", "parse_xml"]

# WeChat nests at most four levels deep; the cap keeps hostile nesting away
# from the recursion limit.
_MAX_DEPTH = 16
# Parents whose <item> children are always a list, even when there is one.
_ITEM_LISTS = frozenset({"PicList", "Articles"})


def parse_xml(data: bytes | str) -> dict[str, Any]:
    """Parse a body into a dict of the children of its <xml> root."""
    parser = DefusedXMLParser(
        target=TreeBuilder(), encoding="utf-8", forbid_dtd=True, forbid_entities=True, forbid_external=True
    )
    try:
        parser.feed(_utf8(data))
        root = parser.close()
    except DefusedXmlException as exc:
        raise ForbiddenXMLError(str(exc)) from exc
    except ParseError as exc:
        raise MalformedXMLError(str(exc)) from exc
    if root.tag != "xml":
        raise RootElementError(f"root element is <{root.tag}>, not <xml>")
    return _children(root, depth=1)


def parse_message(data: bytes | str | dict[str, Any]) -> BaseMessage:
    """Parse a body (or its fields) into the message or event class for its type."""
    fields = data if isinstance(data, dict) else parse_xml(data)
    msg_type = get_text(fields, "MsgType").lower()
    if msg_type == "event":
        return EVENT_TYPES.get(get_text(fields, "Event").lower(), UnknownEvent)(fields)
    return MESSAGE_TYPES.get(msg_type, UnknownMessage)(fields)


def _utf8(data: bytes | str) -> bytes:
    """The body as UTF-8 bytes; anything else is refused, never read in another
    encoding (expat is told UTF-8, whatever a declaration says)."""
    try:
        raw = data.encode("utf-8") if isinstance(data, str) else data  # lone surrogates fail here
        raw.decode("utf-8")
    except UnicodeError as exc:
        raise InvalidEncodingError("body is not valid UTF-8") from exc
    # No XML holds U+0000, and UTF-16 or UTF-32 holds a 0 byte in every '<': expat,
    # though told UTF-8, would read them as what its first bytes suggest.
    if b"\x00" in raw:
        raise InvalidEncodingError("body holds NUL bytes")
    return raw


def _children(element: Element, depth: int) -> dict[str, Any]:
    if depth > _MAX_DEPTH:
        raise ForbiddenXMLError("XML nested too deeply")
    result: dict[str, Any] = {}
    for child in element:
        value = _children(child, depth + 1) if len(child) else child.text or ""
        previous = result.get(child.tag)
        if isinstance(previous, list):
            previous.append(value)
        elif previous is not None:
            result[child.tag] = [previous, value]
        elif child.tag == "item" and element.tag in _ITEM_LISTS:
            result[child.tag] = [value]
        else:
            result[child.tag] = value
    return result

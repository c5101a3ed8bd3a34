"""Inbound messages as WeChat's server writes them: fields in, XML out."""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Union

from wechat.replies import cdata

DEFAULT_ACCOUNT = "gh_wxrelay_local"
DEFAULT_USER = "o_simulated_user"

# A field is text (sent in CDATA), a number (sent bare) or nested elements.
FieldValue = Union[str, int, float, Mapping[str, "FieldValue"]]
Fields = Mapping[str, FieldValue]

# Canonical spelling of the events the simulator knows; WeChat mixes cases.
_EVENT_NAMES = {name.lower(): name for name in ("subscribe", "unsubscribe", "CLICK", "SCAN", "LOCATION", "VIEW")}
_SIMULATED_TICKET = "gQ_simulated_ticket"
# The sample position from WeChat's documentation of the LOCATION event.
_SAMPLE_LOCATION = {"Latitude": 23.137466, "Longitude": 113.352425, "Precision": 119.385040}


def new_msg_id() -> int:
    """A fresh positive 63-bit MsgId, 19 digits like WeChat's."""
    return secrets.randbits(62) + 2**62


def text_message(
    content: str,
    *,
    user: str = DEFAULT_USER,
    account: str = DEFAULT_ACCOUNT,
    msg_id: int | None = None,
    **extra: FieldValue,
) -> dict[str, FieldValue]:
    """The fields of a text message from `user` to `account`; `extra` adds or overrides fields."""
    fields: dict[str, FieldValue] = {
        **_header(user, account, "text"),
        "Content": content,
        "MsgId": new_msg_id() if msg_id is None else msg_id,
    }
    fields.update(extra)
    return fields


def event_message(
    name: str,
    key: str | None = None,
    *,
    user: str = DEFAULT_USER,
    account: str = DEFAULT_ACCOUNT,
    **extra: FieldValue,
) -> dict[str, FieldValue]:
    """The fields of an event; `extra` adds or overrides fields.

    Known events get WeChat's spelling and the fields WeChat always sends:
    a keyed `subscribe` (a parametric QR code) gets `qrscene_<key>` and a
    Ticket, SCAN a Ticket, LOCATION a sample position. Unknown names are sent
    as given.
    """
    event = _EVENT_NAMES.get(name.lower(), name)
    fields: dict[str, FieldValue] = {**_header(user, account, "event"), "Event": event}
    if event == "subscribe" and key is not None:
        fields["EventKey"] = key if key.startswith("qrscene_") else f"qrscene_{key}"
        fields["Ticket"] = _SIMULATED_TICKET
    elif key is not None:
        fields["EventKey"] = key
    if event == "SCAN":
        fields["Ticket"] = _SIMULATED_TICKET
    if event == "LOCATION":
        fields.update(_SAMPLE_LOCATION)
    fields.update(extra)
    return fields


def to_xml(fields: Fields) -> str:
    """Render fields as a WeChat `<xml>` document, one element a line."""
    return f"<xml>{_elements(fields)}\n</xml>"


def _header(user: str, account: str, msg_type: str) -> dict[str, FieldValue]:
    return {"ToUserName": account, "FromUserName": user, "CreateTime": int(time.time()), "MsgType": msg_type}


def _elements(fields: Fields) -> str:
    return "".join(f"\n<{name}>{_value(value)}</{name}>" for name, value in fields.items())


def _value(value: FieldValue) -> str:
    if isinstance(value, Mapping):
        return f"{_elements(value)}\n"
    if isinstance(value, str):
        return cdata(value)
    return str(value)

"""Inbound user messages, one class per MsgType.

Field access never raises: hostile but well-formed XML can carry any value,
so a missing or malformed field falls back to a default.
"""

import math
from typing import Any


def get_text(fields: dict[str, Any], name: str) -> str:
    """The field as a string, or '' when missing or not a leaf."""
    value = fields.get(name)
    return value if isinstance(value, str) else ""


def get_optional_text(fields: dict[str, Any], name: str) -> str | None:
    value = fields.get(name)
    return value if isinstance(value, str) else None


def get_int(fields: dict[str, Any], name: str) -> int | None:
    try:
        return int(get_text(fields, name))
    except ValueError:
        return None


def get_float(fields: dict[str, Any], name: str) -> float:
    """The field as a finite float, or 0.0."""
    try:
        value = float(get_text(fields, name))
    except ValueError:
        return 0.0
    return value if math.isfinite(value) else 0.0


def get_dict(fields: dict[str, Any], name: str) -> dict[str, Any]:
    value = fields.get(name)
    return value if isinstance(value, dict) else {}


def dedupe_key(fields: dict[str, Any]) -> str:
    """The key under which WeChat's retries of one delivery collide."""
    msg_id = get_text(fields, "MsgId")
    # Events carry no MsgId; the job events' MsgID is a job id, not a message id.
    if msg_id and get_text(fields, "MsgType").lower() != "event":
        return f"msg:{msg_id}"
    # WeChat's rule is sender + time; the event name and EventKey are added
    # because one user can trigger two events in one second (subscribe, then
    # LOCATION; or two menu clicks with different keys), and a retry always
    # repeats its own name and key. EventKey is '' when absent.
    sender, created = get_text(fields, "FromUserName"), get_text(fields, "CreateTime")
    event, event_key = get_text(fields, "Event").lower(), get_text(fields, "EventKey")
    return f"event:{sender}:{created}:{event}:{event_key}"


class BaseMessage:
    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.id = get_int(raw, "MsgId")
        self.source = get_text(raw, "FromUserName")
        self.target = get_text(raw, "ToUserName")
        self.time = get_int(raw, "CreateTime") or 0
        self.type = get_text(raw, "MsgType").lower()

    @property
    def dedupe_key(self) -> str:
        return dedupe_key(self.raw)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, source={self.source!r}, time={self.time})"


class TextMessage(BaseMessage):
    def __init__(self, raw: dict[str, Any]) -> None:
        super().__init__(raw)
        self.content = get_text(raw, "Content")


class ImageMessage(BaseMessage):
    def __init__(self, raw: dict[str, Any]) -> None:
        super().__init__(raw)
        self.pic_url = get_text(raw, "PicUrl")
        self.media_id = get_text(raw, "MediaId")


class VoiceMessage(BaseMessage):
    def __init__(self, raw: dict[str, Any]) -> None:
        super().__init__(raw)
        self.media_id = get_text(raw, "MediaId")
        self.format = get_text(raw, "Format")
        # Present only when the account has speech recognition on.
        self.recognition = get_optional_text(raw, "Recognition")


# VideoMessage and ShortVideoMessage share a private base so that isinstance()
# never confuses them.
class _VideoBase(BaseMessage):
    def __init__(self, raw: dict[str, Any]) -> None:
        super().__init__(raw)
        self.media_id = get_text(raw, "MediaId")
        self.thumb_media_id = get_text(raw, "ThumbMediaId")


class VideoMessage(_VideoBase):
    pass


class ShortVideoMessage(_VideoBase):
    pass


class LocationMessage(BaseMessage):
    def __init__(self, raw: dict[str, Any]) -> None:
        super().__init__(raw)
        self.location_x = get_float(raw, "Location_X")
        self.location_y = get_float(raw, "Location_Y")
        self.scale = get_int(raw, "Scale") or 0
        self.label = get_text(raw, "Label")

    @property
    def location(self) -> tuple[float, float]:
        return self.location_x, self.location_y


class LinkMessage(BaseMessage):
    def __init__(self, raw: dict[str, Any]) -> None:
        super().__init__(raw)
        self.title = get_text(raw, "Title")
        self.description = get_text(raw, "Description")
        self.url = get_text(raw, "Url")


class UnknownMessage(BaseMessage):
    pass


MESSAGE_TYPES: dict[str, type[BaseMessage]] = {
    "text": TextMessage,
    "image": ImageMessage,
    "voice": VoiceMessage,
    "video": VideoMessage,
    "shortvideo": ShortVideoMessage,
    "location": LocationMessage,
    "link": LinkMessage,
}

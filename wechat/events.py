"""Inbound events (MsgType `event`), one class per Event value."""

from typing import Any

from .messages import BaseMessage, get_dict, get_float, get_int, get_optional_text, get_text

_QRSCENE_PREFIX = "qrscene_"


class BaseEvent(BaseMessage):
    def __init__(self, raw: dict[str, Any]) -> None:
        super().__init__(raw)
        self.event = get_text(raw, "Event").lower()

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(event={self.event!r}, source={self.source!r}, time={self.time})"


class SubscribeEvent(BaseEvent):
    def __init__(self, raw: dict[str, Any]) -> None:
        super().__init__(raw)
        self.key = get_text(raw, "EventKey")
        # Set only when the user subscribed through a parametric QR code.
        has_scene = self.key.startswith(_QRSCENE_PREFIX)
        self.scene = self.key.removeprefix(_QRSCENE_PREFIX) if has_scene else None
        self.ticket = get_optional_text(raw, "Ticket")


class UnsubscribeEvent(BaseEvent):
    pass


class ScanEvent(BaseEvent):
    def __init__(self, raw: dict[str, Any]) -> None:
        super().__init__(raw)
        self.key = get_text(raw, "EventKey")
        self.scene = self.key
        self.ticket = get_optional_text(raw, "Ticket")


class LocationEvent(BaseEvent):
    def __init__(self, raw: dict[str, Any]) -> None:
        super().__init__(raw)
        self.latitude = get_float(raw, "Latitude")
        self.longitude = get_float(raw, "Longitude")
        self.precision = get_float(raw, "Precision")


class ClickEvent(BaseEvent):
    def __init__(self, raw: dict[str, Any]) -> None:
        super().__init__(raw)
        self.key = get_text(raw, "EventKey")


class ViewEvent(BaseEvent):
    def __init__(self, raw: dict[str, Any]) -> None:
        super().__init__(raw)
        self.key = get_text(raw, "EventKey")
        self.url = self.key
        self.menu_id = get_optional_text(raw, "MenuId")


class TemplateSendJobFinishEvent(BaseEvent):
    def __init__(self, raw: dict[str, Any]) -> None:
        super().__init__(raw)
        self.job_id = get_int(raw, "MsgID")
        self.status = get_text(raw, "Status")


class MassSendJobFinishEvent(BaseEvent):
    def __init__(self, raw: dict[str, Any]) -> None:
        super().__init__(raw)
        self.job_id = get_int(raw, "MsgID")
        self.status = get_text(raw, "Status")
        self.total_count = get_int(raw, "TotalCount") or 0
        self.filter_count = get_int(raw, "FilterCount") or 0
        self.sent_count = get_int(raw, "SentCount") or 0
        self.error_count = get_int(raw, "ErrorCount") or 0


# Sibling events share a private base so that isinstance() never confuses them.
class _ScanCodeEvent(BaseEvent):
    def __init__(self, raw: dict[str, Any]) -> None:
        super().__init__(raw)
        info = get_dict(raw, "ScanCodeInfo")
        self.key = get_text(raw, "EventKey")
        self.scan_type = get_text(info, "ScanType")
        self.scan_result = get_text(info, "ScanResult")


class ScanCodePushEvent(_ScanCodeEvent):
    pass


class ScanCodeWaitMsgEvent(_ScanCodeEvent):
    pass


class _PicEvent(BaseEvent):
    def __init__(self, raw: dict[str, Any]) -> None:
        super().__init__(raw)
        info = get_dict(raw, "SendPicsInfo")
        items = get_dict(info, "PicList").get("item")
        if not isinstance(items, list):
            items = []
        self.key = get_text(raw, "EventKey")
        self.count = get_int(info, "Count") or 0
        self.pictures = [get_text(item, "PicMd5Sum") for item in items if isinstance(item, dict)]


class PicSysPhotoEvent(_PicEvent):
    pass


class PicPhotoOrAlbumEvent(_PicEvent):
    pass


class PicWeixinEvent(_PicEvent):
    pass


class LocationSelectEvent(BaseEvent):
    def __init__(self, raw: dict[str, Any]) -> None:
        super().__init__(raw)
        info = get_dict(raw, "SendLocationInfo")
        self.key = get_text(raw, "EventKey")
        self.location_x = get_float(info, "Location_X")
        self.location_y = get_float(info, "Location_Y")
        self.scale = get_int(info, "Scale") or 0
        self.label = get_text(info, "Label")
        self.poiname = get_text(info, "Poiname")


class UnknownEvent(BaseEvent):
    pass


EVENT_TYPES: dict[str, type[BaseEvent]] = {
    "subscribe": SubscribeEvent,
    "unsubscribe": UnsubscribeEvent,
    "scan": ScanEvent,
    "location": LocationEvent,
    "click": ClickEvent,
    "view": ViewEvent,
    "templatesendjobfinish": TemplateSendJobFinishEvent,
    "masssendjobfinish": MassSendJobFinishEvent,
    "scancode_push": ScanCodePushEvent,
    "scancode_waitmsg": ScanCodeWaitMsgEvent,
    "pic_sysphoto": PicSysPhotoEvent,
    "pic_photo_or_album": PicPhotoOrAlbumEvent,
    "pic_weixin": PicWeixinEvent,
    "location_select": LocationSelectEvent,
}

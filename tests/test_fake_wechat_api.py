"""The fake of WeChat's API servers behaves like the real endpoints."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest

from simulator.api import DROPPED, FakeWeChatAPI

APPID = "wx_test_appid"
SECRET = "test_secret"


@pytest.fixture
def api() -> Iterator[FakeWeChatAPI]:
    with FakeWeChatAPI(appid=APPID, secret=SECRET) as fake:
        yield fake


def fetch_token(api: FakeWeChatAPI, secret: str = SECRET) -> dict:
    query = {"grant_type": "client_credential", "appid": APPID, "secret": secret}
    return httpx.get(f"{api.base_url}/cgi-bin/token", params=query, trust_env=False).json()


def send(api: FakeWeChatAPI, token: str, payload: dict) -> dict:
    url = f"{api.base_url}/cgi-bin/message/custom/send"
    return httpx.post(url, params={"access_token": token}, json=payload, trust_env=False).json()


def text_payload(content: str, user: str = "o_user") -> dict:
    return {"touser": user, "msgtype": "text", "text": {"content": content}}


def test_token_flow_issues_unique_tokens_and_counts_fetches(api: FakeWeChatAPI) -> None:
    first, second = fetch_token(api), fetch_token(api)

    assert first["expires_in"] == 7200
    assert first["access_token"] != second["access_token"]
    assert api.token_requests == 2
    # The older token stays valid, as WeChat keeps it for five minutes.
    assert send(api, first["access_token"], text_payload("hi")) == {"errcode": 0, "errmsg": "ok"}


def test_wrong_credentials_get_errcodes(api: FakeWeChatAPI) -> None:
    assert fetch_token(api, secret="wrong")["errcode"] == 40001
    wrong_appid = {"grant_type": "client_credential", "appid": "wx_other", "secret": SECRET}
    assert httpx.get(f"{api.base_url}/cgi-bin/token", params=wrong_appid, trust_env=False).json()["errcode"] == 40013
    assert api.token_requests == 0


def test_accepted_send_is_recorded_with_its_raw_utf8_body(api: FakeWeChatAPI) -> None:
    token = fetch_token(api)["access_token"]
    raw = '{"touser":"o_user","msgtype":"text","text":{"content":"你好"}}'.encode()

    url = f"{api.base_url}/cgi-bin/message/custom/send"
    answer = httpx.post(url, params={"access_token": token}, content=raw, trust_env=False).json()

    assert answer == {"errcode": 0, "errmsg": "ok"}
    assert api.messages == [text_payload("你好")]
    assert api.send_attempts[0].body == raw
    assert b"\\u" not in api.send_attempts[0].body


def test_unknown_token_is_invalid_credential(api: FakeWeChatAPI) -> None:
    assert send(api, "not-a-token", text_payload("hi"))["errcode"] == 40001
    assert api.messages == []
    assert [attempt.errcode for attempt in api.send_attempts] == [40001]


def test_expired_tokens_get_42001_until_a_new_fetch(api: FakeWeChatAPI) -> None:
    old = fetch_token(api)["access_token"]
    api.expire_tokens()

    assert send(api, old, text_payload("hi")) == {"errcode": 42001, "errmsg": "access_token expired"}
    assert send(api, fetch_token(api)["access_token"], text_payload("hi"))["errcode"] == 0


def test_fail_next_answers_the_given_errors_then_recovers(api: FakeWeChatAPI) -> None:
    token = fetch_token(api)["access_token"]
    api.fail_next(45015, count=2)

    codes = [send(api, token, text_payload(str(n)))["errcode"] for n in range(3)]

    assert codes == [45015, 45015, 0]
    assert api.messages == [text_payload("2")]


def test_wait_for_wakes_on_a_send_from_another_thread(api: FakeWeChatAPI) -> None:
    token = fetch_token(api)["access_token"]
    sender = threading.Thread(target=send, args=(api, token, text_payload("late")))
    sender.start()

    api.wait_for(lambda fake: len(fake.messages) == 1, timeout=5.0)
    sender.join()

    with pytest.raises(TimeoutError):
        api.wait_for(lambda fake: len(fake.messages) == 2, timeout=0.05)


def test_wechats_busy_and_unauthorized_answers_have_their_errmsg(api: FakeWeChatAPI) -> None:
    token = fetch_token(api)["access_token"]
    api.fail_next(-1)
    api.fail_next(48001)

    assert send(api, token, text_payload("1")) == {"errcode": -1, "errmsg": "system error"}
    assert send(api, token, text_payload("2")) == {"errcode": 48001, "errmsg": "api unauthorized"}
    assert send(api, token, text_payload("3"))["errcode"] == 0


def test_held_token_requests_wait_until_released(api: FakeWeChatAPI) -> None:
    api.hold_tokens()
    answers: list[dict] = []
    fetchers = [threading.Thread(target=lambda: answers.append(fetch_token(api))) for _ in range(2)]
    for fetcher in fetchers:
        fetcher.start()
    api.wait_for(lambda fake: fake.token_requests_waiting == 2, timeout=5.0)
    assert answers == [] and api.token_requests == 0

    api.release_tokens()
    for fetcher in fetchers:
        fetcher.join(timeout=5.0)

    assert [("access_token" in answer) for answer in answers] == [True, True]
    assert api.token_requests_waiting == 0 and api.token_requests == 2
    # Released: later requests are not held.
    assert "access_token" in fetch_token(api)


def test_stop_lets_held_token_requests_go() -> None:
    fake = FakeWeChatAPI(appid=APPID, secret=SECRET)
    fake.start()
    fake.hold_tokens()
    url = f"{fake.base_url}/cgi-bin/token"
    outcomes: list[object] = []

    def fetch() -> None:
        try:
            outcomes.append(httpx.get(url, params={"appid": APPID}, trust_env=False, timeout=10.0).status_code)
        except httpx.TransportError as error:
            outcomes.append(error)

    fetcher = threading.Thread(target=fetch)
    fetcher.start()
    fake.wait_for(lambda f: f.token_requests_waiting == 1, timeout=5.0)
    stopper = threading.Thread(target=fake.stop)
    stopper.start()
    stopper.join(timeout=5.0)
    fetcher.join(timeout=5.0)

    assert not stopper.is_alive() and not fetcher.is_alive()
    assert len(outcomes) == 1 and fake.token_requests_waiting == 0


def test_dropped_sends_get_no_answer_and_are_recorded(api: FakeWeChatAPI) -> None:
    token = fetch_token(api)["access_token"]
    api.drop_next(count=2)

    for n in range(2):
        with pytest.raises(httpx.TransportError):
            send(api, token, text_payload(f"lost {n}"))

    assert [a.errcode for a in api.send_attempts] == [DROPPED, DROPPED] and api.messages == []
    assert send(api, token, text_payload("again"))["errcode"] == 0
    assert api.messages == [text_payload("again")]


def test_sends_to_lists_one_users_accepted_payloads_in_order(api: FakeWeChatAPI) -> None:
    token = fetch_token(api)["access_token"]
    send(api, token, text_payload("a1", user="o_a"))
    send(api, token, text_payload("b1", user="o_b"))
    api.fail_next(45015)
    send(api, token, text_payload("refused", user="o_a"))
    send(api, token, text_payload("a2", user="o_a"))

    assert api.sends_to("o_a") == [text_payload("a1", user="o_a"), text_payload("a2", user="o_a")]
    assert api.sends_to("o_b") == [text_payload("b1", user="o_b")]
    assert api.sends_to("o_nobody") == []


def test_reset_failures_forgets_pending_errors_and_drops(api: FakeWeChatAPI) -> None:
    token = fetch_token(api)["access_token"]
    api.fail_next(-1, count=3)
    api.drop_next(count=2)

    api.reset_failures()

    assert send(api, token, text_payload("hi")) == {"errcode": 0, "errmsg": "ok"}
    assert [a.errcode for a in api.send_attempts] == [0]


def stable(api: FakeWeChatAPI, force: bool = False, secret: str = SECRET) -> dict:
    body = {"grant_type": "client_credential", "appid": APPID, "secret": secret, "force_refresh": force}
    return httpx.post(f"{api.base_url}/cgi-bin/stable_token", json=body, trust_env=False).json()


def test_stable_token_hands_out_one_token_until_forced_and_forcing_ends_the_old(api: FakeWeChatAPI) -> None:
    first = stable(api)["access_token"]
    assert stable(api)["access_token"] == first
    forced = stable(api, force=True)["access_token"]
    assert forced != first and api.forced_refreshes == 1
    assert send(api, first, text_payload("hi"))["errcode"] == 40001
    assert send(api, forced, text_payload("hi"))["errcode"] == 0
    assert stable(api, secret="wrong")["errcode"] == 40125


def test_a_revoked_stable_token_comes_back_until_a_forced_refresh(api: FakeWeChatAPI) -> None:
    token = stable(api)["access_token"]
    api.revoke_stable_token()
    assert send(api, token, text_payload("hi"))["errcode"] == 40001
    assert stable(api)["access_token"] == token
    assert stable(api, force=True)["access_token"] != token


def test_several_official_accounts_each_get_their_own_token_and_sends_know_whose(api: FakeWeChatAPI) -> None:
    api.add_official("wx_other", "other_secret")
    url = f"{api.base_url}/cgi-bin/stable_token"
    request = {"grant_type": "client_credential", "appid": "wx_other", "secret": "other_secret"}
    other = httpx.post(url, json=request, trust_env=False).json()["access_token"]
    ours = fetch_token(api)["access_token"]
    assert other != ours
    assert httpx.post(url, json={**request, "secret": SECRET}, trust_env=False).json()["errcode"] == 40125
    assert send(api, other, text_payload("from the other"))["errcode"] == 0
    assert send(api, ours, text_payload("from ours"))["errcode"] == 0
    assert [m["text"]["content"] for m in api.sends_by("wx_other")] == ["from the other"]
    assert [m["text"]["content"] for m in api.sends_by(APPID)] == ["from ours"]


def test_a_wecom_app_gets_one_token_from_gettoken_and_sends_with_its_agentid(api: FakeWeChatAPI) -> None:
    api.add_wecom_app("ww_corp", "app_secret", 1000002)

    def gettoken(corpid: str, secret: str) -> dict:
        query = {"corpid": corpid, "corpsecret": secret}
        return httpx.get(f"{api.base_url}/cgi-bin/gettoken", params=query, trust_env=False).json()

    first, again = gettoken("ww_corp", "app_secret"), gettoken("ww_corp", "app_secret")
    assert first["errcode"] == 0 and first["access_token"] == again["access_token"]
    assert gettoken("ww_nobody", "app_secret")["errcode"] == 40013
    assert gettoken("ww_corp", "wrong")["errcode"] == 40001

    url = f"{api.base_url}/cgi-bin/message/send"
    token = first["access_token"]

    def wecom_send(agentid: int, access_token: str = token) -> int:
        payload = {**text_payload("hi", user="zhangsan"), "agentid": agentid}
        return httpx.post(url, params={"access_token": access_token}, json=payload, trust_env=False).json()["errcode"]

    assert wecom_send(1000003) == 40056
    assert wecom_send(1000002) == 0
    assert wecom_send(1000002, "not_a_token") == 40001
    api.expire_tokens()
    assert wecom_send(1000002) == 42001
    assert api.sends_by("ww_corp:1000002") == [{**text_payload("hi", user="zhangsan"), "agentid": 1000002}]

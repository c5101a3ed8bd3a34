"""The shared access_token comes from stable_token: another service of the same
AppID neither loses its token to ours nor makes us force a new one; a token
WeChat refuses is replaced by a plain fetch when WeChat has a newer one, and
forced only when WeChat hands the refused one back — once for a burst."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

from simulator.messages import new_msg_id
from tests.conftest import APPID, SECRET
from tests.test_late_delivery import SLOW, attempts_to, late_message


def another_service(api, force: bool = False) -> str:
    """A second service of the account (a CMS, a menu tool) fetching its own token."""
    body = {"grant_type": "client_credential", "appid": APPID, "secret": SECRET, "force_refresh": force}
    return httpx.post(f"{api.base_url}/cgi-bin/stable_token", json=body, trust_env=False).json()["access_token"]


def late_reply(wechat, api) -> str:
    user = f"o_token_{new_msg_id()}"
    late_message(wechat, user)
    api.wait_for(lambda a: bool(a.sends_to(user)), timeout=SLOW + 15)
    return user


def token_of_last_send(api, user: str) -> str:
    return [a.access_token for a in api.send_attempts if a.errcode == 0 and user.encode() in a.body][-1]


def test_another_service_fetching_its_token_costs_ours_nothing(wechat, wechat_api):
    ours = token_of_last_send(wechat_api, late_reply(wechat, wechat_api))
    forced = wechat_api.forced_refreshes
    assert another_service(wechat_api) == ours
    user = late_reply(wechat, wechat_api)
    assert token_of_last_send(wechat_api, user) == ours and attempts_to(wechat_api, user) == [0]
    assert wechat_api.forced_refreshes == forced


def test_a_token_another_service_forced_out_is_replaced_without_forcing(wechat, wechat_api):
    late_reply(wechat, wechat_api)
    forced = wechat_api.forced_refreshes
    theirs = another_service(wechat_api, force=True)
    user = late_reply(wechat, wechat_api)
    # Refused once (40001), then the plain fetch brings the token the other service made.
    assert attempts_to(wechat_api, user) == [40001, 0]
    assert token_of_last_send(wechat_api, user) == theirs
    assert wechat_api.forced_refreshes == forced + 1  # theirs, not ours


def test_a_refused_token_handed_back_is_forced_once_for_a_burst(wechat, wechat_api):
    refused = token_of_last_send(wechat_api, late_reply(wechat, wechat_api))
    forced = wechat_api.forced_refreshes
    wechat_api.revoke_stable_token()
    users = [f"o_burst_{new_msg_id()}" for _ in range(5)]
    with ThreadPoolExecutor(len(users)) as pool:
        list(pool.map(lambda user: late_message(wechat, user), users))
    wechat_api.wait_for(lambda a: all(a.sends_to(user) for user in users), timeout=SLOW + 20)
    assert wechat_api.forced_refreshes == forced + 1
    fresh = {token_of_last_send(wechat_api, user) for user in users}
    assert len(fresh) == 1 and refused not in fresh
    assert all(len(wechat_api.sends_to(user)) == 1 for user in users)

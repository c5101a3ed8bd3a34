"""WeChat's errcodes in an operator's words: what is wrong, and what to do about it."""

from __future__ import annotations

import re

# The errcodes an appliance's owner meets when pointing a real account at it.
_MEANING: dict[int, str] = {
    -1: "WeChat is busy (-1): try again in a minute",
    40001: "WeChat refused the AppSecret or the access_token (40001): check WECHAT_APPSECRET against the admin "
    "console (Settings and Development → Basic Configuration), and that nothing else resets the secret",
    40013: "the AppID is not valid (40013): check WECHAT_APPID against the admin console",
    40014: "the access_token is not valid (40014): another service may be fetching tokens with cgi-bin/token; "
    "let it read this appliance's",
    40125: "the AppSecret is wrong (40125): copy it again from the admin console (Settings and Development → "
    "Basic Configuration) into WECHAT_APPSECRET",
    40164: "add this server's IP {ip} to the API IP whitelist in the admin console (Settings and Development → "
    "Basic Configuration → IP whitelist) (40164)",
    42001: "the access_token expired (42001): it is fetched again by itself; if this persists, check the clock",
    45015: "the user's 48-hour window closed (45015): WeChat lets a late reply reach only a user who wrote in "
    "the last 48 hours",
    45047: "too many customer-service messages to one user (45047): WeChat allows a few per user message",
    48001: "the account has no permission for this API (48001): unverified accounts have no customer-service "
    "API; verify the account, or keep late replies for the user's next message (late_path = pickup)",
    50002: "the account is restricted (50002): see the admin console's notices",
    76022: "the account has no permission for this API (76022): unverified accounts have no customer-service "
    "API; verify the account, or keep late replies for the user's next message (late_path = pickup)",
}

# WeChat's 40164 errmsg names the caller: "invalid ip 203.0.113.7 ipv6 ::ffff:203.0.113.7, not in whitelist".
_CALLER_IP = re.compile(r"invalid ip ([0-9a-fA-F.:]+)")


def explain(errcode: int, errmsg: str = "") -> str:
    """One line for an operator: what the errcode means here, and the fix."""
    meaning = _MEANING.get(errcode)
    if meaning is None:
        return f"WeChat answered errcode {errcode}: {errmsg or 'no message'}"
    found = _CALLER_IP.search(errmsg)
    return meaning.replace("{ip}", found.group(1) if found else "(the address WeChat saw)")


# "No permission for this API": what the customer-service API answers an account that may not use it at all
# (48001, and 76022 from the same unverified accounts). No retry changes it; a late reply goes by pickup.
NO_PERMISSION = (48001, 76022)


def no_permission(errcode: int) -> bool:
    """Whether the errcode says the account may not use the API at all (not a passing failure)."""
    return errcode in NO_PERMISSION

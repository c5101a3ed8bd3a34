"""The accounts file: what it accepts, and one line for each mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from common import accounts
from common.accounts import DEFAULT, OFFICIAL, WECOM
from common.ledger import account_of, message_key, session_key
from common.settings import Settings
from wechat.exceptions import InvalidConfigError

AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
EXAMPLE = f"""
[accounts.shop]
kind = "official"
token = "shoptoken1"
aes_key = "{AES_KEY}"
appid = "wxshop0000000001"
secret = "${{SHOP_SECRET}}"
bot = "tests/bots/account_bots.py:shop"
modes = ["safe"]

[accounts.staff]
kind = "wecom"
token = "stafftoken1"
aes_key = "{AES_KEY}"
corpid = "ww0000000000000001"
agentid = 1000002
secret = "${{STAFF_SECRET}}"
late_replies = false
redis_url = "redis://127.0.0.1:6391/0"
"""


def load(tmp_path: Path, text: str, **env: str) -> accounts.Accounts:
    path = tmp_path / "accounts.toml"
    path.write_text(text)
    environ = {"WXRELAY_ACCOUNTS_FILE": str(path), **env}
    return accounts.load(Settings.from_env(environ, env_file="/dev/null"), environ)


def refusal(tmp_path: Path, text: str, **env: str) -> str:
    with pytest.raises(InvalidConfigError) as raised:
        load(tmp_path, text, **env)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_the_example_loads_with_its_secrets_from_the_environment(tmp_path):
    found = load(tmp_path, EXAMPLE, SHOP_SECRET="shop-secret-1", STAFF_SECRET="staff-secret-1")
    assert list(found) == ["shop", "staff"]
    shop, staff = found["shop"], found["staff"]
    assert (shop.kind, shop.secret, shop.modes, shop.path) == (OFFICIAL, "shop-secret-1", {"safe"}, "/wechat/shop")
    assert shop.queue == "wxrelay.shop" and shop.redis_url == "redis://127.0.0.1:6379/0"
    assert (staff.kind, staff.appid, staff.agentid, staff.late_replies) == (WECOM, "ww0000000000000001", 1000002, False)
    assert staff.token_owner == "ww0000000000000001:1000002" and shop.token_owner == "wxshop0000000001"
    assert staff.api_base == "https://qyapi.weixin.qq.com" and staff.redis_url.endswith(":6391/0")
    assert found.redis_urls == ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6391/0")


def test_todays_single_account_settings_are_the_default_account_on_wechat():
    settings = Settings.from_env({"WECHAT_TOKEN": "abcdef", "WECHAT_APPSECRET": "s3cret"}, env_file="/dev/null")
    found = accounts.load(settings, {})
    assert list(found) == [DEFAULT]
    default = found[DEFAULT]
    assert (default.path, default.queue, default.modes, default.secret) == ("/wechat", "wxrelay", {"plain"}, "s3cret")


def test_the_default_and_the_file_together(tmp_path):
    path = tmp_path / "accounts.toml"
    path.write_text('[accounts.blog]\ntoken = "blogtoken"\n')
    environ = {"WECHAT_TOKEN": "abcdef", "WXRELAY_ACCOUNTS_FILE": str(path)}
    found = accounts.load(Settings.from_env(environ, env_file="/dev/null"), environ)
    assert list(found) == [DEFAULT, "blog"]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[accounts.shop\n", "not valid TOML"),
        ('[shop]\ntoken = "abcdef"\n', "unknown table 'shop'"),
        ('[accounts.Shop]\ntoken = "abcdef"\n', "account name 'Shop'"),
        ("[accounts.shop]\n", "shop.token is not set"),
        ('[accounts.shop]\ntoken = "ab"\n', "shop.token: token must be"),
        ('[accounts.shop]\ntoken = "abcdef"\ncolour = "red"\n', "unknown field 'colour'"),
        ('[accounts.shop]\ntoken = "abcdef"\nkind = "mini"\n', "shop.kind must be official or wecom"),
        ('[accounts.shop]\ntoken = "abcdef"\naes_key = "short"\nappid = "wx1"\n', "shop.aes_key: EncodingAESKey"),
        (f'[accounts.shop]\ntoken = "abcdef"\naes_key = "{AES_KEY}"\n', "shop.appid is required"),
        ('[accounts.shop]\ntoken = "abcdef"\nmodes = ["safe"]\n', "shop.aes_key is required for compat and safe"),
        ('[accounts.shop]\ntoken = "abcdef"\nmodes = ["fast"]\n', "shop.modes must be a list"),
        ('[accounts.shop]\ntoken = "abcdef"\nsecret = "${NOPE}"\n', "shop.secret: environment variable NOPE"),
        ('[accounts.shop]\ntoken = "abcdef"\nagentid = 5\n', "an official account has no agentid"),
        ('[accounts.shop]\ntoken = "abcdef"\ncorpid = "ww1"\n', "has no corpid; use appid"),
        ('[accounts.shop]\ntoken = "abcdef"\nlate_replies = "yes"\n', "late_replies must be true or false"),
        ('[accounts.shop]\ntoken = "abcdef"\nlate_path = "mail"\n', "shop.late_path must be api or pickup, not 'mail'"),
        ('[accounts.shop]\ntoken = "abcdef"\npickup_text = ""\n', "shop.pickup_text must not be empty"),
        ('[accounts.shop]\ntoken = "abcdef"\nsecret = "s3cret"\ntyping = 1\n', "shop.typing must be true or false"),
        ('[accounts.shop]\ntoken = "abcdef"\ntyping = true\n', "typing must be true or false, and true needs"),
        (f'[accounts.hr]\nkind = "wecom"\ntoken = "abcdef"\naes_key = "{AES_KEY}"\n', "hr.corpid is required"),
        (
            f'[accounts.hr]\nkind = "wecom"\ntoken = "abcdef"\naes_key = "{AES_KEY}"\ncorpid = "ww1"\n',
            "hr.agentid must be",
        ),
        (
            f'[accounts.hr]\nkind = "wecom"\ntoken = "abcdef"\naes_key = "{AES_KEY}"\ncorpid = "ww1"\nagentid = 2\n'
            'modes = ["plain"]\n',
            "always encrypted",
        ),
        ("", "no account"),
    ],
)
def test_each_mistake_is_one_line_naming_the_account_and_field(tmp_path, text, says):
    assert says in refusal(tmp_path, text)


def test_an_account_twice_is_refused(tmp_path):
    path = tmp_path / "accounts.toml"
    path.write_text('[accounts.default]\ntoken = "abcdef"\n')
    environ = {"WECHAT_TOKEN": "abcdef", "WXRELAY_ACCOUNTS_FILE": str(path)}
    with pytest.raises(InvalidConfigError, match="also configured by WECHAT_TOKEN"):
        accounts.load(Settings.from_env(environ, env_file="/dev/null"), environ)


def test_a_missing_file_is_named(tmp_path):
    environ = {"WXRELAY_ACCOUNTS_FILE": str(tmp_path / "nowhere.toml")}
    with pytest.raises(InvalidConfigError, match="no file .*nowhere.toml"):
        accounts.load(Settings.from_env(environ, env_file="/dev/null"), environ)


def test_required_encryption_leaves_plaintext_out_and_refuses_an_account_with_only_plaintext(tmp_path):
    text = f'[accounts.shop]\ntoken = "abcdef"\naes_key = "{AES_KEY}"\nappid = "wx1"\n'
    found = load(tmp_path, text, WXRELAY_REQUIRE_ENCRYPTION="true")
    assert found["shop"].modes == {"compat", "safe"}
    says = refusal(tmp_path, '[accounts.shop]\ntoken = "abcdef"\n', WXRELAY_REQUIRE_ENCRYPTION="true")
    assert "accepts only plain" in says


def test_ledger_keys_and_sessions_are_within_their_account_and_default_keeps_its_own():
    assert message_key(DEFAULT, "msg:1") == "msg:1"
    assert message_key("shop", "msg:1") == "shop/msg:1"
    # An EventKey may hold a slash: WeChat's keys begin msg: or event:, an account name holds no colon.
    assert account_of("event:u:5:scan:a/b") == DEFAULT
    assert account_of("shop/event:u:5:scan:a/b") == "shop"
    assert account_of("msg:1") == DEFAULT
    assert session_key("o1") == "wxrelay:session:o1"
    assert session_key("o1", "shop") != session_key("o1", "blog")


def test_the_readmes_accounts_file_loads_as_it_says(tmp_path):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    example = readme.split("<!-- accounts-example -->")[1].split("```toml\n")[1].split("```")[0]
    secrets = {
        "SHOP_AES_KEY": AES_KEY, "SHOP_APPSECRET": "shop-secret", "NEWS_REDIS_URL": "redis://127.0.0.1:6400/0",
        "STAFF_AES_KEY": AES_KEY, "STAFF_SECRET": "staff-secret",
    }  # fmt: skip
    found = load(tmp_path, example, **secrets)
    assert [(a.name, a.kind, a.path) for a in found.values()] == [
        ("shop", OFFICIAL, "/wechat/shop"),
        ("news", OFFICIAL, "/wechat/news"),
        ("staff", WECOM, "/wechat/staff"),
    ]
    assert found["shop"].modes == {"safe"} and found["staff"].agentid == 1000002
    assert (found["news"].late_path, found["news"].pickup_text) == ("pickup", "稍等，发送任意消息查看回复")
    assert found["news"].redis_url == "redis://127.0.0.1:6400/0"
    # Without a choice, the path is what the account can do: the API with a secret.
    assert (found["shop"].late_path, found["staff"].late_path) == ("api", "api")
    assert (found["shop"].typing, found["news"].typing, found["staff"].typing) == (True, False, False)

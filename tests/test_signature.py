import pytest

from wechat import InvalidConfigError, SignatureError
from wechat.signature import check_msg_signature, check_signature, make_signature, validate_token


def test_v1_plain_signature():
    assert make_signature("test", "1410685589", "test") == "f21891de399b4e33a1a93c9a7b8a8fffb5a443ff"
    check_signature("test", "f21891de399b4e33a1a93c9a7b8a8fffb5a443ff", "1410685589", "test")


def test_v1_with_last_digit_changed_fails():
    with pytest.raises(SignatureError):
        check_signature("test", "f21891de399b4e33a1a93c9a7b8a8fffb5a443fe", "1410685589", "test")


def test_v2_get_verification_signature():
    signature = "f464b24fc39322e44b38aa78f5edd27bd1441696"
    assert make_signature("AAAAA", "1714036504", "1514711492") == signature
    check_signature("AAAAA", signature, "1714036504", "1514711492")


def test_v2_plain_post_signature():
    signature = "899cf89e464efb63f54ddac96b0a0a235f53aa78"
    assert make_signature("AAAAA", "1714037059", "486452656") == signature
    check_signature("AAAAA", signature, "1714037059", "486452656")


def test_signature_is_order_independent():
    assert make_signature("b", "a", "c") == make_signature("c", "b", "a")


def test_signature_for_another_token_fails():
    with pytest.raises(SignatureError):
        check_signature("other", "f21891de399b4e33a1a93c9a7b8a8fffb5a443ff", "1410685589", "test")


def test_uppercase_signature_fails():
    with pytest.raises(SignatureError):
        check_signature("test", "F21891DE399B4E33A1A93C9A7B8A8FFFB5A443FF", "1410685589", "test")


@pytest.mark.parametrize(
    "signature, timestamp, nonce",
    [
        (None, "1410685589", "test"),
        ("", "1410685589", "test"),
        ("f21891de399b4e33a1a93c9a7b8a8fffb5a443ff", None, "test"),
        ("f21891de399b4e33a1a93c9a7b8a8fffb5a443ff", "", "test"),
        ("f21891de399b4e33a1a93c9a7b8a8fffb5a443ff", "1410685589", None),
        ("f21891de399b4e33a1a93c9a7b8a8fffb5a443ff", "1410685589", ""),
    ],
)
def test_missing_or_empty_parameters_fail(signature, timestamp, nonce):
    with pytest.raises(SignatureError):
        check_signature("test", signature, timestamp, nonce)


def test_signature_of_empty_parts_is_rejected_even_if_it_matches():
    # sha1("test") is what an attacker could send with empty timestamp and nonce.
    with pytest.raises(SignatureError):
        check_signature("test", make_signature("test", "", ""), "", "")


def test_non_ascii_signature_fails_without_crashing():
    with pytest.raises(SignatureError):
        check_signature("test", "签名\udc80", "1410685589", "test")


def test_msg_signature_covers_encrypt():
    signature = make_signature("token", "1", "2", "ENCRYPTED")
    check_msg_signature("token", signature, "1", "2", "ENCRYPTED")
    with pytest.raises(SignatureError):
        check_msg_signature("token", signature, "1", "2", "ENCRYPTEd")


def test_msg_signature_missing_fails():
    with pytest.raises(SignatureError):
        check_msg_signature("token", None, "1", "2", "ENCRYPTED")


@pytest.mark.parametrize("token", ["abc", "A" * 32, "Token123"])
def test_valid_tokens(token):
    assert validate_token(token) == token


@pytest.mark.parametrize("token", ["", "ab", "A" * 33, "tok en", "tok-en", "token\n", "tökén"])
def test_invalid_tokens(token):
    with pytest.raises(InvalidConfigError):
        validate_token(token)


def test_check_signature_rejects_an_invalid_token():
    with pytest.raises(InvalidConfigError):
        check_signature("", make_signature("", "1", "2"), "1", "2")


def test_invalid_config_error_is_a_value_error():
    assert issubclass(InvalidConfigError, ValueError)

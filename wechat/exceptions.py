"""Exceptions raised by the WeChat protocol core."""


class WeChatError(Exception):
    """Base of every error raised by this package."""


class InvalidConfigError(WeChatError, ValueError):
    """A malformed token, EncodingAESKey or appid."""


class SignatureError(WeChatError):
    """A missing, empty or wrong `signature` or `msg_signature`."""


class DecryptError(WeChatError):
    """Base of all decryption failures."""


class InvalidBase64Error(DecryptError):
    pass


class InvalidPaddingError(DecryptError):
    pass


class InvalidLengthError(DecryptError):
    pass


class AppIdMismatchError(DecryptError):
    pass


class XMLError(WeChatError):
    """Base of every bad-input XML error (a client error, HTTP 400)."""


class MalformedXMLError(XMLError):
    pass


class InvalidEncodingError(XMLError):
    """The body is not valid UTF-8."""


class ForbiddenXMLError(XMLError):
    """DTDs, entity declarations, external references or excessive nesting."""


class RootElementError(XMLError):
    """The root element is not `<xml>`."""


class ReplyError(WeChatError, ValueError):
    pass


class TooManyArticlesError(ReplyError):
    pass

"""A simulated WeChat server, for the test-suite and `make say`."""

from simulator.client import WECOM, Attempt, DeliveryResult, ReplyVerificationError, Verification, WeChatSimulator
from simulator.messages import DEFAULT_ACCOUNT, DEFAULT_USER, event_message, new_msg_id, text_message, to_xml

__all__ = [
    "DEFAULT_ACCOUNT",
    "DEFAULT_USER",
    "WECOM",
    "Attempt",
    "DeliveryResult",
    "ReplyVerificationError",
    "Verification",
    "WeChatSimulator",
    "event_message",
    "new_msg_id",
    "text_message",
    "to_xml",
]

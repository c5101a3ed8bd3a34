"""`python -m simulator`: deliver one message to the callback URL as WeChat would.

Exit status: 0 when a delivery answered, 1 when none did, 2 on a
configuration error or a reply WeChat would not accept.
"""

from __future__ import annotations

import argparse
import sys

from common import accounts
from common.accounts import DEFAULT, Account
from common.settings import Settings
from simulator.client import MODES, WECOM, DeliveryResult, ReplyVerificationError, WeChatSimulator
from simulator.messages import DEFAULT_USER, event_message, text_message
from wechat.exceptions import InvalidConfigError

# What the user sees in WeChat when no delivery answers.
_UNAVAILABLE = "该公众号暂时无法提供服务，请稍后再试"


def parse_args(argv: list[str] | None, settings: Settings) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m simulator", description=__doc__.splitlines()[0])
    parser.add_argument("--account", default=DEFAULT, help="the account to write to (its URL and keys)")
    parser.add_argument("--url", help="the callback URL (default: the local appliance's, for the account)")
    parser.add_argument(
        "--mode",
        choices=(*MODES, WECOM),
        help="default: wecom for a WeCom app, else safe for an account with an EncodingAESKey",
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--text", help='a text message (the default: "hello")')
    what.add_argument("--event", help="an event: subscribe, unsubscribe, CLICK, SCAN, LOCATION, VIEW, …")
    parser.add_argument("--key", help="the event's EventKey")
    parser.add_argument("--user", default=DEFAULT_USER, help="the sender's OpenID")
    parser.add_argument("--deadline", type=float, default=settings.wechat_timeout, help="seconds per delivery")
    parser.add_argument("--deliveries", type=int, default=settings.deliveries, help="deliveries in all")
    args = parser.parse_args(argv)
    if args.key is not None and args.event is None:
        parser.error("--key needs --event")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings.from_env()
        args = parse_args(argv, settings)
        if not settings.token and not settings.accounts_file:
            raise InvalidConfigError("WECHAT_TOKEN is not set (the first `make run` writes one into .env)")
        account = _account(settings, args.account)
        args.url = args.url or f"http://127.0.0.1:{settings.http_port}{account.path}"
        args.mode = args.mode or _default_mode(account)
        simulator = WeChatSimulator(
            args.url,
            account.token,
            appid=account.appid,
            aes_key=account.aes_key,
            mode=args.mode,
            deadline=args.deadline,
            deliveries=args.deliveries,
            corpid=account.appid if account.kind == accounts.WECOM else "",
            agentid=account.agentid,
        )
        if args.event is not None:
            message = event_message(args.event, args.key, user=args.user, account=simulator.account)
            what = f"event {message['Event']}" + ("" if args.key is None else f" (key {args.key!r})")
        else:
            text = "hello" if args.text is None else args.text
            message = text_message(text, user=args.user, account=simulator.account)
            what = f'text "{text}"'
        print(f"→ {what} to {args.url} ({args.mode} mode, as {args.user})")
        result = simulator.send(message)
    except (InvalidConfigError, ReplyVerificationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report(result, simulator.deliveries)
    return 0 if result.answered else 1


def _account(settings: Settings, name: str) -> Account:
    found = accounts.load(settings)
    if name not in found:
        raise InvalidConfigError(f"no account {name!r}: the appliance serves {', '.join(found)}")
    return found[name]


def _default_mode(account: Account) -> str:
    if account.kind == accounts.WECOM:
        return WECOM
    return "safe" if account.aes_key else "plain"


def report(result: DeliveryResult, deliveries: int) -> None:
    for number, attempt in enumerate(result.attempts, start=1):
        if number == result.delivery:
            break
        outcome = f"HTTP {attempt.outcome}" if isinstance(attempt.outcome, int) else attempt.outcome
        print(f"← delivery {number} of {deliveries}: {outcome} after {attempt.seconds:.3f} s")
    if not result.answered:
        print(f"✗ no delivery answered; the user would see “{_UNAVAILABLE}”")
        if all(attempt.outcome == "unreachable" for attempt in result.attempts):
            print("  nothing listens there: is the appliance running? (make status; make run starts it)")
        return
    answered = f"← delivery {result.delivery} of {deliveries} answered in {result.elapsed:.3f} s"
    if result.reply is None:
        nothing = "success" if result.body else "empty body"
        print(f"{answered}: {nothing} (no passive reply)")
        return
    print(f"{answered} ({'reply verified and decrypted' if result.decrypted else 'plaintext reply'})")
    if result.text is not None:
        print(f"  text: {result.text}")
        return
    print(f"  {result.reply_message_type} reply:")
    for name, value in result.reply.items():
        print(f"    {name}: {value}")


if __name__ == "__main__":
    sys.exit(main())

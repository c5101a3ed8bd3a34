"""Rehearse the faults on a private appliance and print the table.

`python -m chaos [--only NAME ...] [--window SECONDS] [--keep]` (`make chaos`).

Exit status: 0 when every message of every scenario was answered exactly once
(none lost, none twice) and every other promise held; 1 otherwise; 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import time

from chaos import report, scenarios
from chaos.appliance import reply_budget
from chaos.rehearsal import Result
from chaos.stage import WECHAT_WINDOW, stage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", nargs="+", choices=list(scenarios.SCENARIOS), metavar="NAME",
        help=f"run only these scenarios: {', '.join(scenarios.SCENARIOS)}",
    )  # fmt: skip
    parser.add_argument(
        "--window", type=float, default=WECHAT_WINDOW,
        help="WeChat's wait per delivery, in seconds (WXRELAY_WECHAT_TIMEOUT; default: WeChat's real 5)",
    )  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the appliance's state folder and logs")
    args = parser.parse_args(argv)
    if args.window <= 0:
        parser.error("--window must be positive")
    names = args.only or list(scenarios.SCENARIOS)
    results: list[Result] = []
    began = time.monotonic()
    try:
        say(f"starting a private appliance (WeChat's window {args.window:g} s)")
        with stage(args.window, keep=args.keep) as rehearsal:
            say(f"appliance up on {rehearsal.appliance.url}; {len(names)} scenarios")
            for name in names:
                say(f"{name} …")
                started = time.monotonic()
                try:
                    result = scenarios.run(rehearsal, name)
                except Exception as exc:  # the scenario could not play out: its row says why, the next one runs
                    result = Result(name, [], problems=[f"{type(exc).__name__}: {exc}"])
                results.append(result)
                verdict = "ok" if result.ok else f"FAILED ({len(result.failures)} problems)"
                say(f"{name}: {verdict} in {time.monotonic() - started:.0f} s")
            say("stopping the appliance")
    except RuntimeError as exc:  # the appliance would not start
        print(f"chaos: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nchaos: interrupted; the appliance was stopped", file=sys.stderr)
        if results:
            print(report.render(results, args.window, reply_budget(args.window)))
        return 130
    print()
    print(report.render(results, args.window, reply_budget(args.window)))
    print(f"{len(results)} scenarios in {time.monotonic() - began:.0f} s")
    return 0 if results and all(result.ok for result in results) else 1


def say(text: str) -> None:
    print(f"chaos: {text}", flush=True)


if __name__ == "__main__":
    sys.exit(main())

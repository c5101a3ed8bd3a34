"""`python -m bench [--quick] [--only S,...]`: the appliance under load, side by side with the designs it replaces.

Writes bench.json (every figure), table.txt (the table printed at the end)
and latency.png (latency percentiles against offered load) to --out,
bench/results/ by default. `make bench [QUICK=1]` runs this.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from bench import report
from bench.procs import ROOT
from bench.run import PLANS, SCENARIOS, Bench, default_workdir


def scenario_list(value: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"scenarios are {', '.join(SCENARIOS)}; not {', '.join(unknown) or value!r}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="plan", const="quick", help="under 2 minutes")
    size.add_argument("--smoke", action="store_const", dest="plan", const="smoke",
                      help="the smallest workloads: checks that every part runs, measures nothing")  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="where the results go")
    parser.add_argument("--stack", choices=("auto", "appliance", "direct"), default="auto",
                        help="start the appliance with `python -m appliance run` (the default when it is there), "
                             "or start its processes directly from the deploy/ templates")  # fmt: skip
    parser.add_argument("--relays", type=int, help="relay processes, standby ones included (default: the appliance's)")
    parser.add_argument("--standby", type=int, help="of the relays, how many stand by (default: the appliance's)")
    parser.add_argument("--workers", type=int, help="worker processes (default: the appliance's)")
    parser.add_argument("--concurrency", type=int, help="handlers one worker runs at once (default: the appliance's)")
    parser.add_argument("--async-concurrency", type=int, metavar="N",
                        help="WXRELAY_ASYNC_CONCURRENCY of the appliance's workers: async handlers one worker process "
                             "keeps in flight (default: the appliance's own default)")  # fmt: skip
    parser.add_argument("--only", type=scenario_list, default=SCENARIOS, metavar="SCENARIO,...",
                        help=f"run only these scenarios ({', '.join(SCENARIOS)}), in that order")  # fmt: skip
    parser.add_argument("--no-baselines", action="store_true", help="measure the appliance alone")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (configs, logs)")
    args = parser.parse_args(argv)
    plan = PLANS[args.plan or "full"]
    stack = args.stack
    if stack == "auto":
        stack = "appliance" if (ROOT / "appliance" / "__main__.py").exists() else "direct"
    for tool in ("wrk", "redis-server", "nginx") + (("supervisord",) if stack == "appliance" else ()):
        if not (shutil.which(tool) or Path(f"/usr/sbin/{tool}").exists()):
            print(f"bench: {tool} is not installed (apt-get install {tool if tool != 'supervisord' else 'supervisor'})",
                  file=sys.stderr)  # fmt: skip
            return 2

    workdir = default_workdir()
    bench = Bench(plan, stack, workdir, args.relays, args.workers, args.concurrency, not args.no_baselines,
                  args.only, args.async_concurrency, args.standby)  # fmt: skip
    try:
        data = bench.run()
    except KeyboardInterrupt:
        print("\nbench: interrupted; every process it started is stopped", file=sys.stderr)
        return 130
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    data["summary"] = report.summarise(data)
    args.out.mkdir(parents=True, exist_ok=True)
    text = report.table(data)
    (args.out / "bench.json").write_text(json.dumps(data, indent=1) + "\n")
    (args.out / "table.txt").write_text(text + "\n")
    report.plot(data, str(args.out / "latency.png"))
    print(text)
    print(f"\nfigures: {args.out / 'bench.json'}, table: {args.out / 'table.txt'}, plot: {args.out / 'latency.png'}"
          + (f"\nwork folder kept: {workdir}" if args.keep else ""))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m appliance run|reload|stop|status|logs|doctor`: the whole appliance on this machine.

Exit status: 0 on success (`status`: all healthy), 1 when something is not,
2 on a configuration error.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from appliance import config, doctor, lifecycle, status
from appliance.system import ApplianceError
from wechat.exceptions import InvalidConfigError


def logs() -> int:
    layout = config.layout()
    files = sorted(str(path) for path in layout.log_dir.glob("*.log"))
    if not files:
        print(f"no logs in {layout.log_dir} yet: make run starts the stack")
        return 1
    os.execvp("tail", ["tail", "-n", "20", "-F", *files])


def _doctor(args: argparse.Namespace) -> int:
    if args.env_file is not None:
        site = doctor.server_site(
            args.env_file, args.http_port, args.supervisor_socket, not args.no_relays, not args.no_workers
        )
        return doctor.report(site)
    layout = config.layout()
    found = doctor.local_site(layout)
    if found is None:
        print(f"wxrelay is not running (state folder {layout.state_dir}); make run starts it")
        return 1
    return doctor.report(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="start the stack, or what of it is stopped, and wait until it is healthy")
    run.add_argument("--timeout", type=float, default=lifecycle.START_TIMEOUT, help="seconds to wait for health")
    reload = commands.add_parser("reload", help="take in the accounts file without dropping a delivery")
    reload.add_argument("--timeout", type=float, default=lifecycle.START_TIMEOUT, help="seconds to wait for health")
    commands.add_parser("stop", help="stop every process the stack runs and free its ports")
    commands.add_parser("status", help="each process and the chain nginx → relays → Redis → workers")
    commands.add_parser("logs", help="follow the logs (tail -F)")
    doctor_command = commands.add_parser("doctor", help="check every link a message travels; say what is wrong")
    doctor_command.add_argument("--env-file", type=Path, help="a deployed host: its env file (else the local run)")
    doctor_command.add_argument("--http-port", type=int, default=80, help="a deployed host: its nginx's port")
    doctor_command.add_argument("--supervisor-socket", default="/var/run/supervisor.sock", help="a deployed host")
    doctor_command.add_argument("--no-relays", action="store_true", help="a deployed host that runs no relays")
    doctor_command.add_argument("--no-workers", action="store_true", help="a deployed host that runs no workers")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return lifecycle.run(args.timeout)
        if args.command == "reload":
            return lifecycle.reload(args.timeout)
        if args.command == "stop":
            return lifecycle.stop()
        if args.command == "status":
            return status.report(config.layout())
        if args.command == "doctor":
            return _doctor(args)
        return logs()
    except InvalidConfigError as exc:
        print(f"wxrelay: configuration error: {exc}", file=sys.stderr)
        return 2
    except ApplianceError as exc:
        print(f"wxrelay: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nwxrelay: interrupted; whatever started keeps running (make status, make stop)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""A private network on this machine for the rehearsals' guests.

A bridge holds this machine's address; each guest is a network namespace of
its own, joined to the bridge by a veth pair, with its default route through
this machine, and an nftables masquerade lets the guests' apt reach the
Debian mirror. `down()` removes all of it and puts the forwarding switch back
as it was; `clean_stale()` removes what an interrupted run left (the caller
holds the rehearsal's lock, so no other run uses the names).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deploy.rehearse.commands import log, run

FORWARDING = Path("/proc/sys/net/ipv4/ip_forward")


@dataclass(frozen=True)
class Guest:
    netns: str
    address: str
    link: str  # this machine's end of the veth pair, on the bridge (15 characters at most)


class Network:
    def __init__(self, bridge: str, address: str, prefix: int, table: str, guests: list[Guest]) -> None:
        self.bridge, self.address, self.prefix, self.table = bridge, address, prefix, table
        self.guests = guests
        self.forwarding: str | None = None

    def clean_stale(self) -> None:
        namespaces = run(["ip", "netns", "list"]).stdout.split()
        for guest in self.guests:
            if guest.netns in namespaces:
                log(f"removing the network namespace {guest.netns} an interrupted rehearsal left")
                run(["ip", "netns", "delete", guest.netns], check=False)
            if run(["ip", "link", "show", guest.link], check=False).returncode == 0:
                run(["ip", "link", "delete", guest.link], check=False)
        if run(["ip", "link", "show", self.bridge], check=False).returncode == 0:
            run(["ip", "link", "delete", self.bridge], check=False)
        if run(["nft", "list", "table", "ip", self.table], check=False).returncode == 0:
            run(["nft", "delete", "table", "ip", self.table], check=False)

    def up(self) -> None:
        self.clean_stale()
        run(["ip", "link", "add", self.bridge, "type", "bridge"])
        run(["ip", "address", "add", f"{self.address}/{self.prefix}", "dev", self.bridge])
        run(["ip", "link", "set", self.bridge, "up"])
        for guest in self.guests:
            self.add(guest)
        subnet = f"{self.address}/{self.prefix}"
        ruleset = (
            f"table ip {self.table} {{\n"
            f"  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;\n"
            f'    ip saddr {subnet} oifname != "{self.bridge}" masquerade\n  }}\n}}\n'
        )
        run(["nft", "-f", "-"], input=ruleset)
        self.forwarding = FORWARDING.read_text().strip()
        FORWARDING.write_text("1\n")

    def add(self, guest: Guest) -> None:
        inside = f"{guest.link}g"
        run(["ip", "netns", "add", guest.netns])
        run(["ip", "link", "add", guest.link, "type", "veth", "peer", "name", inside])
        run(["ip", "link", "set", inside, "netns", guest.netns])
        run(["ip", "link", "set", guest.link, "master", self.bridge])
        run(["ip", "link", "set", guest.link, "up"])
        ip = ["ip", "-n", guest.netns]
        run([*ip, "link", "set", inside, "name", "host0"])
        run([*ip, "address", "add", f"{guest.address}/{self.prefix}", "dev", "host0"])
        run([*ip, "link", "set", "host0", "up"])
        run([*ip, "link", "set", "lo", "up"])
        run([*ip, "route", "add", "default", "via", self.address])

    def down(self) -> None:
        for guest in self.guests:
            run(["ip", "netns", "delete", guest.netns], check=False)  # takes the veth pair with it
            if run(["ip", "link", "show", guest.link], check=False).returncode == 0:
                run(["ip", "link", "delete", guest.link], check=False)
        if run(["ip", "link", "show", self.bridge], check=False).returncode == 0:
            run(["ip", "link", "delete", self.bridge], check=False)
        run(["nft", "delete", "table", "ip", self.table], check=False)
        if self.forwarding is not None:
            FORWARDING.write_text(f"{self.forwarding}\n")

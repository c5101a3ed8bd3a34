"""The README's "When things fail", one test per fault: the scenarios `make chaos`
rehearses (chaos/scenarios.py), against one private appliance for the module —
`python -m appliance run` in its own state folder, on free ports, everything under
supervisor, processes killed by the PIDs its supervisord gives.

WeChat's window is shortened through configuration (1.5 s) to keep the module
fast; the recovery timings are the shipped ones (WXRELAY_LEASE, the sweep).
Every message, in plaintext and safe mode, must be answered exactly once, with
its handler run once — at most twice where its worker died mid-handler.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from chaos import scenarios
from chaos.rehearsal import RECOVERY_LIMIT, Rehearsal, Result
from chaos.stage import stage
from tests.services import require_appliance

WINDOW = 1.5


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rehearsal]:
    require_appliance()
    with stage(WINDOW, workdir=tmp_path_factory.mktemp("chaos")) as started:
        yield started


def rehearse(rehearsal: Rehearsal, name: str) -> Result:
    result = scenarios.run(rehearsal, name)
    print(f"{name}: " + "; ".join(result.notes))
    return result


def assert_exactly_once(result: Result) -> None:
    assert result.tallies, "the scenario sent nothing"
    assert {t.mode for t in result.tallies} == {"plain", "safe"}
    for t in result.tallies:
        assert not t.lost, f"lost: {t.describe()}"
        assert not t.twice, f"answered twice: {t.describe()}"
        assert t.runs_ok, f"handler runs out of bounds: {t.describe()}"
        assert not t.wrong, f"wrong reply: {t.describe()}"
    assert result.lost == 0 and result.twice == 0
    assert not result.problems, "\n".join(result.problems)


def assert_recovered(result: Result) -> None:
    assert result.recovery is not None, "the fault hit no message"
    assert result.recovery < RECOVERY_LIMIT, f"the reply came {result.recovery:.1f} s after the fault"


def test_a_worker_killed_mid_handler(rehearsal: Rehearsal) -> None:
    result = rehearse(rehearsal, "worker-killed-mid-handler")
    assert_exactly_once(result)
    assert_recovered(result)
    # The killed worker's handlers ran again; nobody else's did.
    assert any(t.max_runs == 2 for t in result.tallies)
    assert all(t.runs == 1 for t in result.tallies if t.max_runs == 1)


def test_every_worker_killed_before_the_late_send(rehearsal: Rehearsal) -> None:
    result = rehearse(rehearsal, "worker-killed-before-late-send")
    assert_exactly_once(result)
    assert_recovered(result)
    late = [t for t in result.tallies if t.text == rehearsal.slow(3 * rehearsal.window + 1)]
    assert late and all(t.late == 1 and t.passive == 0 and t.runs == 1 for t in late)


@pytest.mark.parametrize("delivery", ["first", "middle", "last"])
def test_a_relay_killed_holding_a_delivery(rehearsal: Rehearsal, delivery: str) -> None:
    result = rehearse(rehearsal, f"relay-killed-{delivery}-delivery")
    assert_exactly_once(result)
    assert all(t.runs == 1 for t in result.tallies)
    assert result.recovery is not None, "the kill hit no held delivery"


def test_messages_arriving_while_the_relay_restarts(rehearsal: Rehearsal) -> None:
    # The WeChat of this scenario takes an HTTP error as final: a 502 would lose the message.
    result = rehearse(rehearsal, "relay-restart-window")
    assert_exactly_once(result)
    assert all(t.runs == 1 and t.passive == 1 for t in result.tallies)


def test_redis_killed(rehearsal: Rehearsal) -> None:
    result = rehearse(rehearsal, "redis-killed")
    assert_exactly_once(result)
    assert all(t.runs == 1 for t in result.tallies)


def test_redis_down_for_a_minute(rehearsal: Rehearsal) -> None:
    # The scenario checks that every delivery during the outage got HTTP 200 within the window.
    result = rehearse(rehearsal, "redis-down-60s")
    assert_exactly_once(result)
    assert all(t.runs == 1 for t in result.tallies)


def test_redis_full(rehearsal: Rehearsal) -> None:
    # The scenario checks /healthz's words, the metric and that no delivery got a 5xx.
    result = rehearse(rehearsal, "redis-full")
    assert_exactly_once(result)
    assert all(t.runs == 1 for t in result.tallies)


def test_nginx_reloaded(rehearsal: Rehearsal) -> None:
    result = rehearse(rehearsal, "nginx-reload")
    assert_exactly_once(result)
    assert all(t.runs == 1 for t in result.tallies)


def test_the_whole_host_restarted(rehearsal: Rehearsal) -> None:
    result = rehearse(rehearsal, "host-restarted")
    assert_exactly_once(result)
    # From the kill: the restart, then a worker's lease and sweep, then the handler the kill cut short.
    assert result.recovery is not None and result.recovery_limit is not None
    assert result.recovery < result.recovery_limit, f"the last reply came {result.recovery:.1f} s after the kill"
    # Only a handler the kill cut short ran again; the late replies already computed were sent, not remade.
    assert all(t.runs == 1 for t in result.tallies if t.max_runs == 1)
    late = [t for t in result.tallies if t.text == rehearsal.slow(3 * rehearsal.window + 1)]
    assert late and all(t.late == 1 and t.passive == 0 for t in late)
    # Answered `success` with only the relays' spools to remember them when the host died: replayed, sent late.
    spooled = [t for t in result.tallies if t.text == "spooled when the host died"]
    assert spooled and all(t.late == 1 and t.passive == 0 and t.runs == 1 for t in spooled)

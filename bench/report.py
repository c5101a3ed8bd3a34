"""From the raw figures to the summary, the targets, the table and the plot."""

from __future__ import annotations

from typing import Any

APPLIANCE = "appliance"
BASELINES = ("baseline-sync", "baseline-poll")
SHORT = {"appliance": "appliance", "baseline-sync": ".get()", "baseline-poll": "polling"}
P99_TARGET_MS = 25.0
IO_TARGET = 250.0
MEMORY_TARGET_MB = 400.0
THROUGHPUT_FACTOR = 2.0
# Scenario 5, the slow async bot.
PASSIVE_TARGET_PCT = 99.0
ASYNC_RSS_TARGET_MB = 600.0
STALL_TARGET_MS = 50.0


def _runs(data: dict[str, Any], system: str, scenario: str, mode: str | None = None) -> list[dict[str, Any]]:
    return [
        r
        for r in data["runs"]
        if r["system"] == system and r["scenario"] == scenario and (mode is None or r["mode"] == mode)
    ]


def _best(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The highest throughput with p99 under 1 s and no errors; failing that, the highest at all (flagged)."""
    clean = [r for r in runs if r["clean"]]
    pool = clean or runs
    if not pool:
        return None
    best = max(pool, key=lambda r: r["rate"])
    return {
        "rate": best["rate"],
        "clean": best["clean"],
        "connections": best["connections"],
        "offered_rate": best["offered_rate"],
        "p99_ms": best["p99_ms"],
        "errors": best["errors"],
        "cpu_us_per_msg": best.get("cpu", {}).get("system_cpu_us_per_msg"),
    }


def _latency(run: dict[str, Any] | None) -> dict[str, Any] | None:
    if run is None:
        return None
    keys = ("rate", "p50_ms", "p90_ms", "p99_ms", "max_ms", "errors", "error_detail")
    return {k: run[k] for k in keys}


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or theirs is None or theirs == 0:
        return None
    return round(ours / theirs, 2)


def summarise(data: dict[str, Any]) -> dict[str, Any]:
    systems = list(data["systems"])
    trivial: dict[str, Any] = {"max": {}, "max_safe": {}, "fixed": {}, "sweep": {}}
    io: dict[str, Any] = {}
    for name in systems:
        trivial["max"][name] = _best(_runs(data, name, "trivial-max", "plain") + _runs(data, name, "trivial-sweep"))
        trivial["max_safe"][name] = _best(_runs(data, name, "trivial-max", "safe"))
        trivial["fixed"][name] = {r["mode"]: _latency(r) for r in _runs(data, name, "trivial-fixed")}
        trivial["sweep"][name] = [
            {k: r[k] for k in ("offered_rate", "rate", "p50_ms", "p90_ms", "p99_ms", "max_ms", "errors", "saturated")}
            for r in _runs(data, name, "trivial-sweep")
        ]
        io_runs = _runs(data, name, "io-bound")
        io[name] = _latency(io_runs[-1]) if io_runs else None
    memory = {
        moment: {name: {"rss_mb": report["rss_mb"], "pss_mb": report["pss_mb"]} for name, report in figures.items()}
        for moment, figures in data.get("memory", {}).items()
    }
    slow_async = {
        name: {k: v for k, v in result.items() if k != "memory_peak"}
        for name, result in data.get("slow_async", {}).items()
    }
    summary = {
        "trivial": trivial,
        "sustained": data.get("sustained", {}),
        "io_bound": io,
        "slow": data.get("slow", {}),
        "slow_async": slow_async,
        "memory": memory,
    }
    summary["ratios"] = _ratios(summary, systems)
    summary["targets"] = _targets(summary)
    return summary


def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or d.get(key) is None:
            return None
        d = d[key]
    return d


def _ratios(summary: dict[str, Any], systems: list[str]) -> dict[str, Any]:
    """The appliance against each baseline: throughput as appliance ÷ baseline (higher is better),
    latency and memory as baseline ÷ appliance (how many times lower the appliance's is)."""
    out: dict[str, Any] = {}
    t, io, mem = summary["trivial"], summary["io_bound"], summary["memory"]
    for baseline in (b for b in BASELINES if b in systems):
        out[baseline] = {
            "trivial_throughput": _ratio(_get(t, "max", APPLIANCE, "rate"), _get(t, "max", baseline, "rate")),
            "sustained_throughput": _ratio(
                _get(summary, "sustained", APPLIANCE, "rate"), _get(summary, "sustained", baseline, "rate")
            ),
            "trivial_throughput_safe": _ratio(
                _get(t, "max_safe", APPLIANCE, "rate"), _get(t, "max_safe", baseline, "rate")
            ),
            "trivial_cpu_per_msg_lower": _ratio(
                _get(t, "max", baseline, "cpu_us_per_msg"), _get(t, "max", APPLIANCE, "cpu_us_per_msg")
            ),
            "fixed_p99_lower": _ratio(
                _get(t, "fixed", baseline, "plain", "p99_ms"), _get(t, "fixed", APPLIANCE, "plain", "p99_ms")
            ),
            "fixed_p99_lower_safe": _ratio(
                _get(t, "fixed", baseline, "safe", "p99_ms"), _get(t, "fixed", APPLIANCE, "safe", "p99_ms")
            ),
            "io_throughput": _ratio(_get(io, APPLIANCE, "rate"), _get(io, baseline, "rate")),
            "io_p99_lower": _ratio(_get(io, baseline, "p99_ms"), _get(io, APPLIANCE, "p99_ms")),
            "slow_delivered": _ratio(
                _get(summary, "slow", APPLIANCE, "delivered"), _get(summary, "slow", baseline, "delivered")
            ),
            "memory_idle_rss": _ratio(_get(mem, "idle", APPLIANCE, "rss_mb"), _get(mem, "idle", baseline, "rss_mb")),
            "slow_async_passive": _ratio(
                _get(summary, "slow_async", APPLIANCE, "passive"), _get(summary, "slow_async", baseline, "passive")
            ),
        }
    return out


# -- scenario 5's figures against its targets -------------------------------------------


def stall_of(result: dict[str, Any]) -> tuple[str, bool | None]:
    """The worst IOLoop stall of any relay over the run, as text, and whether it is under the target."""
    relays = [r for r in (result.get("relay_stall") or {}).values() if r is not None]
    if not relays:
        return "–", None
    exact = [r["worst_ms"] for r in relays if r["worst_ms"] is not None]
    bounds = [r["worst_bound_ms"] for r in relays if r["worst_ms"] is None]
    over = sum(r["over_limit"] or 0 for r in relays)
    worst_exact = max(exact, default=None)
    if bounds and (None in bounds or worst_exact is None or max(bounds) > worst_exact):
        text = "> 1 s" if None in bounds else f"≤ {max(bounds):g} ms"
    else:
        text = f"{worst_exact:.0f} ms"
    if over:
        text += f" ({over} probes > {STALL_TARGET_MS:g} ms)"
    return text, over == 0 and (worst_exact is None or worst_exact < STALL_TARGET_MS)


def slow_async_checks(result: dict[str, Any]) -> dict[str, bool | None]:
    stall = stall_of(result)[1]
    return {
        "passive": result["passive_pct"] >= PASSIVE_TARGET_PCT,
        "lost": result["lost"] == 0,
        "run_twice": result["run_twice"] == 0,
        "rss": result["rss_peak_mb"] < ASYNC_RSS_TARGET_MB,
        "stall": stall,
    }


def cpu_groups(result: dict[str, Any]) -> dict[str, int]:
    """CPU per message (µs) by kind of process: relays, workers, redis, nginx, tornado, other."""
    groups: dict[str, int] = {}
    for name, us in (result.get("cpu") or {}).get("us_per_msg_by_process", {}).items():
        if "relay" in name:
            kind = "relays"
        elif "redis" in name:
            kind = "redis"
        elif "nginx" in name:
            kind = "nginx"
        elif "tornado" in name:
            kind = "tornado"
        elif "celery" in name or "worker" in name:
            kind = "workers"
        else:
            kind = "other"
        groups[kind] = groups.get(kind, 0) + us
    return groups


def _target(name: str, goal: str, value: str, met: bool | None) -> dict[str, Any]:
    return {"name": name, "goal": goal, "value": value, "met": met}


def _targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    t, io = summary["trivial"], summary["io_bound"]
    targets = []
    ours = _get(t, "max", APPLIANCE)
    poll = _get(t, "max", "baseline-poll", "rate")
    if ours and poll:
        factor = ours["rate"] / poll
        targets.append(_target(
            "trivial bot: throughput", f"≥ {THROUGHPUT_FACTOR:g}× the polling baseline",
            f"{ours['rate']:.0f} msg/s = {factor:.2f}× polling ({poll:.0f})",
            ours["clean"] and factor >= THROUGHPUT_FACTOR,
        ))  # fmt: skip
    for mode in ("plain", "safe"):
        p99 = _get(t, "fixed", APPLIANCE, mode, "p99_ms")
        errors = _get(t, "fixed", APPLIANCE, mode, "errors")
        if p99 is not None:
            targets.append(_target(
                f"trivial bot: p99 at 100 msg/s ({mode})", f"≤ {P99_TARGET_MS:g} ms",
                f"{p99:.1f} ms" + (f", {errors} errors" if errors else ""), p99 <= P99_TARGET_MS and not errors,
            ))  # fmt: skip
    run = io.get(APPLIANCE)
    if run:
        targets.append(_target(
            "I/O-bound bot: throughput", f"≥ {IO_TARGET:g} msg/s, p99 < 1 s",
            f"{run['rate']:.0f} msg/s, p99 {_f(run['p99_ms'])} ms"
            + (f", {run['errors']} errors" if run["errors"] else ""),
            run["rate"] >= IO_TARGET and (run["p99_ms"] or 1e9) < 1000 and not run["errors"],
        ))  # fmt: skip
    slow = _get(summary, "slow", APPLIANCE)
    if slow:
        targets.append(_target(
            "slow bot: delivery", "100% delivered, 0 duplicate executions",
            f"{slow['delivered']}/{slow['messages']} delivered, {slow['executions']} executions, "
            f"{slow['duplicate_executions']} duplicates",
            slow["delivered"] == slow["messages"] and slow["duplicate_executions"] == 0
            and slow["executions"] == slow["messages"],
        ))  # fmt: skip
    result = _get(summary, "slow_async", APPLIANCE)
    if result:
        checks = slow_async_checks(result)
        what = f"slow async bot ({result['await_s']:g} s) at {result['rate']:g} msg/s"
        targets += [
            _target(f"{what}: answered passively", f"≥ {PASSIVE_TARGET_PCT:g}%",
                    f"{result['passive']}/{result['offered']} = {result['passive_pct']:.1f}% "
                    f"({result['late']} late, in flight at peak {result['in_flight_peak']})", checks["passive"]),
            _target(f"{what}: lost", "0", f"{result['lost']} with no reply {result['settle_s']:g} s after the last "
                    "delivery", checks["lost"]),
            _target(f"{what}: handler run twice", "0", f"{result['run_twice']} of {result['offered']} messages",
                    checks["run_twice"]),
            _target(f"{what}: peak RSS, whole appliance", f"< {ASYNC_RSS_TARGET_MB:g} MB",
                    f"{result['rss_peak_mb']:.0f} MB", checks["rss"]),
            _target(f"{what}: relays' IOLoop stall", f"< {STALL_TARGET_MS:g} ms", stall_of(result)[0], checks["stall"]),
        ]  # fmt: skip
    idle = _get(summary, "memory", "idle", APPLIANCE)
    if idle:
        targets.append(_target(
            "memory: whole appliance at idle", f"< {MEMORY_TARGET_MB:g} MB resident",
            f"{idle['rss_mb']:.0f} MB RSS ({idle['pss_mb']:.0f} MB PSS)", idle["rss_mb"] < MEMORY_TARGET_MB,
        ))  # fmt: skip
    return targets


# -- the table -------------------------------------------------------------------


def _f(value: Any, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _lat(fig: dict[str, Any] | None) -> str:
    if not fig:
        return "–"
    parts = "/".join(_f(fig[k], 1 if (fig[k] or 0) < 100 else 0) for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms"))
    return parts + (f" ({fig['errors']} err)" if fig["errors"] else "")


def table(data: dict[str, Any]) -> str:
    s = data["summary"]
    systems = list(data["systems"])
    baselines = [b for b in BASELINES if b in systems]
    meta = data["meta"]
    cfg = meta["appliance"]
    widths = [44] + [22] * len(systems) + [11] * len(baselines)
    t, io, slow, mem = s["trivial"], s["io_bound"], s["slow"], s["memory"]
    sustained, slow_async = s.get("sustained", {}), s.get("slow_async", {})

    def row(label: str, values: list[str], ratio: str | None = None) -> str:
        ratios = [_x(s["ratios"].get(b, {}).get(ratio)) if ratio else "" for b in baselines]
        cells = [label, *values, *ratios]
        padded = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(padded).rstrip()

    def each(render: Any) -> list[str]:
        return [render(name) for name in systems]

    def best(section: str) -> Any:
        def render(name: str) -> str:
            found = _get(t, section, name)
            return "–" if not found else _f(found["rate"]) + ("" if found["clean"] else "!")

        return render

    lines = [
        f"wxrelay bench ({meta['plan']['name']} run, {meta['duration_s']:.0f} s, {meta['cores']} cores, "
        f"{meta['started']}, stack: {meta['stack']})",
        f"appliance: nginx → {cfg['relays']} relays ({cfg.get('standby', 0)} standing by) → Redis → "
        f"{cfg['workers']} Celery workers × "
        f"{cfg['worker_concurrency']} threads"
        + (f", WXRELAY_ASYNC_CONCURRENCY={cfg['async_concurrency']}" if cfg.get("async_concurrency") else "")
        + "; baselines: 1 Tornado process + default prefork worker",
        "ratios: throughput and memory appliance ÷ baseline; latency and CPU baseline ÷ appliance (times lower)",
        *_headline(s, systems),
        "",
        row("", [SHORT.get(n, n) for n in systems]) + "".join(f"  {'vs ' + SHORT[b]:>11}" for b in baselines),
    ]
    # A section of a scenario that did not run (python -m bench --only) is left out.
    closed = any(_get(t, "max", n) for n in systems)
    if closed or sustained:
        lines.append("1. trivial bot (echo)")
    if sustained:
        lines += [
            row("  sustained msg/s, open loop (≥ 99% answered,", each(lambda n: _sustained_cell(sustained.get(n))),
                "sustained_throughput"),
            row("    p99 < 1 s; bisection on the offered rate)", each(lambda n: _bracket_cell(sustained.get(n)))),
        ]  # fmt: skip
    if closed:
        lines += [
            row("  highest msg/s, closed loop, p99 < 1 s, no errors", each(best("max")), "trivial_throughput"),
            row("    CPU per message (µs, its processes)", each(lambda n: _f(_get(t, "max", n, "cpu_us_per_msg"))),
                "trivial_cpu_per_msg_lower"),
        ]  # fmt: skip
    if any(_get(t, "max_safe", n) for n in systems):
        lines.append(row("  highest msg/s, safe mode", each(best("max_safe")), "trivial_throughput_safe"))
    for mode in ("plain", "safe"):
        if any(_get(t, "fixed", n, mode) for n in systems):
            label = f"  {meta['plan']['fixed_rate']:g} msg/s {mode}: p50/p90/p99/max ms"
            ratio = "fixed_p99_lower" + ("_safe" if mode == "safe" else "")
            lines.append(row(label, each(lambda n, mode=mode: _lat(_get(t, "fixed", n, mode))), ratio))
    if any(io.get(n) for n in systems):
        lines += [
            f"2. I/O-bound bot (awaits 200 ms), {meta['plan']['io_connections']} senders",
            row("  sustained msg/s", each(lambda n: _f(_get(io, n, "rate"))), "io_throughput"),
            row("  p50/p90/p99/max ms", each(lambda n: _lat(io.get(n))), "io_p99_lower"),
        ]
    if slow:

        def slow_cell(render: Any) -> Any:
            return lambda n: render(slow[n]) if n in slow else "–"

        messages = next(iter(slow.values()))["messages"]
        lines += [
            f"3. slow bot (8 s), {messages} messages, WeChat cuts at 5 s, 3 deliveries",
            row("  replies delivered", each(slow_cell(lambda r: f"{r['delivered']}/{r['messages']}")),
                "slow_delivered"),
            row("  on delivery 1/2/3", each(slow_cell(lambda r: "/".join(map(str, r["on_delivery"].values()))))),
            row("  handler executions (duplicates)",
                each(slow_cell(lambda r: f"{r['executions']} ({r['duplicate_executions']})"))),
            row("    of which still queued at the end", each(slow_cell(lambda r: str(r["executions_queued"])))),
        ]  # fmt: skip

    def memory(moment: str) -> Any:
        return lambda n: f"{_f(_get(mem, moment, n, 'rss_mb'))} / {_f(_get(mem, moment, n, 'pss_mb'))}"

    lines += [
        "4. memory, all processes (MB RSS / PSS; a baseline counts the Redis it shares)",
        row("  idle", each(memory("idle")), "memory_idle_rss"),
    ]
    if "after_trivial" in mem:
        lines.append(row("  after scenario 1", each(memory("after_trivial"))))
    if slow_async:
        lines += _slow_async_rows(slow_async, systems, row)
    busy = [r["cpu"].get("foreign_cpu_pct", 0) for r in data["runs"] if r.get("cpu")]
    if busy:
        lines.append(
            f"machine: other processes used {max(busy):.0f}% CPU at most during a run "
            f"(median {sorted(busy)[len(busy) // 2]:.0f}%; 200% = both cores)"
        )
    speeds = [r["cpu"]["cpu_speed"] for r in data["runs"] if r.get("cpu", {}).get("cpu_speed")]
    if speeds:
        slow_runs = sum(1 for v in speeds if v < 0.8)
        lines.append(
            f"machine: CPU speed around the runs {min(speeds):.0%}–{max(speeds):.0%} of the start "
            f"({slow_runs} of {len(speeds)} runs below 80%: a host whose other tenants share its cores)"
        )
    if any(_get(t, section, n, "clean") is False for section in ("max", "max_safe") for n in systems):
        lines.append("! no run of that system was clean (p99 < 1 s, no errors): its best rate is shown")
    lines += ["", "targets (appliance):"]
    for target in s["targets"]:
        mark = "✓" if target["met"] else "✗"
        lines.append(f"  {mark} {target['name']}: {target['value']}  (target {target['goal']})")
    return "\n".join(lines)


def _headline(s: dict[str, Any], systems: list[str]) -> list[str]:
    ours = _get(s, "sustained", APPLIANCE, "rate")
    if ours is None:
        return []
    text = f"headline: the appliance sustains {ours:.0f} msg/s open loop (trivial bot, ≥ 99% answered, p99 < 1 s)"
    poll = _get(s, "sustained", "baseline-poll", "rate")
    if poll:
        text += f" = {ours / poll:.2f}× polling ({poll:.0f})"
    get = _get(s, "sustained", "baseline-sync", "rate")
    if get:
        text += f", {ours / get:.2f}× .get() ({get:.0f})"
    closed = _get(s, "trivial", "max", APPLIANCE, "rate")
    if closed is not None:
        text += f"; closed loop {closed:.0f} msg/s"
    return [text]


def _sustained_cell(found: dict[str, Any] | None) -> str:
    if not found:
        return "–"
    if found["bracket"][1] is None:
        return f"≥ {found['rate']:.0f}"
    return _f(float(found["rate"])) + ("" if found["converged"] else "?")


def _bracket_cell(found: dict[str, Any] | None) -> str:
    if not found:
        return ""
    lo, hi = found["bracket"]
    return f"[{lo:.0f}, {'–' if hi is None else f'{hi:.0f}'}], {len(found['points'])} runs"


def _mark(met: bool | None) -> str:
    return "" if met is None else (" ✓" if met else " ✗")


def _deliveries(r: dict[str, Any], _: Any = None) -> str:
    """Deliveries answered (HTTP 200), cut by WeChat's 5 s, and failed otherwise (refused, an error status)."""
    counts = r.get("deliveries")
    if counts is None:
        return "–"
    answered, cut = counts.get("200", 0), counts.get("timeout", 0)
    return f"{answered} / {cut} / {sum(counts.values()) - answered - cut}"


def _slow_async_rows(results: dict[str, Any], systems: list[str], row: Any) -> list[str]:
    first = next(iter(results.values()))
    checks = {name: slow_async_checks(r) for name, r in results.items()}

    def each(render: Any) -> list[str]:
        return [render(results[n], checks[n]) if n in results else "–" for n in systems]

    def reply_times(r: dict[str, Any], _: Any) -> str:
        return "/".join(_f(r[k], 1) for k in ("reply_p50_s", "reply_p99_s", "reply_max_s"))

    def late(r: dict[str, Any], _: Any) -> str:
        return str(r["late"]) if r["late_path"] else "no late path"

    def runs(r: dict[str, Any], c: dict[str, Any]) -> str:
        queued = f" +{r['runs_queued']}q" if r["runs_queued"] else ""
        return f"{r['runs']}{queued} ({r['run_twice']})" + _mark(c["run_twice"])

    groups = {name: cpu_groups(r) for name, r in results.items()}
    kinds = [
        k for k in ("relays", "workers", "tornado", "redis", "nginx", "other") if any(k in g for g in groups.values())
    ]
    lines = [
        f"5. slow async bot (async def, awaits {first['await_s']:g} s), {first['rate']:g} msg/s offered open loop "
        f"for {first['duration_s']:g} s; WeChat cuts at 5 s, 3 deliveries",
        row("  messages offered", each(lambda r, _: str(r["offered"]))),
        row("  in flight at peak: in the bot / at WeChat", each(lambda r, _: f"{r['in_flight_peak']} / "
                                                               f"{r['outstanding_peak']}")),
        row(f"  answered passively (target ≥ {PASSIVE_TARGET_PCT:g}%)",
            each(lambda r, c: f"{r['passive']} = {r['passive_pct']:.1f}%" + _mark(c["passive"])),
            "slow_async_passive"),
        row("    on delivery 1/2/3", each(lambda r, _: "/".join(map(str, r["on_delivery"].values())))),
        row("  deliveries answered / cut at 5 s / failed", each(_deliveries)),
        row("  late, by the customer-service API", each(late)),
        row("  lost (no reply by either path)", each(lambda r, c: str(r["lost"]) + _mark(c["lost"]))),
        row("  handler runs (messages run twice)", each(runs)),
        row("  time to the user's reply p50/p99/max s", each(reply_times)),
        row(f"  peak RSS, all processes (MB, < {ASYNC_RSS_TARGET_MB:g})",
            each(lambda r, c: _f(r["rss_peak_mb"]) + _mark(c["rss"]))),
        row("  CPU per message (µs, its processes)", each(lambda r, _: _f(r["cpu"].get("system_cpu_us_per_msg")))),
        *(row(f"    {kind}", [_f(groups[n].get(kind)) if n in groups else "–" for n in systems]) for kind in kinds),
        row(f"  relays' worst IOLoop stall (< {STALL_TARGET_MS:g} ms)",
            each(lambda r, c: stall_of(r)[0] + _mark(c["stall"]))),
    ]  # fmt: skip
    gen = [r["loadgen"] for r in results.values()]
    lines.append(
        "  load generator (asyncio, a process of its own, not counted above): "
        + ", ".join(f"{SHORT.get(n, n)} {results[n]['loadgen']['cpu_pct']:.0f}%" for n in systems if n in results)
        + " of a core"
        + (f"; {sum(g['late_starts'] for g in gen)} messages sent late" if any(g["late_starts"] for g in gen) else "")
    )
    lines.append(
        "  the baselines run the same async handler (a prefork process blocks on each) and have no late path; "
        "each system alone, the appliance last"
    )
    return lines


# -- the plot --------------------------------------------------------------------


def plot(data: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = data["summary"]["trivial"]["sweep"]
    colors = {"appliance": "#1f77b4", "baseline-sync": "#d62728", "baseline-poll": "#ff7f0e"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5), gridspec_kw={"width_ratios": [3, 2]})
    for name, points in sweep.items():
        if not points:
            continue
        label = data["systems"][name]["label"]
        color = colors.get(name, "gray")
        x = [p["offered_rate"] for p in points]
        for key, style, width in (("p50_ms", ":", 1.2), ("p90_ms", "--", 1.2), ("p99_ms", "-", 2.0)):
            y = [p[key] for p in points]
            left.plot(x, y, style, color=color, linewidth=width, marker="o", markersize=3.5,
                      label=f"{label} {key[:-3]}")  # fmt: skip
        bad = [(p["offered_rate"], p["p99_ms"]) for p in points if p["saturated"] and p["p99_ms"] is not None]
        if bad:
            left.scatter([b[0] for b in bad], [b[1] for b in bad], marker="x", s=70, color=color, zorder=5)
        right.plot(x, [p["rate"] for p in points], "-o", color=color, markersize=3.5, label=label)
    left.set_yscale("log")
    left.axhline(1000, color="gray", linewidth=0.8, linestyle="-.")
    left.text(left.get_xlim()[0], 1000, " 1 s", va="bottom", color="gray", fontsize=8)
    left.set_xlabel("offered load (messages/s)")
    left.set_ylabel("latency (ms, log scale)")
    left.set_title("Trivial bot: latency percentiles against offered load\n(× = could not keep up, or p99 ≥ 1 s)")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=7, ncol=3, loc="upper left")
    top = max((p["offered_rate"] for points in sweep.values() for p in points), default=100)
    right.plot([0, top], [0, top], color="gray", linewidth=0.8, linestyle="--", label="offered = answered")
    right.set_xlabel("offered load (messages/s)")
    right.set_ylabel("answered (messages/s)")
    right.set_title("Throughput against offered load")
    right.grid(True, alpha=0.3)
    right.legend(fontsize=8, loc="upper left")
    meta = data["meta"]
    fig.suptitle(f"wxrelay bench, {meta['plan']['name']} run, {meta['started']}, {meta['cores']} cores", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

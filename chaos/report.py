"""The rehearsal's table: one row per fault, then what each scenario noticed and every broken promise."""

from __future__ import annotations

from chaos.rehearsal import Result

HEADERS = ("fault", "sent", "exactly once", "lost", "twice", "handler runs", "recovery", "")


def _runs(result: Result) -> str:
    total = sum(t.runs for t in result.tallies)
    again = sum(t.runs > 1 for t in result.tallies)
    return f"{total}" + (f" ({again} ran twice)" if again else "")


def _recovery(result: Result) -> str:
    if result.recovery is None:
        return "-"
    if result.recovery == float("inf"):
        return "never"
    limit = f" (< {result.recovery_limit:.0f} s)" if result.recovery_limit is not None else ""
    return f"{result.recovery:.1f} s{limit}"


def row(result: Result) -> tuple[str, ...]:
    return (
        result.name,
        str(len(result.tallies)),
        str(sum(t.exactly_once for t in result.tallies)),
        str(result.lost),
        str(result.twice),
        _runs(result),
        _recovery(result),
        "ok" if result.ok else "FAILED",
    )


def table(results: list[Result]) -> str:
    rows = [HEADERS, *(row(result) for result in results)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADERS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def details(results: list[Result]) -> str:
    lines = []
    for result in results:
        for note in result.notes:
            lines.append(f"{result.name}: {note}")
        for failure in result.failures:
            lines.append(f"{result.name}: FAILED: {failure}")
    return "\n".join(lines)


def render(results: list[Result], window: float, budget: float) -> str:
    head = f"wxrelay fault rehearsal: WeChat's window {window:g} s, reply budget {budget:g} s"
    body = details(results)
    return f"{head}\n\n{table(results)}\n" + (f"\n{body}\n" if body else "")

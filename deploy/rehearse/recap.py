"""What an ansible-playbook run's output says it changed: the PLAY RECAP, and the changed tasks."""

from __future__ import annotations

import re


def recap_counts(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP lines: host -> {ok, changed, unreachable, failed, ...}."""
    recap: dict[str, dict[str, int]] = {}
    for match in re.finditer(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", output.split("PLAY RECAP")[-1], re.MULTILINE):
        recap[match.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(2))}
    return recap


def changed_tasks(output: str) -> list[str]:
    task, found = "", []
    for line in output.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line.rstrip("* ")
        elif line.startswith("changed:"):
            found.append(f"  {task}: {line}")
    return found


def changed_by_host(output: str) -> dict[str, list[str]]:
    """Host -> the names of its changed tasks and handlers ("TASK [role : name]"), in order, once each."""
    task, found = "", {}
    for line in output.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line.rstrip("* ").strip()
        else:
            match = re.match(r"^changed: \[([^\]]+)\]", line)
            if match and task not in found.setdefault(match.group(1), []):
                found[match.group(1)].append(task)
    return found

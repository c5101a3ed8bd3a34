"""deploy/monitoring: the scrape config, the alert rules and the Grafana dashboard.

promtool (Debian's prometheus package, installed by .ci/run) checks the rules and the scrape config the
monitoring role renders, and runs the rules' unit tests (deploy/monitoring/tests); a real Prometheus scrapes a
real relay with that config and evaluates the rules. Every metric the rules and the dashboard query is one the
relays (relay/metrics.py) or the workers export, so renaming a metric fails here.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml
from prometheus_client.metrics import MetricWrapperBase

from appserver import metrics as worker_metrics
from appserver.queue_metrics import QueueCollector
from relay import metrics as relay_metrics
from simulator import WeChatSimulator
from tests.conftest import AES_KEY, APPID, TOKEN, WECHAT_TIMEOUT
from tests.services import Process, RelayProcess, free_port, require, wait_until
from tests.test_deploy import TESTS_DEPLOY, render

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "deploy/monitoring"
RULES = MONITORING / "wxrelay-rules.yml"
RULE_TESTS = sorted((MONITORING / "tests").glob("*.yml"))
DASHBOARD = MONITORING / "grafana/wxrelay.json"


def worker_metric_types() -> dict[str, str]:
    """Every metric a worker exports (appserver/metrics.py, and the queue's from appserver/queue_metrics.py)."""
    found = {
        family.name: family.type
        for metric in vars(worker_metrics).values()
        if isinstance(metric, MetricWrapperBase)
        for family in metric.describe()
    }
    found.update({family.name: family.type for family in QueueCollector("redis://127.0.0.1:1/0", {}).describe()})
    return found


# Prometheus's own `up`, and what Debian 12's Redis exporter (1.45) exports that the rules and dashboard use.
OTHER_METRICS = {"up", "redis_up", "redis_memory_used_bytes", "redis_memory_max_bytes"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [require("promtool", "prometheus"), *args], capture_output=True, text=True, timeout=120, cwd=MONITORING
    )


def output(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n{result.stdout[-8000:]}\n{result.stderr[-8000:]}"


def relay_metric_types() -> dict[str, str]:
    """Every metric relay/metrics.py defines: its name and type, as prometheus_client describes them."""
    return {
        family.name: family.type
        for metric in vars(relay_metrics).values()
        if isinstance(metric, MetricWrapperBase)
        for family in metric.describe()
    }


def known_series() -> set[str]:
    """The series names a query may select: each metric's samples (a counter's _total, a histogram's _bucket ...)."""
    types = {**relay_metric_types(), **worker_metric_types()}
    return {name + suffix for name, kind in types.items() for suffix in SUFFIXES[kind]} | OTHER_METRICS


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects.

    Hand-written: no Python library parses PromQL, and promtool does not list an expression's metrics. Without
    its strings, label matchers, ranges and grouping clauses, what is left of an expression that is an identifier,
    not a function (followed by a parenthesis) nor a keyword, is a metric name."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", expr):
        if expr[match.end() :].lstrip().startswith("(") or match.group() in PROMQL_WORDS:
            continue
        names.add(match.group())
    return names


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


# --- promtool ------------------------------------------------------------------------


def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, output(result)
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = promtool("test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, output(result)
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS) >= 5


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test["alert_rule_test"]:
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    alerts = {rule["alert"] for rule in rules()}
    assert len(alerts) >= 10
    assert alerts - firing == set(), "alerts no test sees firing"
    assert alerts - quiet == set(), "alerts no test sees staying quiet"
    # Each tells the operator what is wrong and what to do.
    for rule in rules():
        assert rule["annotations"]["summary"] and len(rule["annotations"]["description"]) > 100, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]


# --- the scrape config, as the monitoring role renders it ------------------------------


def scrape_jobs(config: dict) -> dict[str, list[tuple[str, dict]]]:
    """Job name -> [(target, labels)]."""
    return {
        job["job_name"]: [
            (target, static.get("labels", {})) for static in job["static_configs"] for target in static["targets"]
        ]
        for job in config["scrape_configs"]
    }


def test_rendered_scrape_config_passes_promtool_and_names_every_process(tmp_path: Path) -> None:
    """The test inventory's host (3 relays, 2 workers, Redis): every process, by its supervisor name."""
    host = render(TESTS_DEPLOY / "inventory", tmp_path, "-e", f"monitoring_rules_file={RULES}") / "rehearsal"
    result = promtool("check", "config", str(host / "prometheus.yml"))
    assert result.returncode == 0, output(result)
    config = yaml.safe_load((host / "prometheus.yml").read_text())
    assert config["rule_files"] == [str(RULES)] and "alerting" not in config
    assert config["global"]["external_labels"] == {"host": "rehearsal"}
    jobs = scrape_jobs(config)
    assert jobs["wxrelay-relays"] == [
        (f"127.0.0.1:{port}", {"process": f"relay-{port}"}) for port in (8001, 8002, 8003)
    ]
    assert jobs["wxrelay-workers"] == [
        ("127.0.0.1:8101", {"process": "worker-0"}),
        ("127.0.0.1:8102", {"process": "worker-1"}),
    ]
    assert jobs["node"] == [("127.0.0.1:9100", {"wxrelay_workers": "2"})]
    assert jobs["redis"] == [("127.0.0.1:9121", {})]
    # The exporter signs in as the appliance's Redis user; its password is the vault's.
    env = (host / "redis-exporter.env").read_text()
    assert "REDIS_ADDR=redis://127.0.0.1:6379\nREDIS_USER=wxrelay\nREDIS_PASSWORD=" in env
    assert 'ARGS="-web.listen-address=127.0.0.1:9121"' in env


def test_each_host_of_a_spread_out_appliance_scrapes_what_it_runs(tmp_path: Path) -> None:
    rendered = render(TESTS_DEPLOY / "multihost", tmp_path, "-e", '{"monitoring_alertmanagers": ["10.0.0.5:9093"]}')
    front = yaml.safe_load((rendered / "front1/prometheus.yml").read_text())
    worker = yaml.safe_load((rendered / "work1/prometheus.yml").read_text())
    # The front host: relays and Redis, and no worker expected (WxrelayNoWorkers stays quiet there).
    assert set(scrape_jobs(front)) == {"wxrelay-relays", "node", "redis"}
    assert scrape_jobs(front)["node"] == [("127.0.0.1:9100", {"wxrelay_workers": "0"})]
    # A workers host: its two workers.
    assert set(scrape_jobs(worker)) == {"wxrelay-workers", "node"}
    assert scrape_jobs(worker)["node"] == [("127.0.0.1:9100", {"wxrelay_workers": "2"})]
    for config in (front, worker):
        assert config["alerting"]["alertmanagers"] == [{"static_configs": [{"targets": ["10.0.0.5:9093"]}]}]


# --- the metric names -------------------------------------------------------------------


def test_metric_name_scanner() -> None:
    expr = (
        'absent(up{job="wxrelay-workers"} == 1) * on () group_left (wxrelay_workers) count by (wxrelay_workers) '
        '(up{job="node", wxrelay_workers!="0"}) and histogram_quantile(0.99, sum by (le) '
        '(rate(wxrelay_loop_lag_seconds_bucket{account=~"$account"}[$__rate_interval] offset 5m))) > bool 1e3'
    )
    assert metric_names(expr) == {"up", "wxrelay_loop_lag_seconds_bucket"}


def test_rules_and_dashboard_query_only_metrics_the_appliance_exports() -> None:
    known = known_series()
    # The relays' names come from their code: a renamed metric leaves the old one unknown here.
    assert {"wxrelay_messages_total", "wxrelay_reply_seconds_bucket", "wxrelay_loop_lag_seconds_bucket"} <= known
    for rule in rules():
        unknown = metric_names(rule["expr"]) - known
        assert not unknown, f"{rule['alert']} queries {unknown}, which nothing exports"
    used = set()
    for expr in dashboard_queries():
        unknown = metric_names(expr) - known
        assert not unknown, f"the dashboard's {expr!r} queries {unknown}, which nothing exports"
        used |= metric_names(expr)
    # What the dashboard is for.
    assert {
        "wxrelay_messages_total",
        "wxrelay_reply_seconds_bucket",
        "wxrelay_rejected_total",
        "wxrelay_handler_outcomes_total",
        "wxrelay_handler_seconds_bucket",
        "wxrelay_late_sends_total",
        "wxrelay_queue_depth",
        "wxrelay_queue_oldest_seconds",
        "wxrelay_handlers_in_flight",
        "wxrelay_loop_lag_seconds_bucket",
        "redis_memory_used_bytes",
        "redis_memory_max_bytes",
    } <= used


# --- the dashboard -------------------------------------------------------------------------------


def test_dashboard_is_grafana_json_with_queries_prometheus_parses(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "wxrelay" and dashboard["title"] == "wxrelay"
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    graphs = [panel for panel in panels if panel["type"] != "row"]
    assert len(graphs) >= 12
    for panel in graphs:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and panel["description"], panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
    # Each query as a recording rule, Grafana's variables filled in: promtool parses it as Prometheus would.
    queries = [expr.replace("$__rate_interval", "1m").replace("$account", ".*") for expr in dashboard_queries()]
    recorded = {
        "groups": [{"name": "dashboard", "rules": [{"record": f"q{n}", "expr": q} for n, q in enumerate(queries)]}]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(recorded))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, output(result)


# --- a real Prometheus ------------------------------------------------------------------------------


def prometheus_api(port: int, path: str) -> dict:
    return httpx.get(f"http://127.0.0.1:{port}/api/v1/{path}", timeout=5).json()["data"]


def test_prometheus_scrapes_a_real_relay_and_evaluates_the_rules(
    tmp_path: Path, start_relay: Callable[..., RelayProcess]
) -> None:
    """The config the role renders, for one relay on a free port, in a real Prometheus: the relay is up and its
    messages counted, every rule evaluates without error, and stopping the relay makes WxrelayRelayDown pending."""
    relay = start_relay()
    prometheus = require("prometheus", "prometheus")
    settings = {
        "wxrelay_relay_port": relay.port,
        "wxrelay_relays": 1,
        "monitoring_workers": 0,
        "monitoring_redis": False,
        "monitoring_rules_file": str(RULES),
        "monitoring_scrape_interval": "1s",
        "monitoring_evaluation_interval": "1s",
    }
    config = render(TESTS_DEPLOY / "inventory", tmp_path / "render", "-e", json.dumps(settings)) / "rehearsal"
    port = free_port()
    server = Process(
        f"prometheus-{port}",
        [
            prometheus,
            f"--config.file={config / 'prometheus.yml'}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
        ],
        tmp_path,
    )
    try:
        server.wait_ready(lambda: httpx.get(f"http://127.0.0.1:{port}/-/ready", timeout=2).status_code == 200)
        simulator = WeChatSimulator(relay.callback, TOKEN, APPID, AES_KEY, mode="plain", deadline=WECHAT_TIMEOUT)
        assert simulator.say("monitored").answered

        def relay_target() -> dict | None:
            targets = prometheus_api(port, "targets")["activeTargets"]
            found = [t for t in targets if t["labels"]["job"] == "wxrelay-relays"]
            return found[0] if found and found[0]["health"] == "up" else None

        target = wait_until(relay_target, 30, "Prometheus to scrape the relay")
        assert target["labels"]["process"] == f"relay-{relay.port}"  # type: ignore[index]

        def counted() -> float:
            result = prometheus_api(port, "query?query=sum(wxrelay_messages_total)")["result"]
            return float(result[0]["value"][1]) if result else 0.0

        wait_until(lambda: counted() >= 1, 30, "the relay's messages in Prometheus")

        def evaluated() -> list[dict] | None:
            groups = prometheus_api(port, "rules")["groups"]
            found = [rule for group in groups for rule in group["rules"]]
            return found if found and all(rule.get("lastEvaluation", "").startswith("2") for rule in found) else None

        evaluated_rules = wait_until(evaluated, 30, "every rule to be evaluated")
        assert len(evaluated_rules) == len(rules())  # type: ignore[arg-type]
        assert [r["name"] for r in evaluated_rules if r["health"] != "ok"] == []  # type: ignore[union-attr]

        relay.stop()

        def relay_down() -> list[dict]:
            alerts = prometheus_api(port, "alerts")["alerts"]
            return [a for a in alerts if a["labels"]["alertname"] == "WxrelayRelayDown"]

        (alert,) = wait_until(relay_down, 30, "WxrelayRelayDown")  # type: ignore[misc]
        assert alert["state"] == "pending" and alert["labels"]["process"] == f"relay-{relay.port}"
        assert f"sudo supervisorctl restart wxrelay-relay:relay-{relay.port}" in alert["annotations"]["description"]
    finally:
        server.stop()

"""The ops side of the compose stack: Prometheus's scrape config and alert rules and Grafana's provisioning and
dashboard are well-formed, mounted where the containers read them, and ask only for metrics and labels the code
really exports (read from the code's own registry, not a list kept by hand)."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
# PromQL words that are not metric names.
_PROMQL_WORDS = {
    "sum", "by", "rate", "increase", "deriv", "max", "min", "avg", "and", "or", "unless", "without", "on",
    "histogram_quantile", "humanize", "humanizePercentage", "le", "up", "count", "topk", "bool",
}  # fmt: skip
_METRIC = re.compile(r"\b(leadscore_[a-z0-9_]+)")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_MATCHERS = re.compile(r"\{([^}]*)\}")


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    return loaded


def exported() -> dict[str, set[str]]:
    """Every sample name the code exports (a histogram's buckets, a counter's _total, an info's _info) -> its
    labels, read from the metric definitions in app/metrics.py."""
    kinds = {
        "Counter": [""],  # declared with its _total
        "Gauge": [""],
        "Histogram": ["_bucket", "_count", "_sum"],
        "BatchHistogram": ["_bucket", "_count", "_sum"],
        "Info": ["_info"],
    }
    samples: dict[str, set[str]] = {}
    tree = ast.parse((REPO_ROOT / "app" / "metrics.py").read_text())
    for call in ast.walk(tree):
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id in kinds):
            continue
        if not (call.args and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str)):
            continue
        name = call.args[0].value
        labels = {
            element.value
            for argument in (*call.args, *(keyword.value for keyword in call.keywords))
            if isinstance(argument, ast.List)
            for element in argument.elts
            if isinstance(element, ast.Constant)
        }
        for suffix in kinds[call.func.id]:
            samples[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    samples["leadscore_model_info"] |= {"version", "config_hash"}  # MODEL_INFO.info({...}) sets these
    return samples


def expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of every alert rule and dashboard query."""
    found: list[tuple[str, str]] = []
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            found.append((f"alert {rule['alert']}", str(rule["expr"])))
    dashboard = json.loads((GRAFANA / "dashboards" / "leadscore.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            found.append((f"panel {panel['title']!r}", target["expr"]))
    return found


def test_every_query_asks_for_metrics_and_labels_the_code_exports() -> None:
    samples = exported()
    assert "leadscore_events_consumed_total" in samples and "type" in samples["leadscore_events_consumed_total"]
    for where, expr in expressions():
        names = set(_METRIC.findall(expr))
        assert names or "up{" in expr, f"{where}: no leadscore metric in {expr!r}"
        unknown = names - set(samples)
        assert not unknown, f"{where}: {sorted(unknown)} are not exported (exported: {sorted(samples)})"
        labels_available = set().union(*(samples[name] for name in names)) | {"le", "job", "instance"}
        grouped = {label.strip() for group in _GROUPING.findall(expr) for label in group.split(",") if label.strip()}
        matched = {m.split("=")[0].strip().rstrip("!~") for group in _MATCHERS.findall(expr) for m in group.split(",")}
        missing = (grouped | {m for m in matched if m}) - labels_available
        assert not missing, f"{where}: labels {sorted(missing)} are not on {sorted(names)}"


def test_alerts_cover_what_ops_asked_for() -> None:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"][0]["rules"]
    exprs = " ".join(str(rule["expr"]) for rule in rules)
    for metric in (
        "leadscore_consumer_lag",
        "leadscore_consumer_stalled",
        "leadscore_invalid_events_total",
        "leadscore_http_request_seconds_count",
        "leadscore_redis_errors_total",
        "leadscore_model_load_failures_total",
        "leadscore_webhook_deliveries_total",
    ):
        assert metric in exprs, metric
    assert all(rule["annotations"]["summary"] and rule["labels"]["severity"] for rule in rules)


def test_prometheus_scrapes_the_api_and_every_consumer_replica() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["api"]["static_configs"][0]["targets"] == ["api:8000"]
    (discovery,) = jobs["consumer"]["dns_sd_configs"]  # by DNS: `--scale consumer=N` replicas all answer
    consumer = compose()["services"]["consumer"]
    assert discovery["names"] == ["consumer"] and str(discovery["port"]) in consumer["expose"]
    (discovery,) = jobs["webhooks"]["dns_sd_configs"]
    assert discovery["names"] == ["webhooks"] and str(discovery["port"]) in compose()["services"]["webhooks"]["expose"]
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]


def test_the_containers_read_the_files_where_they_are_mounted() -> None:
    services = compose()["services"]
    mounts = {
        name: {volume.split(":")[0]: volume.split(":")[1] for volume in services[name]["volumes"] if ":" in volume}
        for name in ("prometheus", "grafana")
    }
    assert mounts["prometheus"]["./deploy/prometheus"] == "/etc/prometheus"
    assert mounts["grafana"]["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert mounts["grafana"]["./deploy/grafana/dashboards"] == "/var/lib/grafana/dashboards"
    for host_path in (*mounts["prometheus"], *mounts["grafana"]):
        if host_path.startswith("./"):
            assert (REPO_ROOT / host_path).is_dir(), host_path
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "leadscore.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboard = json.loads((GRAFANA / "dashboards" / "leadscore.json").read_text())
    uid = datasource["datasources"][0]["uid"]
    assert all(panel["datasource"]["uid"] == uid for panel in dashboard["panels"])
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Prometheus's checker) is not installed")
def test_promtool_accepts_the_config_and_rules(tmp_path: Path) -> None:
    checked = subprocess.run(
        ["promtool", "check", "rules", str(PROMETHEUS / "alerts.yml")], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

"""The alert rules (promtool's own checks and unit tests), and the compose Prometheus and
Grafana provisioning files agreeing with docker-compose.yml.

That the rules fire against a running stack is tests/test_observability_prometheus.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from observability import DOC, ROOT, RULE_TESTS, RULES, catalogue, metric_names, series_family
from tools import require_tool

COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS_YML = ROOT / "deploy" / "compose" / "prometheus.yml"
PROVISIONING = ROOT / "deploy" / "compose" / "grafana" / "provisioning"


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("promtool"), *args], capture_output=True, text=True, check=False, cwd=cwd
    )


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def test_rules_pass_promtool_check() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(alert_rules())} rules found" in done.stdout


def test_rules_unit_tests() -> None:
    done = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_is_unit_tested_firing_labelled_and_documented() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    doc = DOC.read_text()
    for rule in alert_rules():
        name = rule["alert"]
        assert name in fired, f"{name} has no promtool test in which it fires"
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert {"summary", "description"} <= rule["annotations"].keys(), name
        assert f"### {name}" in doc, f"{name} has no section in docs/observability.md"


def test_rules_read_only_exported_metrics() -> None:
    """llmsvc's own series, or kube-state-metrics' (the Kubernetes-only alerts)."""
    exported = {m.name for m in catalogue()}
    for rule in alert_rules():
        names = {series_family(n) for n in metric_names(rule["expr"])}
        foreign = {n for n in names - exported if not n.startswith("kube_")}
        assert names and not foreign, f"{rule['alert']} reads {foreign}"


def compose_services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    return services


def test_compose_prometheus_scrapes_every_service_with_backend_labels(tmp_path: Path) -> None:
    # promtool checks that the router's token file exists: compose's tokens service makes it
    # in the prometheus-token volume; here a file of the test's stands in for it.
    (tmp_path / "router-admin-token").write_text("token\n")
    (tmp_path / "batch-token").write_text("token\n")
    text = PROMETHEUS_YML.read_text().replace("/run/llmsvc/prometheus", tmp_path.as_posix())
    (tmp_path / "prometheus.yml").write_text(text)
    done = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    targets = {
        (job["job_name"], target, static.get("labels", {}).get("backend"))
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    services = compose_services()
    assert ("llmsvc-router", "router:8080", None) in targets
    assert ("llmsvc-registry", "registry:8081", None) in targets
    sitters = [s for s, spec in services.items() if "babysitter" in str(spec.get("entrypoint"))]
    default = [s for s in sitters if not services[s].get("profiles")]
    # The default babysitters are one scalable service, found by DNS; each replica's
    # `backend` label (its registry name) is checked in test_containers_compose.
    assert default == ["babysitter"]
    found = {
        (job["job_name"], name, sd["port"])
        for job in config["scrape_configs"]
        for sd in job.get("dns_sd_configs", [])
        for name in sd["names"]
    }
    assert ("llmsvc-engine", "babysitter", 8000) in found
    assert ("llmsvc-babysitter", "babysitter", 8001) in found
    mounts = services["prometheus"]["volumes"]
    assert "./deploy/compose/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts
    rules_mount = next(
        m for m in mounts if m.startswith("./charts/llmsvc/files/alerts.rules.yaml:")
    )
    assert Path(rules_mount.split(":")[1]).match(config["rule_files"][0])


def test_compose_grafana_provisions_the_datasource_and_the_dashboards() -> None:
    mounts = compose_services()["grafana"]["volumes"]
    assert "./deploy/compose/grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
    dashboards_mount = next(m for m in mounts if m.startswith("./charts/llmsvc/dashboards:"))
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "llmsvc.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == dashboards_mount.split(":")[1]
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yaml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"]
    assert source["url"] == "http://prometheus:9090"

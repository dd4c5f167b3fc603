"""llmsvc.kube's credentials: kubectl's order, token files read again when they rotate.

Kubeconfigs and fake service-account directories are written in ``tmp_path``; the
environment is passed explicitly, so nothing here reads this machine's own. The
rotation tests send real requests to a small aiohttp server that records each
request's ``Authorization`` header.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from kubeapi import write_kubeconfig
from llmsvc.kube import (
    Credentials,
    CredentialsError,
    Gone,
    KubeClient,
    KubeError,
    KubeStatusError,
    LabelSelector,
    TokenFile,
    load_credentials,
)
from llmsvc.kube.credentials import NO_CREDENTIALS
from llmsvc.operator.handlers import connection_info
from procs import HOST, free_port


def service_account(root: Path, token: str = "sa-token", namespace: str = "pods-ns") -> Path:
    """A directory shaped like /var/run/secrets/kubernetes.io/serviceaccount."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "token").write_text(token)
    (root / "namespace").write_text(namespace)
    (root / "ca.crt").write_text("not read until a TLS connection is made")
    return root


IN_CLUSTER = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}


def everything(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment where all three sources exist, each naming another server."""
    home = tmp_path / "home"
    (home / ".kube").mkdir(parents=True)
    write_kubeconfig(home / ".kube" / "config", "http://home.example:1", namespace="home-ns")
    env_config = write_kubeconfig(tmp_path / "env-config", "http://env.example:2", "env-ns")
    env = {"HOME": str(home), "KUBECONFIG": str(env_config), **IN_CLUSTER}
    return env, service_account(tmp_path / "sa")


def test_kubeconfig_env_comes_first(tmp_path: Path) -> None:
    env, account = everything(tmp_path)
    found = load_credentials(environ=env, service_account=account)
    assert (found.server, found.namespace, found.source) == (
        "http://env.example:2",
        "env-ns",
        "$KUBECONFIG",
    )
    assert found.authorization() == "Bearer test-token"


def test_then_the_home_kubeconfig(tmp_path: Path) -> None:
    env, account = everything(tmp_path)
    del env["KUBECONFIG"]
    found = load_credentials(environ=env, service_account=account)
    assert (found.server, found.namespace, found.source) == (
        "http://home.example:1",
        "home-ns",
        "~/.kube/config",
    )


def test_then_the_pods_service_account(tmp_path: Path) -> None:
    env, account = everything(tmp_path)
    del env["KUBECONFIG"]
    env["HOME"] = str(tmp_path / "nobody")
    found = load_credentials(environ=env, service_account=account)
    assert (found.server, found.namespace, found.source) == (
        "https://10.0.0.1:443",
        "pods-ns",
        "in-cluster",
    )
    assert found.ca_file == str(account / "ca.crt")
    assert found.authorization() == "Bearer sa-token"
    v6 = {**env, "KUBERNETES_SERVICE_HOST": "fd00::1"}
    assert load_credentials(environ=v6, service_account=account).server == "https://[fd00::1]:443"


def test_nothing_at_all_is_one_line(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), **IN_CLUSTER}  # a service host, but no token mounted
    with pytest.raises(CredentialsError) as info:
        load_credentials(environ=env, service_account=tmp_path / "no-sa")
    assert str(info.value) == NO_CREDENTIALS


def test_a_broken_kubeconfig_env_is_an_error_not_a_fall_through(tmp_path: Path) -> None:
    env, account = everything(tmp_path)
    env["KUBECONFIG"] = str(tmp_path / "absent")
    with pytest.raises(CredentialsError, match="cannot load Kubernetes credentials"):
        load_credentials(environ=env, service_account=account)
    broken = tmp_path / "broken"
    broken.write_text("apiVersion: v1\nkind: Config\ncurrent-context: nowhere\n")
    env["KUBECONFIG"] = str(broken)
    with pytest.raises(CredentialsError, match="cannot load Kubernetes credentials") as info:
        load_credentials(environ=env, service_account=account)
    assert "\n" not in str(info.value)


def test_the_service_account_token_is_read_again_when_kubelet_swaps_it(tmp_path: Path) -> None:
    # kubelet's atomic update: the files are symlinks into ..data, which is swapped.
    account = tmp_path / "sa"
    account.mkdir()
    for generation, token in enumerate(("first-token", "other-token")):
        data = account / f"..{generation}"
        service_account(data, token=token)
        link = account / "..data.tmp"
        link.symlink_to(data.name)
        link.replace(account / "..data")
        for name in ("token", "namespace", "ca.crt"):
            if not (account / name).is_symlink():
                (account / name).symlink_to(f"..data/{name}")
        if generation == 0:
            env = {"HOME": str(tmp_path), **IN_CLUSTER}
            found = load_credentials(environ=env, service_account=account)
        assert found.authorization() == f"Bearer {token}"


class Recorder:
    """An API server stand-in: answers every GET with an empty list, keeps the headers."""

    def __init__(self) -> None:
        self.authorizations: list[str | None] = []
        app = web.Application()
        app.router.add_get("/api/v1/pods", self.pods)
        self.server = TestServer(app, host=HOST)

    async def pods(self, request: web.Request) -> web.Response:
        self.authorizations.append(request.headers.get("Authorization"))
        return web.json_response({"metadata": {"resourceVersion": "7"}, "items": []})


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    found = Recorder()
    await found.server.start_server()
    yield found
    await found.server.close()


def kubeconfig_with_token_file(path: Path, server: str, token_file: str) -> Path:
    write_kubeconfig(path, server)
    config: dict[str, Any] = yaml.safe_load(path.read_text())
    config["users"][0]["user"] = {"tokenFile": token_file}
    path.write_text(yaml.safe_dump(config))
    return path


async def test_a_rotated_token_file_is_sent_with_the_next_request(
    tmp_path: Path, recorder: Recorder
) -> None:
    token = tmp_path / "secrets" / "token"
    token.parent.mkdir()
    token.write_text("token-one\n")
    server = str(recorder.server.make_url("")).rstrip("/")
    # A relative tokenFile is relative to the kubeconfig, as kubectl reads it.
    config = kubeconfig_with_token_file(tmp_path / "kubeconfig", server, "secrets/token")
    credentials = load_credentials(environ={"KUBECONFIG": str(config)})
    assert isinstance(credentials.authorization, TokenFile)
    client = KubeClient(credentials, request_timeout=5)
    try:
        assert (await client.list("/api/v1/pods")).resource_version == "7"
        token.write_text("token-two\n")  # the same size, at once: the same mtime tick, maybe
        await client.list("/api/v1/pods")
        token.unlink()  # gone for a moment mid-rotation: the last token read is kept
        await client.list("/api/v1/pods")
    finally:
        await client.close()
    assert recorder.authorizations == ["Bearer token-one", "Bearer token-two", "Bearer token-two"]


def test_kopf_logs_in_with_the_same_credentials(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first")
    credentials = Credentials(
        server="https://api.example:6443",
        namespace="ns",
        ca_file="/ca.crt",
        authorization=TokenFile(token),
    )
    info = connection_info(credentials)
    assert (info.server, info.ca_path, info.insecure, info.default_namespace) == (
        "https://api.example:6443",
        "/ca.crt",
        False,
        "ns",
    )
    assert info.as_http_headers() == {"Authorization": "Bearer first"}
    token.write_text("second")  # kopf logs in again after a 401: it gets the new token
    assert connection_info(credentials).as_http_headers() == {"Authorization": "Bearer second"}


class Answers:
    """An API server stand-in that answers each path with a fixed status."""

    def __init__(self) -> None:
        app = web.Application()
        for status in (404, 409, 410, 500):
            app.router.add_route("*", f"/s/{status}", self.status)
        app.router.add_get("/not-json", self.not_json)
        self.server = TestServer(app, host=HOST)

    async def status(self, request: web.Request) -> web.Response:
        status = int(request.path.rsplit("/", 1)[1])
        body = {"kind": "Status", "reason": "Why", "message": f"said {status}", "code": status}
        return web.json_response(body, status=status)

    async def not_json(self, request: web.Request) -> web.Response:
        return web.Response(text="<html>")


async def test_answers_map_onto_the_exception_tree() -> None:
    answers = Answers()
    await answers.server.start_server()
    client = KubeClient(Credentials(server=str(answers.server.make_url("")).rstrip("/")))
    try:
        assert await client.get("/s/404") is None
        assert await client.delete("/s/404") is None
        with pytest.raises(KubeStatusError) as conflict:
            await client.patch("/s/409", {"a": 1})
        assert conflict.value.status == 409 and conflict.value.retryable
        assert str(conflict.value) == "PATCH /s/409: HTTP 409 Why: said 409"
        with pytest.raises(Gone):
            await client.list("/s/410")
        with pytest.raises(KubeStatusError, match="HTTP 500"):
            await client.create("/s/500", {})
        with pytest.raises(KubeError, match="not JSON"):
            await client.get("/not-json")
    finally:
        await client.close()
        await answers.server.close()
    unreachable = KubeClient(Credentials(server=f"http://{HOST}:{free_port()}"), request_timeout=5)
    with pytest.raises(KubeError) as info:
        await unreachable.get("/api")
    assert not isinstance(info.value, KubeStatusError)
    await unreachable.close()


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ("llmsvc.io/inference-service", {"llmsvc.io/inference-service": "m"}, True),
        ("llmsvc.io/inference-service", {"x": "y"}, False),
        ("a=1,b", {"a": "1", "b": ""}, True),
        ("a==1", {"a": "2"}, False),
        ("a!=1", {}, True),
        ("a!=1", {"a": "1"}, False),
        ("!a", {"b": "1"}, True),
        ("!a", {"a": "1"}, False),
        ("", {}, True),
    ],
)
def test_label_selectors_match_as_the_api_server_does(
    selector: str, labels: dict[str, str], matches: bool
) -> None:
    assert LabelSelector(selector).matches(labels) is matches


def test_set_based_selectors_are_refused() -> None:
    with pytest.raises(ValueError, match="set-based"):
        LabelSelector("a in (x,y)")

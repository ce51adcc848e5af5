"""Docker engine: argument building and the controls, through the Docker SDK with a fake client.

No Docker engine runs on this machine, so the SDK talks to a fake client object that
records what it is asked (the real docker.errors exceptions and docker.types are used).
"""

from __future__ import annotations

import typing

import docker
import pytest

from gpumod.engines.docker import DockerEngine, parse_config
from gpumod.errors import EngineError, UsageError
from gpumod.spec import ServiceSpec
from gpumod.supervise.base import LaunchPlan
from gpumod.supervise.docker import DockerSupervisor

GOOD = {"image": "ollama/ollama:0.6.8", "port": 11434, "env": {"OLLAMA_KEEP_ALIVE": "5m"},
        "volumes": ["/srv/models:/models:ro", "ollama-data:/root/.ollama"],
        "command": ["serve"]}


def spec(**docker_cfg) -> ServiceSpec:
    return ServiceSpec("ollama", "local", "docker", "ollama", 8500, gpus=(0, 1),
                       extra={"docker": {**GOOD, **docker_cfg}})


class FakeContainer:
    def __init__(self, name, status="running", exit_code=0):
        self.name, self.status = name, status
        self.attrs = {"State": {"Status": status, "Pid": 4242, "ExitCode": exit_code}}
        self.stopped = self.removed = False

    def reload(self):
        pass

    def start(self):
        self.status = "running"
        self.attrs["State"]["Status"] = "running"

    def stop(self, timeout=10):
        self.stopped = True
        self.attrs["State"]["Status"] = "exited"

    def remove(self, force=False):
        self.removed = True


class FakeClient:
    def __init__(self, *, network_driver="bridge", have_image=False, run_error=None):
        outer = self
        self.runs, self.pulls, self.by_name = [], [], {}

        class Containers:
            def create(self, **kw):  # the SDK's create: the container exists, not running
                if run_error:
                    raise run_error
                outer.runs.append(kw)
                c = FakeContainer(kw["name"], status="created")
                outer.by_name[kw["name"]] = c
                return c

            def get(self, name):
                if name not in outer.by_name:
                    raise docker.errors.NotFound("no such container")
                return outer.by_name[name]

        class Images:
            def get(self, image):
                if not have_image:
                    raise docker.errors.ImageNotFound("missing")

            def pull(self, image):
                outer.pulls.append(image)

        class Network:
            attrs: typing.ClassVar[dict] = {"Driver": network_driver}

        class Networks:
            def get(self, name):
                return Network()

        self.containers, self.images, self.networks = Containers(), Images(), Networks()


PLAN = LaunchPlan("ollama", ("docker",), {}, "/tmp/x")


def test_run_kwargs_and_sdk_start_stop_state() -> None:
    client = FakeClient()
    sup = DockerSupervisor(spec(), client=client)
    assert sup.start(PLAN, {"API_KEY": "sk-1"}) == 4242
    kw = client.runs[0]
    assert kw["image"] == "ollama/ollama:0.6.8" and kw["privileged"] is False
    assert kw["ports"] == {"11434/tcp": ("127.0.0.1", 8500)}
    assert kw["volumes"] == {"/srv/models": {"bind": "/models", "mode": "ro"},
                             "ollama-data": {"bind": "/root/.ollama", "mode": "rw"}}
    assert kw["environment"]["API_KEY"] == "sk-1"
    assert kw["device_requests"][0]["DeviceIDs"] == ["0", "1"]
    assert kw["command"] == ["serve"] and kw["name"] == "gpumod-ollama"
    assert client.pulls == ["ollama/ollama:0.6.8"]
    assert sup.state(PLAN).value == "running"
    sup.stop(PLAN)
    assert client.by_name["gpumod-ollama"].stopped and client.by_name["gpumod-ollama"].removed


def test_cli_argv_keeps_secrets_out() -> None:
    argv = DockerEngine().argv(spec(), bind="127.0.0.1", binary="/usr/bin/docker")
    assert argv[:3] == ["/usr/bin/docker", "run", "--rm"]
    assert "-p" in argv and "127.0.0.1:8500:11434" in argv
    assert "--gpus" in argv and "device=0,1" in argv
    assert argv[argv.index("API_KEY") - 1] == "-e"  # by name only; value from the environment
    assert "--privileged" not in argv
    assert argv[-2:] == ["ollama/ollama:0.6.8", "serve"]


@pytest.mark.parametrize("bad,match", [
    ({"privileged": True}, "privileged"),
    ({"network_mode": "host"}, "network"),
    ({"network": "host"}, "host"),
    ({"network": "macvlan"}, "macvlan"),
    ({"cap_add": ["SYS_ADMIN"]}, "cap_add"),
    ({"volumes": ["/:/host"]}, "root"),
    ({"volumes": ["/etc:/etc2"]}, "/etc"),
    ({"volumes": ["/etc/ssh:/x:ro"]}, "/etc"),
    ({"volumes": ["/var/run/docker.sock:/var/run/docker.sock"]}, "docker.sock"),
    ({"volumes": ["/var/run:/x"]}, "contains"),
    ({"volumes": ["/srv/../etc:/x"]}, "/etc"),
    ({"volumes": ["relative/path:/x"]}, "neither"),
    ({"env": {"A=B": "1"}}, "invalid environment"),
    ({"env": {"1A": "1"}}, "invalid environment"),
    ({"env": {"A": "x\ny"}}, "control"),
    ({"image": "bad image"}, "image"),
    ({"ports": {"80": 70000}}, "out of range"),
    ({"bogus": 1}, "unknown setting"),
])
def test_controls_reject_unsafe_settings(bad, match) -> None:
    with pytest.raises(UsageError, match=match):
        parse_config({**GOOD, **bad})


def test_network_with_macvlan_driver_is_refused_through_the_sdk() -> None:
    client = FakeClient(network_driver="macvlan")
    sup = DockerSupervisor(spec(network="lan"), client=client)
    with pytest.raises(UsageError, match="macvlan"):
        sup.start(PLAN, {})
    assert client.runs == []


def test_api_error_becomes_engine_error() -> None:
    client = FakeClient(have_image=True, run_error=docker.errors.APIError("port is taken"))
    with pytest.raises(EngineError, match="docker"):
        DockerSupervisor(spec(), client=client).start(PLAN, {})


def test_exited_container_is_crashed_or_stopped() -> None:
    client = FakeClient()
    sup = DockerSupervisor(spec(), client=client)
    assert sup.state(PLAN).value == "stopped"
    client.by_name["gpumod-ollama"] = FakeContainer("gpumod-ollama", "exited", exit_code=137)
    assert sup.state(PLAN).value == "crashed"

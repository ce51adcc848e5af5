"""A service's runtime pieces: host, transport, engine, launch plan, supervisor, endpoint.

:func:`runtime` builds them from a record; every operation on a live service works
through a :class:`Runtime` and never asks which supervisor it has (the contract in
:mod:`gpumod.supervise.base` covers pid, state, log, start, stop, remove).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from gpumod.engines.base import Engine
from gpumod.engines.registry import get_engine
from gpumod.engines.sleep import SleepCapable, sleep_capability
from gpumod.engines.vllm import DEV_MODE_ENV, check_dev_mode, prepare_vllm_launch
from gpumod.errors import UsageError
from gpumod.hosts.model import Host
from gpumod.hosts.transports.base import Transport
from gpumod.ops import hosts as hosts_ops
from gpumod.ops.addresses import bind_address, dev_mode, probe_address, service_dir
from gpumod.spec import ServiceSpec
from gpumod.store.db import Store
from gpumod.supervise.base import LaunchPlan, ProcessState, Supervisor
from gpumod.supervise.process import ProcessSupervisor

if TYPE_CHECKING:  # built in runtime(): `pi list` asks supervisor_for, never an endpoint
    from gpumod.hosts.http import Endpoint


@dataclass(frozen=True)
class LaunchOptions:
    """What the host adds to a launch (`pi start` finds these in its pre-flight)."""

    binary: str | None = None          # the engine binary's path on the host
    model_path: str | None = None      # llama.cpp: the .gguf file on the host
    env: dict[str, str] = field(default_factory=dict)   # PATH, HF_HOME, ...
    manifest: dict[str, Any] = field(default_factory=dict)


def launch_plan(spec: ServiceSpec, host: Host, engine: Engine | None = None,
                options: LaunchOptions | None = None) -> LaunchPlan:
    engine = engine or get_engine(spec.engine)
    options = options or LaunchOptions()
    bind = bind_address(spec, host)
    binary = options.binary or (host.engine_env or {}).get(f"{spec.engine}_binary") or None
    engine.validate(spec)
    # a `pi start` GGUF deployment relaunched later (a wake that restarts it, the gateway
    # starting it again after an eviction) finds its file where its first start did
    model_path = options.model_path or (str(spec.extra.get("model_path") or "") or None
                                        if spec.engine == "llamacpp" else None)
    argv = engine.argv(spec, bind=bind, binary=binary, model_path=model_path)
    if spec.engine == "command" and options.binary:
        argv[0] = options.binary
    env = {**engine.env(spec), **options.env}
    check_dev_mode(env.get(DEV_MODE_ENV))
    if dev_mode(spec) and spec.engine == "vllm":
        argv, env = prepare_vllm_launch(argv, env)
    workdir = spec.extra.get("workdir")
    return LaunchPlan(service=spec.name, argv=tuple(argv), env=env,
                      service_dir=service_dir(host, spec.name),
                      workdir=str(workdir) if workdir else None)


def collect_secrets(engine: Engine) -> dict[str, str]:
    secrets: dict[str, str] = {}
    key = os.environ.get("PI_API_KEY")
    if key:
        secrets.update(engine.secret_env_for(key))
    token = os.environ.get("HF_TOKEN")
    if token:
        secrets["HF_TOKEN"] = token
    return secrets


def supervisor_for(spec: ServiceSpec, host: Host, transport: Transport, *,
                   manifest: dict[str, Any] | None = None, docker_client: Any = None
                   ) -> Supervisor:
    if spec.supervisor == "systemd":
        from gpumod.supervise.systemd import SystemdSupervisor
        from gpumod.supervise.units import UnitOptions

        scope = str(spec.extra.get("systemd_scope") or "user")
        return SystemdSupervisor(transport, scope=scope,
                                 options=UnitOptions(engine=spec.engine, scope=scope))
    if spec.supervisor == "docker":
        if not host.is_local:
            raise UsageError("the docker supervisor drives the local Docker engine only",
                             hint="use --supervisor process on pods (it runs `docker run`)")
        from gpumod.supervise.docker import DockerSupervisor

        return DockerSupervisor(spec, client=docker_client, bind=bind_address(spec, host))
    return ProcessSupervisor(transport, manifest=manifest or {
        "engine": spec.engine, "model": spec.model, "port": spec.port, "gpumod": "service"})


@dataclass
class Runtime:
    spec: ServiceSpec
    host: Host
    transport: Transport
    engine: Engine
    plan: LaunchPlan
    supervisor: Supervisor
    endpoint: Endpoint
    sleep: SleepCapable | None
    secrets: dict[str, str] = field(default_factory=dict)
    options: LaunchOptions = field(default_factory=LaunchOptions)

    @property
    def health_path(self) -> str:
        return self.spec.health_path or "/health"

    @property
    def bind(self) -> str:
        return bind_address(self.spec, self.host)

    @property
    def owner_check(self) -> bool:
        """Can a health answer be traced to the service's own process group?"""
        return self.engine.serves_port_itself and self.supervisor.owns_port

    def alive(self) -> bool:
        return self.supervisor.state(self.plan) == ProcessState.RUNNING

    def pid(self) -> int | None:
        """The service's main pid on its host right now (None when not running)."""
        return self.supervisor.pid(self.plan)

    def with_spec(self, spec: ServiceSpec, host: Host) -> Runtime:
        """The same service with its record or host updated (GPUs chosen at launch)."""
        return replace(self, spec=spec, host=host,
                       plan=launch_plan(spec, host, self.engine, self.options))

    def with_args(self, args: tuple[str, ...] | list[str]) -> Runtime:
        """The same service launched with other engine args (planner admission)."""
        spec = self.spec.with_(args=tuple(args))
        return replace(self, spec=spec, plan=launch_plan(spec, self.host, self.engine,
                                                         self.options))

    def read_log(self, lines: int = 200) -> str:
        """The last lines of the service's log on its host ('' when there is none)."""
        return self.supervisor.read_log(self.plan, lines)


def runtime(store: Store, spec: ServiceSpec, *, transport: Transport | None = None,
            docker_client: Any = None, options: LaunchOptions | None = None,
            secrets: dict[str, str] | None = None, host: Host | None = None) -> Runtime:
    from gpumod.hosts.http import Endpoint

    host = host or hosts_ops.get_host(store, spec.host)
    transport = transport or hosts_ops.transport_for(host)
    engine = get_engine(spec.engine)
    options = options or LaunchOptions()
    plan = launch_plan(spec, host, engine, options)
    if spec.sleep_mode == "router":
        served = str((spec.extra.get("router") or {}).get("default_model") or "")
    else:
        served = engine.served_model(spec)
    endpoint = Endpoint(transport, spec.port, served_model=served, key_file=plan.env_file,
                        host=probe_address(bind_address(spec, host)))
    supervisor = supervisor_for(spec, host, transport, manifest=options.manifest or None,
                                docker_client=docker_client)
    return Runtime(spec, host, transport, engine, plan, supervisor, endpoint,
                   sleep_capability(engine, spec.sleep_mode),
                   collect_secrets(engine) if secrets is None else secrets, options)

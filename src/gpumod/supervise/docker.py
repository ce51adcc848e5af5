"""The Docker SDK supervisor: one service's container, driven through the Docker engine's API.

Local only (``docker.from_env()``). A start is prepare (network checked, image pulled,
container *created*: nothing runs) then release (``container.start()``), so the
lifecycle records the service before its engine runs; the container name
(``gpumod-NAME``) is its identity. Secrets travel in the API request, never in an argv.
Docker's proxy holds the published port, so health answers cannot be traced to the
container's own processes (``owns_port = False``).
"""

from __future__ import annotations

from typing import Any

from gpumod.engines.docker import BLOCKED_DRIVERS, DockerEngine, container_name
from gpumod.errors import EngineError, UsageError
from gpumod.spec import ServiceSpec
from gpumod.supervise.base import LaunchPlan, ProcessState, Supervisor


class DockerSupervisor(Supervisor):
    """Runs one service's container through the Docker SDK (``client`` = docker.from_env())."""

    name = "docker"
    owns_port = False

    def __init__(self, spec: ServiceSpec, *, client: Any = None, bind: str = "127.0.0.1") -> None:
        self.spec = spec
        self.engine = DockerEngine()
        self._client = client
        self.bind = bind

    @property
    def client(self) -> Any:
        if self._client is None:
            import docker

            try:
                self._client = docker.from_env()
            except docker.errors.DockerException as exc:
                raise EngineError(f"cannot reach the Docker engine: {exc}",
                                  hint="is dockerd running, and may this user use it?") from exc
        return self._client

    def _check_network(self, name: str | None) -> None:
        if not name or name == "bridge":
            return
        import docker

        try:
            network = self.client.networks.get(name)
        except docker.errors.NotFound:
            raise UsageError(f"docker: network {name!r} does not exist") from None
        driver = str((network.attrs or {}).get("Driver", "")).lower()
        if driver in BLOCKED_DRIVERS:
            raise UsageError(f"docker: network {name!r} uses the {driver} driver, "
                             "which is not allowed")

    def _container(self) -> Any | None:
        import docker

        try:
            return self.client.containers.get(container_name(self.spec.name))
        except docker.errors.NotFound:
            return None

    def prepare(self, plan: LaunchPlan, secrets: dict[str, str]) -> int | None:
        import docker

        kwargs = self.engine.run_kwargs(self.spec, bind=self.bind, secrets=secrets)
        kwargs.pop("detach", None)
        cfg = self.engine.config(self.spec)
        try:
            self._check_network(cfg.network)
            old = self._container()
            if old is not None:
                old.remove(force=True)
            try:
                self.client.images.get(cfg.image)
            except docker.errors.ImageNotFound:
                if not cfg.pull:
                    raise EngineError(f"docker: image {cfg.image} is not present") from None
                self.client.images.pull(cfg.image)
            self.client.containers.create(**kwargs)
        except docker.errors.APIError as exc:
            raise EngineError(f"docker: {exc.explanation or exc}") from exc
        except docker.errors.DockerException as exc:
            raise EngineError(f"docker: {exc}") from exc
        return None

    def release(self, plan: LaunchPlan, held: int | None) -> int | None:
        import docker

        try:
            container = self._container()
            if container is None:
                raise EngineError(f"docker: {container_name(self.spec.name)} vanished "
                                  "before it started")
            container.start()
            container.reload()
        except docker.errors.APIError as exc:
            raise EngineError(f"docker: {exc.explanation or exc}") from exc
        except docker.errors.DockerException as exc:
            raise EngineError(f"docker: {exc}") from exc
        return _pid(container)

    def stop(self, plan: LaunchPlan, *, timeout: float = 20) -> str:
        """Stop and remove the container (an exited one would read as crashed)."""
        import docker

        try:
            container = self._container()
            if container is None:
                return "not-running"
            was = self._state(container)
            container.stop(timeout=int(timeout))
            container.remove(force=True)
        except docker.errors.NotFound:
            return "not-running"
        except docker.errors.DockerException as exc:
            raise EngineError(f"docker: stopping {container_name(self.spec.name)} failed: "
                              f"{exc}") from exc
        return "stopped" if was == ProcessState.RUNNING else "not-running"

    def remove(self, plan: LaunchPlan, *, timeout: float = 20, keep_log: bool = False) -> str:
        """stop: the container (and its log: keep_log cannot keep it) is all there is."""
        return self.stop(plan, timeout=timeout)

    def _state(self, container: Any) -> ProcessState:
        container.reload()
        state = (container.attrs or {}).get("State", {})
        status = state.get("Status") or container.status
        if status in {"running", "restarting"}:
            return ProcessState.RUNNING
        if status == "created":
            return ProcessState.STOPPED
        if status in {"exited", "dead"}:
            return ProcessState.CRASHED if state.get("ExitCode", 0) != 0 else ProcessState.STOPPED
        return ProcessState.UNKNOWN

    def state(self, plan: LaunchPlan) -> ProcessState:
        import docker

        try:
            container = self._container()
            if container is None:
                return ProcessState.STOPPED
            return self._state(container)
        except (docker.errors.DockerException, EngineError):
            return ProcessState.UNKNOWN

    def pid(self, plan: LaunchPlan) -> int | None:
        container = self._container()
        if container is None:
            return None
        container.reload()
        return _pid(container)

    def status_source(self, plan: LaunchPlan) -> tuple[str, str] | None:
        return None  # the Docker engine knows; the host script does not

    def read_log(self, plan: LaunchPlan, lines: int = 200) -> str:
        import docker

        try:
            container = self._container()
            if container is None:
                return ""
            return container.logs(tail=lines).decode("utf-8", "replace")
        except (docker.errors.DockerException, EngineError):
            return ""


def _pid(container: Any) -> int | None:
    state = (container.attrs or {}).get("State", {})
    pid = state.get("Pid")
    return int(pid) if pid and state.get("Status") == "running" else None

"""A real OpenSSH server on a loopback address (127.0.0.1 unless told), acting as a GPU "pod".

Each LoopbackSSHD has its own host key, client key, known_hosts file, a
remote gpumod folder (GPUMOD_REMOTE_HOME, set through sshd's SetEnv) and a
bin folder put first on the remote PATH, where tests place shims such as
the fake nvidia-smi.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.support.real import free_port, sshd_binary


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


class LoopbackSSHD:
    def __init__(self, base: Path, *, port: int | None = None, address: str = "127.0.0.1"
                 ) -> None:
        if not address.startswith("127."):
            raise ValueError("a test pod listens on a loopback address only")
        self.base = base
        self.address = address
        self.port = port or free_port()
        self.etc = base / "sshd"
        self.remote_root = base / "remote-gpumod"
        self.bin_dir = base / "remote-bin"
        # The remote login gets its own HOME so nothing a test runs there (setup
        # scripts, caches, rc files) can touch this machine's real home.
        self.remote_home = base / "remote-home"
        self.client_key = base / "client_key"
        self.known_hosts = base / "known_hosts"
        self.proc: subprocess.Popen[bytes] | None = None
        for folder in (self.etc, self.remote_root, self.bin_dir, self.remote_home):
            folder.mkdir(parents=True, exist_ok=True)
        self._keys()
        self._config()

    # -- set-up -------------------------------------------------------------
    def _keys(self) -> None:
        host_key = self.etc / "host_ed25519"
        if not host_key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)],
                           check=True)
        if not self.client_key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                            str(self.client_key)], check=True)
        authorized = self.etc / "authorized_keys"
        authorized.write_text((self.base / "client_key.pub").read_text())
        authorized.chmod(0o600)

    def _config(self) -> None:
        path = f"{self.bin_dir}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
        (self.etc / "sshd_config").write_text(
            f"Port {self.port}\n"
            f"ListenAddress {self.address}\n"
            f"HostKey {self.etc / 'host_ed25519'}\n"
            f"AuthorizedKeysFile {self.etc / 'authorized_keys'}\n"
            f"PidFile {self.etc / 'sshd.pid'}\n"
            "StrictModes no\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\n"
            "PermitRootLogin prohibit-password\n"
            "UsePAM no\n"
            "MaxSessions 100\n"
            "MaxStartups 100\n"
            "LogLevel ERROR\n"
            f"SetEnv GPUMOD_REMOTE_HOME={self.remote_root} HOME={self.remote_home} PATH={path}\n"
        )

    # -- life cycle -----------------------------------------------------------
    def start(self) -> LoopbackSSHD:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sshd_binary(), "-D", "-e", "-f", str(self.etc / "sshd_config")],
            stdout=subprocess.DEVNULL, stderr=open(self.etc / "sshd.log", "ab"),  # noqa: SIM115
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.etc / 'sshd.log').read_text()}")
            try:
                with socket.create_connection((self.address, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sshd did not open its port")

    def stop(self) -> None:
        """Take the "pod" down: the listener and every connection it serves."""
        if self.proc is None:
            return
        victims = [self.proc.pid, *_descendants(self.proc.pid)]
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=5)
        self.proc = None

    # -- what a user would type ------------------------------------------------
    @property
    def ssh_command(self) -> str:
        return (f"ssh -p {self.port} -i {self.client_key} "
                f"-o UserKnownHostsFile={self.known_hosts} root@{self.address}")

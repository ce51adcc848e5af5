"""The exported sidecar config, run by a real nginx in front of the fake vLLM in dev mode:
the API and health pass, streamed; vLLM's dev endpoints never do, however the path is
written."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest

from gpumod.export.kubernetes import proxy_config
from gpumod.testing import fake_nvidia_smi as smi
from gpumod.testing.harness import FakeVLLM, port_open
from tests.support.procs import stop_process
from tests.support.real import free_port, require_real

KEY = "proxy-test-key"


def nginx_binary() -> str:
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                     else None)
    if not path:
        require_real("nginx", "it is not installed (apt-get install nginx)")
    return str(path)


@pytest.fixture
def proxied(tmp_path: Path):
    """(proxy URL, engine URL): fake vLLM with sleep on loopback, nginx with the export's conf."""
    nginx = nginx_binary()
    engine = FakeVLLM("org/tiny", ["--enable-sleep-mode", "--served-model-name", "tiny"],
                      env={"VLLM_SERVER_DEV_MODE": "1", "VLLM_API_KEY": KEY,
                           "FAKE_VLLM_TOKEN_DELAY": "0.01"},
                      log_path=tmp_path / "vllm.log",
                      gpu_state=smi.write_state(tmp_path / "gpus.json", ["h100"]))
    listen = free_port()
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "default.conf").write_text(proxy_config(listen, engine.port))
    temp = tmp_path / "nginx-tmp"
    temp.mkdir()
    # The image's nginx.conf, reduced: its http block includes conf.d/*.conf.
    (tmp_path / "nginx.conf").write_text(
        f"daemon off;\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
        "events {}\nhttp {\n    access_log off;\n"
        + "".join(f"    {kind}_temp_path {temp}/{kind};\n"
                  for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        + f"    include {tmp_path}/conf.d/*.conf;\n}}\n")
    check = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        engine.wait_ready()
        deadline = time.monotonic() + 10
        while not port_open(listen):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "nginx did not listen"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{listen}", engine.base_url
    finally:
        stop_process(proc)
        engine.stop(grace=2)


def test_the_api_passes_streamed_and_the_dev_endpoints_stay_on_loopback(proxied):
    proxy, direct = proxied
    auth = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(timeout=10) as http:
        assert http.get(f"{proxy}/health").status_code == 200
        assert http.get(f"{proxy}/v1/models").status_code == 401   # the engine's own key check
        assert http.get(f"{proxy}/v1/models", headers=auth).json()["data"][0]["id"] == "tiny"
        assert http.get(f"{proxy}/metrics").status_code == 200
        for method, path in (("POST", "/sleep?level=1"), ("POST", "/wake_up"),
                             ("GET", "/is_sleeping"), ("POST", "/reset_prefix_cache"),
                             ("POST", "/collective_rpc"), ("POST", "/v1/../sleep?level=1"),
                             ("POST", "/v1/%2e%2e/sleep?level=1"), ("POST", "//sleep?level=1"),
                             ("POST", "/health/../sleep?level=1"), ("GET", "/docs")):
            answer = http.request(method, proxy + path, headers=auth, json={})
            assert answer.status_code in (400, 404), (path, answer.status_code, answer.text)
        # Nothing of that reached the engine: it is awake, and its dev endpoints do work
        # on its loopback port for whoever is inside the pod (kubectl exec).
        assert http.get(f"{direct}/is_sleeping").json() == {"is_sleeping": False}
    client = openai.OpenAI(base_url=f"{proxy}/v1", api_key=KEY)
    chunks = list(client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], stream=True,
        max_tokens=8))
    assert len(chunks) > 2
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

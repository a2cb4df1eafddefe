"""The operator and runtime Dockerfiles cannot be built on the test machines; these checks keep their
essentials right: pinned bases, what they install, the user they run as, and the entrypoint."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    logical, current = [], ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        current += " " + stripped.rstrip("\\").strip() if current else stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            logical.append(current)
            current = ""
    assert current == "", f"{dockerfile}: dangling line continuation"
    pairs = []
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        pairs.append((keyword.upper(), arguments.strip()))
    return pairs


def final_stage(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (keyword, _) in enumerate(pairs) if keyword == "FROM")
    return pairs[last_from:]


def values(pairs, keyword):
    return [arguments for k, arguments in pairs if k == keyword]


def console_scripts() -> dict[str, str]:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("path", ["operator/Dockerfile", "runtime/Dockerfile", "runtime/router.Dockerfile"])
def test_base_images_are_pinned(path):
    for base in values(instructions(REPO_ROOT / path), "FROM"):
        image = base.split()[0]
        assert ":" in image and not image.endswith(":latest"), f"{path}: base image {image} is not pinned"


def test_operator_image():
    pairs = instructions(REPO_ROOT / "operator" / "Dockerfile")
    stage = final_stage(pairs)
    assert values(stage, "FROM")[0].startswith("python:3.11-slim")
    assert any('"pixtral-operator[operator]"' in run or ".[operator]" in run for run in values(pairs, "RUN"))
    users = values(stage, "USER")
    assert users, "the operator image must set a USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric non-root uid, so runAsNonRoot can verify it"
    chart_values = (REPO_ROOT / "charts" / "pixtral-operator" / "values.yaml").read_text()
    assert re.search(rf"runAsUser: {uid}\b", chart_values), "the chart runs the operator as the image's user"
    entrypoint = json.loads(values(stage, "ENTRYPOINT")[-1])
    assert entrypoint == ["pixtral-operator"] and "pixtral-operator" in console_scripts()


def test_runtime_image():
    pairs = instructions(REPO_ROOT / "runtime" / "Dockerfile")
    assert values(pairs, "FROM")[0].startswith("vllm/vllm-openai:v")
    runs = " ".join(values(pairs, "RUN"))
    # vLLM's base image already has the runtime's libraries: installing them again would replace the
    # versions vLLM was built against.
    assert "--no-deps ." in runs
    entrypoint = json.loads(values(final_stage(pairs), "ENTRYPOINT")[-1])
    assert entrypoint == ["pixtral-runtime"] and "pixtral-runtime" in console_scripts()


def test_runtime_image_adds_what_vllm_lacks():
    """Every runtime dependency is either in vLLM's image or installed explicitly by the Dockerfile."""
    # vLLM requires the OpenTelemetry SDK and opentelemetry-exporter-otlp (both OTLP exporters).
    shipped_with_vllm = {"fastapi", "uvicorn", "httpx", "mistral-common", "pillow", "safetensors",
                         "pyyaml", "prometheus-client", "opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-grpc",
                         "opentelemetry-exporter-otlp-proto-http"}
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    needed = {re.split(r"[<>=!~\[ ]", requirement)[0].lower()
              for requirement in project["dependencies"] + project["optional-dependencies"]["runtime"]}
    runs = " ".join(values(instructions(REPO_ROOT / "runtime" / "Dockerfile"), "RUN"))
    missing = [name for name in sorted(needed - shipped_with_vllm) if f'"{name}' not in runs]
    assert missing == []


# What the router's modules import that is not the standard library, and the distribution providing it.
ROUTER_IMPORT_SOURCES = {"uvicorn": "uvicorn", "httptools": "uvicorn", "uvloop": "uvicorn", "kubernetes": "kubernetes",
                         "orjson": "orjson", "PIL": "pillow", "prometheus_client": "prometheus-client", "yaml": "pyyaml",
                         "opentelemetry": "opentelemetry-sdk"}


def router_imports() -> set[str]:
    """Top-level modules imported by `pixtral-runtime router` (runtime/cli.py and runtime/router/)."""
    import ast
    import sys

    sources = [REPO_ROOT / "runtime" / "__init__.py", REPO_ROOT / "runtime" / "cli.py",
               *sorted((REPO_ROOT / "runtime" / "router").glob("*.py"))]
    modules = set()
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - {"pixtral_runtime", "__future__"}


def requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ]", requirement)[0].lower()


def test_router_image():
    """The slim router image: no vLLM or torch, every module the router imports, pyproject's bounds."""
    pairs = instructions(REPO_ROOT / "runtime" / "router.Dockerfile")
    stage = final_stage(pairs)
    assert values(stage, "FROM")[0].startswith("python:3.11-slim")
    users = values(stage, "USER")
    assert users and users[-1].split(":")[0].isdigit() and int(users[-1].split(":")[0]) != 0
    assert json.loads(values(stage, "ENTRYPOINT")[-1]) == ["pixtral-runtime"]
    assert json.loads(values(stage, "CMD")[-1]) == ["router"]
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = set(project["dependencies"]) | set(project["optional-dependencies"]["runtime"])
    runs = " ".join(values(pairs, "RUN"))
    installed = set(re.findall(r'"([^"]+)"', runs))
    assert installed <= declared, f"not as pyproject.toml writes them: {sorted(installed - declared)}"
    names = {requirement_name(r) for r in installed | set(project["dependencies"])}
    assert not names & {"vllm", "torch", "mistral-common", "safetensors"}
    unknown = router_imports() - set(ROUTER_IMPORT_SOURCES)
    assert not unknown, f"the router imports {sorted(unknown)}: add it to ROUTER_IMPORT_SOURCES and the Dockerfile"
    missing = {ROUTER_IMPORT_SOURCES[m] for m in router_imports()} - names
    assert not missing, f"runtime/router.Dockerfile does not install {sorted(missing)}"


def test_runtime_image_runs_as_the_pods_user():
    """The operator runs runtime pods as this uid (operator/render/security.py); the image agrees."""
    from pixtral_operator.render.security import NONROOT_UID

    stage = final_stage(instructions(REPO_ROOT / "runtime" / "Dockerfile"))
    assert values(stage, "USER")[-1] == f"{NONROOT_UID}:{NONROOT_UID}"
    router_stage = final_stage(instructions(REPO_ROOT / "runtime" / "router.Dockerfile"))
    assert values(router_stage, "USER")[-1] == f"{NONROOT_UID}:{NONROOT_UID}"


def test_parser_joins_continuations(tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("# c\nFROM a:1 AS b\nRUN x \\\n  && y\n\nUSER 1\n")
    assert instructions(dockerfile) == [("FROM", "a:1 AS b"), ("RUN", "x && y"), ("USER", "1")]

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


@pytest.mark.parametrize("path", ["operator/Dockerfile", "runtime/Dockerfile"])
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
    shipped_with_vllm = {"fastapi", "uvicorn", "httpx", "mistral-common", "pillow", "safetensors",
                         "pyyaml", "prometheus-client"}
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    needed = {re.split(r"[<>=!~\[ ]", requirement)[0].lower()
              for requirement in project["dependencies"] + project["optional-dependencies"]["runtime"]}
    runs = " ".join(values(instructions(REPO_ROOT / "runtime" / "Dockerfile"), "RUN"))
    missing = [name for name in sorted(needed - shipped_with_vllm) if f'"{name}' not in runs]
    assert missing == []


def test_parser_joins_continuations(tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("# c\nFROM a:1 AS b\nRUN x \\\n  && y\n\nUSER 1\n")
    assert instructions(dockerfile) == [("FROM", "a:1 AS b"), ("RUN", "x && y"), ("USER", "1")]

"""Layering rules, checked on the source's imports (import-linter cannot analyse `pixtral_operator`,
whose folder is a namespace package so that it never shadows the stdlib `operator`):

- the runtime (supervisor, router) never imports the operator;
- only operator/k8s.py and the kopf handlers import the Kubernetes client;
- only the handlers and the entrypoint import kopf;
- renderers, conditions, the spec view and the autoscaler decision are pure (no I/O libraries).
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def imports_of(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules(folder: str) -> list[pathlib.Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts and p.name != "Dockerfile")


def offenders(paths, forbidden: tuple[str, ...]) -> list[str]:
    out = []
    for path in paths:
        for name in imports_of(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                out.append(f"{path.relative_to(ROOT)} imports {name}")
    return out


def test_runtime_never_imports_the_operator():
    assert offenders(modules("runtime"), ("pixtral_operator",)) == []


def test_only_k8s_and_handlers_use_the_kubernetes_client():
    allowed = {ROOT / "operator" / "k8s.py"} | set(modules("operator/handlers"))
    assert offenders([p for p in modules("operator") if p not in allowed], ("kubernetes",)) == []


def test_only_handlers_and_entrypoint_use_kopf():
    allowed = set(modules("operator/handlers")) | {ROOT / "operator" / "__main__.py"}
    assert offenders([p for p in modules("operator") if p not in allowed], ("kopf",)) == []


@pytest.mark.parametrize("module", ["spec.py", "conditions.py", "scale_decision.py", "drift.py", "events.py", "render"])
def test_pure_modules_do_no_io(module):
    path = ROOT / "operator" / module
    paths = modules(f"operator/{module}") if path.is_dir() else [path]
    forbidden = ("kubernetes", "kopf", "httpx", "requests", "socket", "subprocess", "pixtral_operator.k8s")
    assert offenders(paths, forbidden) == []

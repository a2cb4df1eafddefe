"""The distribution maps operator/ and runtime/ to import names and lists every subpackage."""

import pathlib
import subprocess
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
FOLDERS = {"pixtral_operator": ROOT / "operator", "pixtral_runtime": ROOT / "runtime"}


def _subpackages_on_disk() -> set[str]:
    found = set()
    for import_name, folder in FOLDERS.items():
        found.add(import_name)
        for init in folder.rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            rel = init.parent.relative_to(folder)
            if rel.parts:
                found.add(".".join((import_name, *rel.parts)))
        for sub in folder.rglob("*.py"):
            rel = sub.parent.relative_to(folder)
            if rel.parts and "__pycache__" not in sub.parts:
                found.add(".".join((import_name, *rel.parts)))
    return found


def test_every_subpackage_folder_is_listed():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    on_disk = _subpackages_on_disk()
    assert on_disk - listed == set(), f"folders missing from [tool.setuptools] packages: {sorted(on_disk - listed)}"
    assert listed - on_disk == set(), f"listed packages without a folder: {sorted(listed - on_disk)}"


def test_package_dir_mapping():
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {
        "pixtral_operator": "operator",
        "pixtral_runtime": "runtime",
    }


def test_operator_folder_never_shadows_stdlib_operator():
    # operator/ has no __init__.py: run from the repository root, `import operator` is still the stdlib.
    assert not (ROOT / "operator" / "__init__.py").exists()
    code = (
        "import operator, pixtral_operator, pixtral_runtime; "
        "assert operator.__file__.endswith('operator.py'), operator.__file__; "
        "from operator import itemgetter"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_console_scripts_and_extras():
    project = PYPROJECT["project"]
    assert project["scripts"] == {
        "pixtral-operator": "pixtral_operator.__main__:main",
        "pixtral-runtime": "pixtral_runtime.cli:main",
    }
    assert {"operator", "runtime", "test", "lint"} <= set(project["optional-dependencies"])

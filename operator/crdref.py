"""Generates docs/crd-reference.md from the CRD schema (the one source).

    python -m pixtral_operator.crdref          # write docs/crd-reference.md
    python -m pixtral_operator.crdref --check  # exit 1 when the file is out of date
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
CRD_PATH = ROOT / "manifests" / "crds" / "serving.pixtral.dev_pixtraldeployments.yaml"
DOC_PATH = ROOT / "docs" / "crd-reference.md"


def _type(node: Mapping[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "int or string"
    t = node.get("type", "object")
    if t == "array":
        return f"[]{_type(node.get('items') or {})}"
    if t == "object" and "additionalProperties" in node and "properties" not in node:
        return f"map[string]{_type(node['additionalProperties'])}"
    return t


def _constraints(node: Mapping[str, Any]) -> str:
    parts = []
    if "enum" in node:
        parts.append("one of " + ", ".join(f"`{v}`" for v in node["enum"]))
    for key, label in (("minimum", ">="), ("maximum", "<="), ("minLength", "min length"), ("maxLength", "max length"), ("maxItems", "max items")):
        if key in node:
            parts.append(f"{label} {node[key]}")
    if "pattern" in node:
        parts.append(f"pattern `{node['pattern']}`")
    for rule in node.get("x-kubernetes-validations") or ():
        parts.append(f"rule: {rule['message']}")
    return "; ".join(parts)


def _rows(node: Mapping[str, Any], path: str, required: set[str]) -> Iterator[str]:
    for name, child in (node.get("properties") or {}).items():
        child_path = f"{path}.{name}"
        default = f"`{json.dumps(child['default'])}`" if "default" in child else ""
        req = "yes" if name in required else ""
        desc = " ".join(str(child.get("description", "")).split())
        yield f"| `{child_path}` | {_type(child)} | {req} | {default} | {desc} | {_constraints(child)} |"
        yield from _rows(child, child_path, set(child.get("required") or ()))
        items = child.get("items")
        if isinstance(items, dict) and items.get("properties"):
            yield from _rows(items, f"{child_path}[]", set(items.get("required") or ()))


def render(crd: Mapping[str, Any]) -> str:
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    lines = [
        "# PixtralDeployment reference",
        "",
        f"`{crd['spec']['group']}/{version['name']}`, kind `{crd['spec']['names']['kind']}`, short name "
        f"`{', '.join(crd['spec']['names'].get('shortNames', []))}`. Generated from "
        "`manifests/crds/serving.pixtral.dev_pixtraldeployments.yaml` by `python -m pixtral_operator.crdref`; "
        "do not edit by hand. `kubectl explain pxd.spec --recursive` shows the same.",
        "",
        " ".join(schema.get("description", "").split()),
        "",
    ]
    root_rules = schema.get("x-kubernetes-validations") or ()
    if root_rules:
        lines += ["Object rules (checked by the API server):", ""]
        lines += [f"- {r['message']}" for r in root_rules]
        lines.append("")
    spec_rules = schema["properties"]["spec"].get("x-kubernetes-validations") or ()
    if spec_rules:
        lines += ["Cross-field rules (checked by the API server):", ""]
        lines += [f"- {r['message']}" for r in spec_rules]
        lines.append("")
    for section in ("spec", "status"):
        node = schema["properties"][section]
        lines += [f"## {section}", "", "| field | type | required | default | description | constraints |", "|---|---|---|---|---|---|"]
        lines += list(_rows(node, section, set(node.get("required") or ())))
        lines.append("")
    lines += ["## Printer columns", "", "| column | JSONPath |", "|---|---|"]
    lines += [f"| {c['name']} | `{c['jsonPath']}` |" for c in version.get("additionalPrinterColumns", [])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    text = render(yaml.safe_load(CRD_PATH.read_text()))
    if args.check:
        if not DOC_PATH.exists() or DOC_PATH.read_text() != text:
            print(f"{DOC_PATH} is out of date: run python -m pixtral_operator.crdref", file=sys.stderr)
            return 1
        return 0
    DOC_PATH.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What a CEL rule iterates, and whether the schema bounds it.

The API server estimates each rule's worst-case cost from the schema before it accepts
the CRD; a list without maxItems or a string without maxLength counts as large as a
whole request (3 MiB), which sinks the estimate (and the CRD) as soon as a rule walks
it. This finds every value a rule walks: the receiver of a comprehension macro (all,
exists, exists_one, filter, map) and the receiver of a string function (size() is
constant-time and not a walk); resolves it to its schema node through `self`,
comprehension variables, field selections and indexes; and names the ones without a
bound (maxItems, maxProperties, maxLength, or an enum for strings). A rule under a list
or map runs once per item, so every list and map enclosing the rule must be bounded too.
"""

from __future__ import annotations

import re
from typing import Any

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
CHAIN = rf"{IDENT}(?:\.{IDENT}|\[\d+\])*"
MACRO = re.compile(rf"({CHAIN})\.(all|exists|exists_one|filter|map)\(\s*({IDENT})\s*,")
STRING_FUNCTIONS = ("contains", "matches", "startsWith", "endsWith", "split", "indexOf", "lastIndexOf",
                    "lowerAscii", "upperAscii", "replace", "substring", "trim", "join", "charAt", "find", "findAll")
STRING_CALL = re.compile(rf"({CHAIN})\.({'|'.join(STRING_FUNCTIONS)})\(")
STEP = re.compile(rf"\.({IDENT})|\[(\d+)\]")


def resolve(chain: str, self_schema: dict[str, Any], variables: dict[str, dict[str, Any] | None]) -> tuple[dict[str, Any] | None, str]:
    """The schema node a chain like `self.ports[0].name` or `p.targetPort` denotes; None if not a schema value."""
    head = re.match(IDENT, chain)
    assert head is not None
    node: dict[str, Any] | None = self_schema if head.group(0) == "self" else variables.get(head.group(0))
    for field, index in STEP.findall(chain[head.end():]):
        if node is None:
            return None, chain
        if index:
            node = node.get("items")
        elif field in ("size",):
            return None, chain
        else:
            props = node.get("properties") or {}
            node = props.get(field) if field in props else (node.get("additionalProperties") if isinstance(node.get("additionalProperties"), dict) else None)
    return node, chain


def bounded(node: dict[str, Any]) -> bool:
    if node.get("x-kubernetes-int-or-string"):
        return "maxLength" in node
    kind = node.get("type")
    if kind == "array":
        return "maxItems" in node
    if kind == "string":
        return "maxLength" in node or "enum" in node
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return "maxProperties" in node
    return True


def unbounded_walks(rule: str, self_schema: dict[str, Any]) -> list[str]:
    """The chains a rule walks whose schema node has no bound: each as `chain (what is missing)`."""
    variables: dict[str, dict[str, Any] | None] = {}
    for match in MACRO.finditer(rule):  # bind comprehension variables in order of appearance
        node, _ = resolve(match.group(1), self_schema, variables)
        variables[match.group(3)] = node.get("items") if node is not None and node.get("type") == "array" else (
            node.get("additionalProperties") if node is not None and isinstance(node.get("additionalProperties"), dict) else None)
    walked: list[str] = []
    for pattern in (MACRO, STRING_CALL):
        for match in pattern.finditer(rule):
            chain = next(group for group in match.groups() if group)
            walked.append(chain)
    problems = []
    for chain in dict.fromkeys(walked):
        node, _ = resolve(chain, self_schema, variables)
        if node is not None and not bounded(node):
            what = "maxItems" if node.get("type") == "array" else "maxProperties" if node.get("type") == "object" else "maxLength"
            problems.append(f"{chain} (no {what})")
    return problems


def unbounded_enclosures(schema_path: tuple[str, ...], root: dict[str, Any]) -> list[str]:
    """The lists and maps enclosing a schema node that have no bound: the rule there runs once per item."""
    problems = []
    node = root
    for depth, step in enumerate(schema_path):
        where = ".".join(schema_path[:depth]) or "<root>"
        if step == "[]":
            if "maxItems" not in node:
                problems.append(f"{where} (no maxItems)")
            node = node["items"]
        elif step == "{}":
            if "maxProperties" not in node:
                problems.append(f"{where} (no maxProperties)")
            node = node["additionalProperties"]
        else:
            node = node["properties"][step]
    return problems

"""The CRD's OpenAPI schema: the API server's structural rules, checked on the committed file, and the corpus through `jsonschema`.

The structural rules are those the API server enforces before it accepts a CRD
(apiextensions-apiserver: structural schema, list-map keys, defaults): a CRD that
breaks one does not install at all. The corpus check is the schema layer alone of
tests/crd/test_cel.py's agreement: every good object passes it, and where it refuses
a bad one it names the model's field.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import jsonschema
import pytest

from tests.crd import apiserver
from tests.crd.test_cel import same_field
from tests.unit.api.test_validation import BAD, GOOD
from vsop.api.crd import crd, crd_yaml

COMBINATORS = ("allOf", "anyOf", "oneOf", "not")
# What a structural schema node may hold (apiextensions.k8s.io/v1 JSONSchemaProps, minus $ref, definitions, and friends).
KNOWN = {
    "type", "format", "title", "description", "default", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum",
    "maxLength", "minLength", "pattern", "maxItems", "minItems", "uniqueItems", "multipleOf", "enum", "maxProperties",
    "minProperties", "required", "items", "properties", "additionalProperties", "nullable", "example", "externalDocs",
    *COMBINATORS, "x-kubernetes-preserve-unknown-fields", "x-kubernetes-embedded-resource", "x-kubernetes-int-or-string",
    "x-kubernetes-list-map-keys", "x-kubernetes-list-type", "x-kubernetes-map-type", "x-kubernetes-validations",
}
SCALARS = ("string", "integer", "number", "boolean")


def nodes() -> list[tuple[str, dict[str, Any]]]:
    return [(apiserver.fmt(path) or "<root>", node) for path, node in apiserver.schema_nodes(apiserver.root_schema())]


def test_the_committed_crd_is_the_generated_one() -> None:
    assert apiserver.CRD_FILE.read_text() == crd_yaml() and apiserver.crd() == crd()


def test_every_node_is_structural() -> None:
    for path, node in nodes():
        assert set(node) <= KNOWN, f"{path}: {set(node) - KNOWN}"
        assert not set(node) & set(COMBINATORS), f"{path}: no combinator is needed, and each has structural limits"
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node, f"{path}: int-or-string has no type"
        else:
            assert node.get("type") in (*SCALARS, "object", "array"), f"{path}: every node has a type"
        assert not ("properties" in node and "additionalProperties" in node), f"{path}: properties and additionalProperties exclude each other"
        assert node.get("additionalProperties") is not False, f"{path}: additionalProperties: false is not allowed"
        if node.get("type") == "array":
            assert isinstance(node.get("items"), dict), f"{path}: an array says what its items are"
        for name in node.get("required") or ():
            assert name in (node.get("properties") or {}), f"{path}: required {name!r} is not a property"
        for value in node.get("enum") or ():
            assert jsonschema.Draft4Validator({"type": node["type"]}).is_valid(value), f"{path}: enum value {value!r} is not a {node['type']}"


def test_metadata_is_left_to_the_api_server() -> None:
    assert apiserver.root_schema()["properties"]["metadata"] == {"type": "object"}
    assert apiserver.root_schema()["type"] == "object"


def test_list_map_keys_are_required_or_defaulted_scalars() -> None:
    checked = 0
    for path, node in nodes():
        kind = node.get("x-kubernetes-list-type")
        if kind is None:
            assert "x-kubernetes-list-map-keys" not in node, path
            continue
        assert node.get("type") == "array" and kind in ("atomic", "set", "map"), path
        if kind != "map":
            continue
        checked += 1
        items = node["items"]
        assert items.get("type") == "object" and node["x-kubernetes-list-map-keys"], path
        for key in node["x-kubernetes-list-map-keys"]:
            prop = items["properties"][key]
            assert prop.get("type") in SCALARS, f"{path}: key {key} is a scalar"
            assert key in (items.get("required") or ()) or "default" in prop, f"{path}: key {key} is required or defaulted"
    assert checked == 2  # spec.ports and status.conditions


def test_defaults_validate_against_their_own_schema() -> None:
    checked = 0
    for path, node in nodes():
        if "default" in node:
            checked += 1
            schema = apiserver.as_json_schema(node)
            errors = [e.message for e in jsonschema.Draft4Validator(schema).iter_errors(node["default"])]
            assert errors == [], f"{path}: default {node['default']!r}: {errors}"
    assert checked >= 10


def test_the_schema_is_valid_json_schema_draft_4() -> None:
    """OpenAPI v3.0's schema object: exclusiveMinimum/exclusiveMaximum are booleans there, not numbers (pydantic's default)."""
    jsonschema.Draft4Validator.check_schema(apiserver.as_json_schema(apiserver.root_schema()))


def test_printer_columns_name_schema_fields() -> None:
    for column in apiserver.version()["additionalPrinterColumns"]:
        node: Any = apiserver.root_schema()
        json_path = column["jsonPath"]
        for part in json_path.split("[")[0].strip(".").split("."):
            if part == "metadata":
                break
            node = node["properties"][part]
        assert column["type"] in ("string", "integer", "number", "boolean", "date"), column


@pytest.mark.parametrize("doc", GOOD.values(), ids=GOOD.keys())
def test_good_objects_pass_the_schema(doc: dict[str, Any]) -> None:
    stored = apiserver.apply_defaults(copy.deepcopy(doc), apiserver.root_schema())
    assert apiserver.schema_refusals(stored) == []


@pytest.mark.parametrize(("doc", "path"), [(d, p) for d, p, _ in BAD.values()], ids=BAD.keys())
def test_where_the_schema_refuses_a_bad_object_it_names_the_models_field(doc: dict[str, Any], path: str) -> None:
    refusals = apiserver.schema_refusals(apiserver.apply_defaults(copy.deepcopy(doc), apiserver.root_schema()))
    if refusals:
        assert any(same_field(r.path, path) for r in refusals), f"model: {path}; schema: {[str(r) for r in refusals]}"


REASONS = {"FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired", "FieldValueDuplicate"}


def test_every_rule_is_well_formed_for_the_api_server() -> None:
    """What apiextensions validates on each x-kubernetes-validations entry besides compiling it."""
    checked = 0
    for path, node in apiserver.schema_nodes(apiserver.root_schema()):
        for rule in node.get("x-kubernetes-validations") or ():
            checked += 1
            where = f"{apiserver.fmt(path)}: {rule['rule']!r}"
            assert set(rule) <= {"rule", "message", "messageExpression", "reason", "fieldPath", "optionalOldSelf"}, where
            assert rule["rule"].strip() and "\n" not in rule["rule"], where
            assert rule.get("message", "x").strip() and "\n" not in rule.get("message", ""), f"{where}: a one-line message"
            assert rule.get("reason", "FieldValueInvalid") in REASONS, where
            if "fieldPath" in rule:  # must name a field that exists below the rule's node
                target: Any = node
                for part in re.findall(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]", rule["fieldPath"]):
                    target = target["items"] if part[1] else (target.get("properties") or {}).get(part[0])
                    assert target is not None, f"{where}: fieldPath {rule['fieldPath']} names no field of the schema"
    assert checked >= 15

"""What the API server does with a VirtualService, by independent implementations.

No API server runs here, so the committed CRD is handed to the implementations the
API server itself relies on, or their closest independent equivalents:
- the CEL rules (`x-kubernetes-validations`) are compiled and evaluated by Google's CEL
  runtime (`cel-expr-python`, the C++ implementation). Each rule is compiled with `self`
  typed as it is at its schema node (objects become protobuf messages built from the
  schema, so a misspelt field or a comparison of a string with an int fails to compile,
  as it does in the API server; int-or-string is `dyn`), and evaluated with `self` as
  the unstructured value (a missing field is an error, `has()` tests presence), which
  is how the API server evaluates rules on custom resources;
- the OpenAPI schema is checked by `jsonschema` (Draft 4, the dialect of OpenAPI v3.0's
  schema object): types, enums, bounds, patterns, required fields. Two things the API
  server adds to the schema are spelled out for it: int-or-string nodes accept exactly
  integers and strings, and unknown fields are refused (kubectl's default, strict field
  validation, since Kubernetes 1.27);
- what the CRD declares beyond JSON Schema is done here, from the CRD, in a few lines:
  defaults (applied before validation, recursively, as the API server does),
  `x-kubernetes-list-type: map` key uniqueness, the served version and kind;
- the object's metadata is checked as the API server checks every object's: a name that
  is a DNS-1123 subdomain, labels and annotations that map strings to strings; it is not
  the CRD's.
Each refusal is (field path, message, layer); paths are written like the model's
(`spec.ports[0].targetPort`).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import yaml
from cel_expr_python import cel
from cel_expr_python.ext import ext_strings
from google.protobuf import descriptor_pb2, descriptor_pool, struct_pb2

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "virtualservices.vsop.dev.yaml"
POOL_CRD_FILE = ROOT / "crds" / "vippools.vsop.dev.yaml"
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# apimachinery's qualifiedNameFmt (label names and values): alphanumeric at both ends, - _ . inside.
QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
PACKAGE = "vsopcrd"

F = descriptor_pb2.FieldDescriptorProto


@dataclass(frozen=True)
class Refusal:
    path: str
    message: str
    layer: str  # apiserver | schema | list-map | cel

    def __str__(self) -> str:
        return f"{self.path}: {self.message} [{self.layer}]"


@cache
def crd(file: Path = CRD_FILE) -> dict[str, Any]:
    """A committed CRD (every function here takes which one; the VirtualService's by default)."""
    return yaml.safe_load(file.read_text())


def version(file: Path = CRD_FILE) -> dict[str, Any]:
    [served] = [v for v in crd(file)["spec"]["versions"] if v.get("served")]
    return served


def root_schema(file: Path = CRD_FILE) -> dict[str, Any]:
    return version(file)["schema"]["openAPIV3Schema"]


def fmt(parts: tuple[Any, ...]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def schema_nodes(schema: dict[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    """Every schema node with its schema path: property names, `[]` for items, `{}` for map values."""
    yield path, schema
    for name, prop in (schema.get("properties") or {}).items():
        yield from schema_nodes(prop, (*path, name))
    if isinstance(schema.get("items"), dict):
        yield from schema_nodes(schema["items"], (*path, "[]"))
    if isinstance(schema.get("additionalProperties"), dict):
        yield from schema_nodes(schema["additionalProperties"], (*path, "{}"))


def instances(value: Any, schema_path: tuple[str, ...], path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """The values of an object at one schema path, each with its field path."""
    if not schema_path:
        yield path, value
        return
    step, rest = schema_path[0], schema_path[1:]
    if step == "[]":
        for index, item in enumerate(value if isinstance(value, list) else []):
            yield from instances(item, rest, (*path, index))
    elif step == "{}":
        for key, item in (value if isinstance(value, dict) else {}).items():
            yield from instances(item, rest, (*path, key))
    elif isinstance(value, dict) and step in value:
        yield from instances(value[step], rest, (*path, step))


# --- defaults -----------------------------------------------------------------------------


def apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """The API server's structural defaulting: missing properties of present objects get their default, recursively."""
    if isinstance(value, dict):
        for name, prop in (schema.get("properties") or {}).items():
            if name not in value and "default" in prop:
                value[name] = copy.deepcopy(prop["default"])
            if name in value:
                value[name] = apply_defaults(value[name], prop)
        if isinstance(schema.get("additionalProperties"), dict):
            for key in list(value):
                if key not in (schema.get("properties") or {}):
                    value[key] = apply_defaults(value[key], schema["additionalProperties"])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(item, schema["items"]) for item in value]
    return value


# --- JSON Schema ---------------------------------------------------------------------------


def as_json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The structural schema as the API server applies it, in plain JSON Schema (Draft 4)."""
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: as_json_schema(prop) for name, prop in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = as_json_schema(value)
        elif not key.startswith("x-kubernetes-"):
            out[key] = value
    if schema.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if "properties" in schema and "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False  # strict field validation: an unknown field is an error, not silently pruned
    if schema.get("nullable"):
        out["type"] = [*([out["type"]] if isinstance(out.get("type"), str) else out.get("type", [])), "null"]
        out.pop("nullable")
    return out


@cache
def validator(file: Path = CRD_FILE) -> jsonschema.Draft4Validator:
    schema = as_json_schema(root_schema(file))
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def schema_refusals(doc: dict[str, Any], file: Path = CRD_FILE) -> list[Refusal]:
    found = []
    for error in validator(file).iter_errors(doc):
        parts = tuple(error.absolute_path)
        if error.validator == "required":  # names the object; the API server names the missing field
            missing = [name for name in error.validator_value if name not in (error.instance or {})]
            found += [Refusal(fmt((*parts, name)), "Required value", "schema") for name in missing]
        elif error.validator == "additionalProperties" and error.validator_value is False:
            known = set(error.schema.get("properties") or {})
            found += [Refusal(fmt((*parts, name)), "unknown field", "schema") for name in error.instance if name not in known]
        else:
            found.append(Refusal(fmt(parts), error.message if len(error.message) < 200 else f"{error.validator} {error.validator_value!r}", "schema"))
    return found


def list_map_refusals(doc: dict[str, Any], file: Path = CRD_FILE) -> list[Refusal]:
    found = []
    for schema_path, node in schema_nodes(root_schema(file)):
        if node.get("x-kubernetes-list-type") not in ("map", "set"):
            continue
        for path, items in instances(doc, schema_path):
            seen: set[Any] = set()
            for index, item in enumerate(items if isinstance(items, list) else []):
                if node["x-kubernetes-list-type"] == "map":
                    key = tuple(repr(item.get(k)) if isinstance(item, dict) else None for k in node["x-kubernetes-list-map-keys"])
                else:
                    key = repr(item)
                if key in seen:
                    found.append(Refusal(fmt((*path, index)), f"Duplicate value: {key}", "list-map"))
                seen.add(key)
    return found


# --- CEL -----------------------------------------------------------------------------------


class ProtoTypes:
    """A protobuf message per object node of the schema, so CEL type-checks `self` as the API server's declarations do."""

    def __init__(self, schema: dict[str, Any]):
        self.pool = descriptor_pool.DescriptorPool()
        self.pool.AddSerializedFile(struct_pb2.DESCRIPTOR.serialized_pb)
        self.file = descriptor_pb2.FileDescriptorProto(name="vsop_crd.proto", package=PACKAGE, syntax="proto2",
                                                       dependency=["google/protobuf/struct.proto"])
        self.names: dict[tuple[str, ...], str] = {}
        self._message(schema, ("Root",), ())
        self.pool.Add(self.file)

    def _message(self, schema: dict[str, Any], name: tuple[str, ...], path: tuple[str, ...]) -> str:
        message = self.file.message_type.add(name="_".join(name))
        full = f".{PACKAGE}.{message.name}"
        self.names[path] = full[1:]
        for number, (field_name, prop) in enumerate((schema.get("properties") or {}).items(), start=1):
            field = message.field.add(name=field_name, number=number, label=F.LABEL_OPTIONAL)
            self._type(field, prop, (*name, field_name), (*path, field_name), message)
        return full

    def _type(self, field: Any, schema: dict[str, Any], name: tuple[str, ...], path: tuple[str, ...], parent: Any) -> None:
        kind = schema.get("type")
        if schema.get("x-kubernetes-int-or-string"):
            field.type, field.type_name = F.TYPE_MESSAGE, ".google.protobuf.Value"  # dyn
        elif kind == "string":
            field.type = F.TYPE_STRING
        elif kind == "integer":
            field.type = F.TYPE_INT64
        elif kind == "number":
            field.type = F.TYPE_DOUBLE
        elif kind == "boolean":
            field.type = F.TYPE_BOOL
        elif kind == "array":
            field.label = F.LABEL_REPEATED
            self._type(field, schema["items"], name, (*path, "[]"), parent)
            field.label = F.LABEL_REPEATED
        elif kind == "object" and isinstance(schema.get("additionalProperties"), dict):
            entry = parent.nested_type.add(name=f"{field.name[0].upper()}{field.name[1:]}Entry")
            entry.options.map_entry = True
            entry.field.add(name="key", number=1, label=F.LABEL_OPTIONAL, type=F.TYPE_STRING)
            value = entry.field.add(name="value", number=2, label=F.LABEL_OPTIONAL)
            self._type(value, schema["additionalProperties"], name, (*path, "{}"), entry)
            field.label, field.type = F.LABEL_REPEATED, F.TYPE_MESSAGE
            field.type_name = f".{PACKAGE}.{parent.name}.{entry.name}"  # every message is top-level: its entries are one level down
        elif kind == "object" and schema.get("properties"):
            field.type, field.type_name = F.TYPE_MESSAGE, self._message(schema, name, path)
        else:  # an object with no declared fields (metadata): a JSON object
            field.type, field.type_name = F.TYPE_MESSAGE, ".google.protobuf.Struct"

    def cel_type(self, schema: dict[str, Any], path: tuple[str, ...]) -> Any:
        """How `self` is declared at a schema node."""
        if schema.get("x-kubernetes-int-or-string"):
            return cel.Type.DYN
        kind = schema.get("type")
        if kind == "object" and path in self.names:
            return cel.Type(self.names[path])
        if kind == "array":
            return cel.Type.List(self.cel_type(schema["items"], (*path, "[]")))
        return {"string": cel.Type.STRING, "integer": cel.Type.INT, "number": cel.Type.DOUBLE, "boolean": cel.Type.BOOL}.get(kind, cel.Type.DYN)


@dataclass(frozen=True)
class Rule:
    schema_path: tuple[str, ...]
    rule: str
    message: str
    field_path: str
    typed: Any  # compiled with `self` declared as at its node
    runtime: Any  # compiled for evaluation on the unstructured value


def extensions() -> list[Any]:
    return [ext_strings.ExtStrings()]  # the API server's environment includes the strings extension library


class CompileError(AssertionError):
    pass


@cache
def rules(file: Path = CRD_FILE) -> tuple[Rule, ...]:
    """Every rule of the committed CRD, compiled."""
    return compile_rules(root_schema(file))


def compile_rules(schema: dict[str, Any]) -> tuple[Rule, ...]:
    """Every rule of a schema, compiled; CompileError names the rule, its node and the compiler's message."""
    types = ProtoTypes(schema)
    dynamic = cel.NewEnv(variables={"self": cel.Type.DYN, "oldSelf": cel.Type.DYN}, extensions=extensions())
    found = []
    for path, node in schema_nodes(schema):
        for item in node.get("x-kubernetes-validations") or ():
            self_type = types.cel_type(node, path)
            env = cel.NewEnv(types.pool, variables={"self": self_type, "oldSelf": self_type}, extensions=extensions())
            try:
                typed = env.compile(item["rule"])
                if typed.return_type() != cel.Type.BOOL:
                    raise RuntimeError(f"returns {typed.return_type().name()}, not bool")
                runtime = dynamic.compile(item["rule"])
            except RuntimeError as exc:
                raise CompileError(f"rule at {fmt(path) or '<root>'} does not compile: {item['rule']!r}: {exc}") from None
            found.append(Rule(path, item["rule"], item.get("message", ""), item.get("fieldPath", ""), typed, runtime))
    return tuple(found)


def cel_refusals(doc: dict[str, Any], file: Path = CRD_FILE) -> list[Refusal]:
    found = []
    for rule in rules(file):
        for path, value in instances(doc, rule.schema_path):
            if rule.rule.count("oldSelf"):
                continue  # transition rules: not evaluated on create
            result = rule.runtime.eval(data={"self": value})
            where = fmt(path) + rule.field_path if rule.field_path else fmt(path)
            if result.type() == cel.Type.ERROR:
                found.append(Refusal(where, f"evaluating {rule.rule!r}: {result.value()}", "cel"))
            elif result.value() is not True:
                found.append(Refusal(where, rule.message, "cel"))
    return found


# --- the whole admission path --------------------------------------------------------------


def admit(doc: dict[str, Any], file: Path = CRD_FILE) -> tuple[dict[str, Any], list[Refusal]]:
    """The object as stored (defaults applied) and the refusals, in the API server's order."""
    group = crd(file)["spec"]["group"]
    served = f"{group}/{version(file)['name']}"
    if doc.get("apiVersion") != served:
        return doc, [Refusal("apiVersion", f"no such resource in {served!r}: {doc.get('apiVersion')!r}", "apiserver")]
    if doc.get("kind") != crd(file)["spec"]["names"]["kind"]:
        return doc, [Refusal("kind", f"kind {doc.get('kind')!r} is not {crd(file)['spec']['names']['kind']!r}", "apiserver")]
    found: list[Refusal] = []
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        return doc, [Refusal("metadata", "must be an object", "apiserver")]
    for field in ("labels", "annotations"):  # ObjectMeta: map[string]string
        for key, value in (meta.get(field) or {}).items():
            if not isinstance(value, str):
                found.append(Refusal(f"metadata.{field}.{key}", "must be a string", "apiserver"))
    for key, value in (meta.get("labels") or {}).items():  # apimachinery's ValidateLabels
        prefix, slash, name = key.rpartition("/")
        if slash and (not prefix or len(prefix) > 253 or not DNS_SUBDOMAIN.match(prefix)) or not (0 < len(name) <= 63 and QUALIFIED_NAME.match(name)):
            found.append(Refusal("metadata.labels", f"{key!r}: name part must consist of alphanumeric characters, '-', '_' or '.'", "apiserver"))
        elif isinstance(value, str) and not (len(value) <= 63 and (value == "" or QUALIFIED_NAME.match(value))):
            found.append(Refusal(f"metadata.labels.{key}", "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.'", "apiserver"))
    name = meta.get("name")
    if not isinstance(name, str) or len(name) > 253 or not DNS_SUBDOMAIN.match(name):
        found.append(Refusal("metadata.name", "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'", "apiserver"))
    stored = apply_defaults(copy.deepcopy(doc), root_schema(file))
    schema = schema_refusals(stored, file) + list_map_refusals(stored, file)
    found += schema
    # The API server skips CEL when the schema already found a value of the wrong type: the rules would see garbage.
    if not any("is not of type" in r.message for r in schema):
        found += cel_refusals(stored, file)
    return stored, found

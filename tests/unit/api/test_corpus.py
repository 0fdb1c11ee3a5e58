"""A corpus of bad and odd inputs, each run through `vsop plan --from-empty` as a user would.

Every case: the files (or stream) given, the exit code, and words the message must
contain. Every case also holds for every input: no traceback, no Python name in what
is printed, and with `-o json` a JSON object on stdout with the same exit code.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from vsop.cli.main import main

HEAD = "apiVersion: vsop.dev/v1alpha1\nkind: VirtualService\n"
SEED: dict[str, Any] = {
    "apiVersion": "vsop.dev/v1alpha1",
    "kind": "VirtualService",
    "metadata": {"name": "web", "namespace": "default"},
    "spec": {"vip": "10.9.0.1", "ports": [{"port": 80, "targetPort": 8080}], "backends": [{"address": "10.0.0.1"}]},
}
GOOD = yaml.safe_dump(SEED, sort_keys=False)


def vs(name: str = "web", meta: dict[str, Any] | None = None, **spec: Any) -> str:
    """A VirtualService as YAML, the seed's spec changed by `spec` (None removes a field)."""
    doc = json.loads(json.dumps(SEED))
    doc["metadata"]["name"] = name
    doc["metadata"].update(meta or {})
    for key, value in spec.items():
        if value is None:
            doc["spec"].pop(key, None)
        else:
            doc["spec"][key] = value
    return yaml.safe_dump(doc, sort_keys=False)


def raw(spec_text: str, name: str = "web") -> str:
    """A VirtualService whose spec is written by hand (for YAML spellings safe_dump would quote)."""
    return f"{HEAD}metadata: {{name: {name}}}\nspec:\n{spec_text}"


SPEC_OK = "  vip: 10.9.0.1\n  backends: [{address: 10.0.0.1}]\n"


def bomb(levels: int) -> str:
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return HEAD + "metadata: {name: boom}\nspec:\n  " + "\n  ".join(lines) + "\n"


LIST = """\
apiVersion: v1
kind: List
items:
- apiVersion: vsop.dev/v1alpha1
  kind: VirtualService
  metadata: {name: l1}
  spec: {vip: 10.9.1.1, ports: [{port: 80}], backends: [{address: 10.0.0.1}]}
- apiVersion: vsop.dev/v1alpha1
  kind: VirtualService
  metadata: {name: l2}
  spec: {vip: 10.9.1.2, ports: [{port: 81}], backends: [{address: 10.0.0.1}]}
"""

JSON_TABS = (
    '{\n\t"apiVersion": "vsop.dev/v1alpha1",\n\t"kind": "VirtualService",\n\t"metadata": {"name": "j"},\n'
    '\t"spec": {\n\t\t"vip": "10.9.0.7",\n\t\t"ports": [{"port": 80}],\n\t\t"backends": [{"address": "10.0.0.1"WEIGHT}]\n\t}\n}\n'
)

# What `vsop get -o yaml` prints: a v1 List whose items carry status.store and whose metadata names the store.
GET_YAML = yaml.safe_dump(
    {"apiVersion": "v1", "kind": "List", "items": [{**SEED, "status": {"store": {"file": "/s/default_web.yaml", "programmed": True, "message": ""}}}],
     "metadata": {"store": "/s", "errors": {"/s/x.yaml": "x.yaml:1: not valid YAML"}}},
    sort_keys=False,
)

# id: (files {name: text or bytes}, paths to pass (default: every file), exit code, words)
Case = tuple[dict[str, Any], list[str] | None, int, list[str]]
CASES: dict[str, Case] = {
    # --- YAML that different readers read differently
    "octal port": ({"a.yaml": raw("  ports: [{port: 0100}]\n" + SPEC_OK)}, None, 2, ["a.yaml:5: VirtualService default/web: spec.ports[0].port: 0100", "octal", "plain decimal"]),
    "leading zero 080": ({"a.yaml": raw("  ports: [{port: 080}]\n" + SPEC_OK)}, None, 2, ["spec.ports[0].port", "leading zero", "plain decimal"]),
    "octal 010": ({"a.yaml": raw("  ports: [{port: 010}]\n" + SPEC_OK)}, None, 2, ["010", "plain decimal"]),
    "sexagesimal port": ({"a.yaml": raw("  ports: [{port: 1:20}]\n" + SPEC_OK)}, None, 2, ["base-60", "plain decimal"]),
    "binary weight": ({"a.yaml": raw("  ports: [{port: 80}]\n  vip: 10.9.0.1\n  backends: [{address: 10.0.0.1, weight: 0b11}]\n")}, None, 2, ["binary", "plain decimal"]),
    "hex port": ({"a.yaml": raw("  ports: [{port: 0x1F}]\n" + SPEC_OK)}, None, 2, ["hexadecimal", "plain decimal"]),
    "underscore port": ({"a.yaml": raw("  ports: [{port: 8_080}]\n" + SPEC_OK)}, None, 2, ["'_'", "plain decimal"]),
    "sexagesimal float": ({"a.yaml": raw("  ports: [{port: 80}]\n" + SPEC_OK + "  persistence: {timeoutSeconds: 1:30.5}\n")}, None, 2, ["base-60"]),
    "yes as boolean": ({"a.yaml": raw("  ports: [{port: 80}]\n  masquerade: yes\n" + SPEC_OK)}, None, 2, ["yes", "true or false"]),
    "off as boolean": ({"a.yaml": raw("  ports: [{port: 80}]\n  suppressARP: off\n" + SPEC_OK)}, None, 2, ["off", "true or false"]),
    # --- tags, even of core types, and merge keys readers disagree on
    "int tag on a quoted port": ({"a.yaml": raw('  ports: [{port: !!int "80"}]\n' + SPEC_OK)}, None, 2, ["spec.ports[0].port", "the YAML tag !!int is not supported"]),
    "str tag on a name": ({"a.yaml": HEAD + "metadata: {name: !!str web}\nspec:\n  ports: [{port: 80}]\n" + SPEC_OK}, None, 2, ["metadata.name", "the YAML tag !!str"]),
    "tag after an anchor": ({"a.yaml": raw("  ports: [{port: &p !!int 80}]\n" + SPEC_OK)}, None, 2, ["the YAML tag !!int"]),
    "one merge key is fine": ({"a.yaml": raw("  ports:\n  - <<: {port: 80}\n    name: http\n" + SPEC_OK)}, None, 0, ["ipvsadm -A -t 10.9.0.1:80"]),
    "two merge keys in one mapping": ({"a.yaml": raw("  ports:\n  - <<: {port: 80}\n    <<: {port: 81}\n" + SPEC_OK)}, None, 2, ["two merge keys", "<<: [*a, *b]"]),
    # --- sizes: refused with the bound, never a crash or a megabyte echoed
    "a number of 5000 digits": ({"a.yaml": raw("  ports: [{port: " + "9" * 5000 + "}]\n" + SPEC_OK)}, None, 2, ["spec.ports[0].port", "5000 digits is out of range"]),
    "a JSON number of 5000 digits": ({"a.json": '{"apiVersion": "vsop.dev/v1alpha1", "kind": "VirtualService", "metadata": {"name": "j"}, "spec": {"ports": [{"port": ' + "9" * 5000 + "}]}}"}, None, 2, ["a.json:1:", "5000 digits is out of range"]),
    "a megabyte key is named, not echoed": ({"a.json": '{"apiVersion": "vsop.dev/v1alpha1", "kind": "VirtualService", "metadata": {"name": "j"}, "spec": {"vip": "10.9.0.1", "ports": [{"port": 80}], "backends": [{"address": "10.0.0.1"}], "' + "k" * 1_000_000 + '": 1}}'}, None, 2, ["(1000005 characters)", "unknown field"]),
    # --- control characters in what is echoed: escaped, one notation
    "escape codes in a name": ({"a.yaml": HEAD + 'metadata: {name: "web\\e]0;owned\\a\\e[2J"}\nspec:\n  ports: [{port: 80}]\n' + SPEC_OK}, None, 2, ["metadata.name", "\\x1b]0;owned\\x07\\x1b[2J"]),
    "NUL and bidi override in a key": ({"a.yaml": raw('  "x\\0y\\u202ez": 1\n  ports: [{port: 80}]\n' + SPEC_OK)}, None, 2, ["x\\x00y\\u202ez", "unknown field"]),
    # --- bytes: line ends, marks, control bytes, file names
    "CRLF line ends": ({"a.yaml": GOOD.replace("\n", "\r\n").encode()}, None, 0, ["ipvsadm -A -t 10.9.0.1:80"]),
    "CRLF JSON": ({"a.json": json.dumps(SEED, indent=1).replace("\n", "\r\n").encode()}, None, 0, ["ipvsadm -A -t 10.9.0.1:80"]),
    "BOM before JSON": ({"a.json": b"\xef\xbb\xbf" + json.dumps(SEED).encode()}, None, 0, ["ipvsadm -A -t 10.9.0.1:80"]),
    "a raw NUL byte": ({"a.yaml": GOOD.encode() + b"# \x00\n"}, None, 2, ["a.yaml", "not valid YAML"]),
    "a raw escape byte in a name": ({"a.yaml": (HEAD + "metadata: {name: web\x1b[2J}\nspec:\n  ports: [{port: 80}]\n" + SPEC_OK).encode()}, None, 2, ["a.yaml", "not valid YAML"]),
    "escape codes in a file name in a folder": ({"d/\x1b]0;x\x07.yaml": raw("  ports: [{port: 80}]\n  bogus: 1\n" + SPEC_OK)}, ["d"], 2, ["\\x1b]0;x\\x07.yaml", "unknown field"]),
    "a file name that is not UTF-8, in a folder": ({"d/caf\udce9.yaml": raw("  ports: [{port: 80}]\n  bogus: 1\n" + SPEC_OK)}, ["d"], 2, ["caf\\udce9.yaml", "unknown field"]),
    "tabs indenting YAML": ({"a.yaml": GOOD.replace("  vip:", "\tvip:")}, None, 2, ["a.yaml", "not valid YAML"]),
    "a megabyte address is cut": ({"a.yaml": raw("  ports: [{port: 80}]\n  vip: " + "a" * 1_000_000 + "\n  backends: [{address: 10.0.0.1}]\n")}, None, 2, ["spec.vip", "aaa... (1000000 characters)'"]),
    "a long unknown key is cut with its length": ({"a.yaml": raw("  " + "k" * 900 + ": 1\n  ports: [{port: 80}]\n" + SPEC_OK)}, None, 2, ["(905 characters)", "unknown field"]),
    # --- Kubernetes' own rules for names, port names and labels
    "a label value with a space": ({"a.yaml": vs(meta={"labels": {"team": "web team"}})}, None, 2, ["metadata.labels.team", "must be a label value"]),
    "a label key with two slashes": ({"a.yaml": vs(meta={"labels": {"a/b/c": "x"}})}, None, 2, ["metadata.labels", "label key 'a/b/c'"]),
    "a node selector value of 64 characters": ({"a.yaml": vs(nodeSelector={"matchLabels": {"zone": "z" * 64}})}, None, 2, ["spec.nodeSelector.matchLabels.zone", "at most 63 characters"]),
    "a node selector key with a space": ({"a.yaml": vs(nodeSelector={"matchExpressions": [{"key": "my zone", "operator": "Exists"}]})}, None, 2, ["spec.nodeSelector.matchExpressions[0].key", "must be a label key"]),
    "prefixed label keys and an empty value are fine": ({"a.yaml": vs(meta={"labels": {"app.kubernetes.io/name": "web", "tier": ""}})}, None, 0, ["ipvsadm -A"]),
    "name with an empty label": ({"a.yaml": vs(name="web..v1")}, None, 2, ["metadata.name", "must be a DNS subdomain name"]),
    "name with a label ending in '-'": ({"a.yaml": vs(name="web-.v1")}, None, 2, ["metadata.name", "must be a DNS subdomain name"]),
    "dotted name is fine": ({"a.yaml": vs(name="web.v1")}, None, 0, ["ipvsadm -A"]),
    "targetPort of digits in quotes": ({"a.yaml": raw('  ports: [{port: 80, targetPort: "8080"}]\n' + SPEC_OK)}, None, 2, ["spec.ports[0].targetPort", "'8080' is a number, not a port name", "without quotes"]),
    "port name of 16 characters": ({"a.yaml": vs(ports=[{"port": 80, "name": "a" * 16}])}, None, 2, ["spec.ports[0].name", "at most 15 characters"]),
    "port name with two hyphens": ({"a.yaml": vs(ports=[{"port": 80, "name": "web--http"}])}, None, 2, ["spec.ports[0].name", "IANA_SVC_NAME"]),
    "port name of digits": ({"a.yaml": vs(ports=[{"port": 80, "name": "8080"}])}, None, 2, ["spec.ports[0].name", "is a number, not a port name"]),
    "one real server written twice": ({"a.yaml": vs(ports=[{"port": 80, "targetPort": 8080}], backends=[{"address": "10.0.0.1", "port": 8080}, {"address": "10.0.0.1", "weight": 3}])}, None, 2, ["spec.backends[1]", "duplicate backend 10.0.0.1, already backends[0]"]),
    "the same address on two ports is two real servers": ({"a.yaml": vs(ports=[{"port": 80, "targetPort": 8080}], backends=[{"address": "10.0.0.1", "port": 8081}, {"address": "10.0.0.1"}])}, None, 0, ["10.0.0.1:8081", "10.0.0.1:8080"]),
    # --- booleans take only true/false (YAML 1.2 core; the API server refuses anything else)
    "y as boolean": ({"a.yaml": raw("  ports: [{port: 80}]\n  suppressARP: y\n" + SPEC_OK)}, None, 2, ["spec.suppressARP", "not text, got 'y'", "true or false"]),
    "n as boolean": ({"a.yaml": raw("  ports: [{port: 80}]\n  masquerade: n\n" + SPEC_OK)}, None, 2, ["spec.masquerade", "not text, got 'n'", "true or false"]),
    "quoted false": ({"a.yaml": raw("  ports: [{port: 80}]\n  masquerade: \"false\"\n" + SPEC_OK)}, None, 2, ["spec.masquerade", "got 'false'", "without quotes"]),
    "zero as boolean": ({"a.yaml": raw("  ports: [{port: 80}]\n  masquerade: 0\n" + SPEC_OK)}, None, 2, ["spec.masquerade: must be true or false, got 0"]),
    "one as boolean": ({"a.yaml": raw("  ports: [{port: 80}]\n  suppressARP: 1\n" + SPEC_OK)}, None, 2, ["spec.suppressARP: must be true or false, got 1"]),
    "quoted yes label is text": ({"a.yaml": vs(nodeSelector={"matchLabels": {"lb": "yes"}})}, ["a.yaml", "--node-label", "lb=yes"], 0, ["ipvsadm -A"]),
    # --- YAML that costs too much or is not a tree
    "alias bomb": ({"a.yaml": bomb(9)}, None, 2, ["too many YAML aliases"]),
    "alias bomb in a folder": ({"d/a.yaml": bomb(9), "d/b.yaml": GOOD}, ["d"], 2, ["too many YAML aliases", "a.yaml"]),
    "recursive alias": ({"a.yaml": HEAD + "metadata: {name: r}\nspec: &s {x: *s}\n"}, None, 2, ["recursive"]),
    "recursive alias in a list": ({"a.yaml": HEAD + "metadata: {name: r}\nspec:\n  ports: &p [*p]\n"}, None, 2, ["recursive"]),
    "20000 nested brackets": ({"a.yaml": HEAD + "metadata: {name: n}\nspec: " + "[" * 20000 + "]" * 20000 + "\n"}, None, 2, ["nested too deeply"]),
    "150 nested brackets": ({"a.yaml": HEAD + "metadata: {name: n}\nspec: " + "[" * 150 + "]" * 150 + "\n"}, None, 2, ["nested more than 100 levels"]),
    "alias to another document": ({"a.yaml": "x-backends: &b [{address: 10.0.0.1}]\n---\n" + raw("  ports: [{port: 80}]\n  vip: 10.9.0.1\n  backends: *b\n")}, None, 2, ["a.yaml:9:", "anchor"]),
    "merge key": ({"a.yaml": HEAD + "metadata: {name: m}\nspec:\n  <<: &d {vip: 10.9.0.1, backends: [{address: 10.0.0.1}]}\n  ports: [{port: 80}]\n"}, None, 0, ["ipvsadm -A -t 10.9.0.1:80"]),
    "merge key own value wins": ({"a.yaml": HEAD + "metadata: {name: m}\nspec:\n  <<: {vip: 10.9.0.1, backends: [{address: 10.0.0.1}], scheduler: wrr}\n  scheduler: sh\n  ports: [{port: 80}]\n"}, None, 0, ["-s sh"]),
    # --- YAML syntax and encodings
    "duplicate key": ({"a.yaml": raw("  ports: [{port: 80}]\n" + SPEC_OK + "  vip: 10.9.0.2\n")}, None, 2, ["a.yaml:8:", "duplicate key 'vip'"]),
    "duplicate key in metadata": ({"a.yaml": HEAD + "metadata: {name: a, name: b}\nspec: {}\n"}, None, 2, ["duplicate key 'name'"]),
    "tab indentation": ({"a.yaml": HEAD + "metadata:\n\tname: t\n"}, None, 2, ["a.yaml:4:", "tab", "spaces"]),
    "tab-indented JSON": ({"a.json": JSON_TABS.replace("WEIGHT", "")}, None, 0, ["ipvsadm -A -t 10.9.0.7:80"]),
    "tab-indented JSON with a typo": ({"a.json": JSON_TABS.replace("WEIGHT", ', "wieght": 2')}, None, 2, ["a.json:8:", "spec.backends[0].wieght", "unknown field"]),
    "JSON duplicate key": ({"a.json": '{"apiVersion": "vsop.dev/v1alpha1", "kind": "VirtualService",\n "kind": "VirtualService"}\n'}, None, 2, ["a.json:2:", "duplicate key 'kind'"]),
    "JSON syntax error": ({"a.json": '{"apiVersion": "vsop.dev/v1alpha1",\n "kind": }\n'}, None, 2, ["a.json:2:", "not valid JSON"]),
    "not UTF-8": ({"a.yaml": (HEAD + "metadata: {name: caf\xe9}\n").encode("latin-1")}, None, 2, ["a.yaml:3:", "not UTF-8", "save the file as UTF-8"]),
    "UTF-16": ({"a.yaml": GOOD.encode("utf-16")}, None, 2, ["a.yaml:1:", "not UTF-8"]),
    "UTF-8 BOM": ({"a.yaml": b"\xef\xbb\xbf" + GOOD.encode()}, None, 0, ["ipvsadm -A"]),
    "control character": ({"a.yaml": HEAD + "metadata: {name: a\x01}\n"}, None, 2, ["a.yaml:3:", "U+0001"]),
    "undefined alias": ({"a.yaml": raw("  ports: *nothing\n" + SPEC_OK)}, None, 2, ["a.yaml:5:", "anchor"]),
    "unknown tag": ({"a.yaml": raw("  ports: !custom [80]\n" + SPEC_OK)}, None, 2, ["a.yaml:5:", "tag !custom", "not supported"]),
    "python tag": ({"a.yaml": raw("  ports: !!python/object:os.system [ls]\n" + SPEC_OK)}, None, 2, ["not supported"]),
    "binary tag": ({"a.yaml": raw("  vip: !!binary aGVsbG8=\n  ports: [{port: 80}]\n  backends: [{address: 10.0.0.1}]\n")}, None, 2, ["!!binary", "not supported"]),
    "set tag": ({"a.yaml": raw("  ports: !!set {80}\n" + SPEC_OK)}, None, 2, ["!!set", "not supported"]),
    "unclosed bracket": ({"a.yaml": raw("  ports: [{port: 80}\n" + SPEC_OK)}, None, 2, ["a.yaml:", "not valid YAML"]),
    "mapping value in a scalar": ({"a.yaml": HEAD + "metadata: name: a\n"}, None, 2, ["a.yaml:3:", "not valid YAML"]),
    "list as a key": ({"a.yaml": HEAD + "metadata: {name: a}\nspec:\n  ? [a, b]\n  : c\n"}, None, 2, ["a.yaml:5:", "plain value"]),
    "null as a key": ({"a.yaml": raw("  ports: [{port: 80}]\n" + SPEC_OK + "  null: x\n")}, None, 2, ["a.yaml:8:", "spec.null", "a key must be text"]),
    "number as a label key": ({"a.yaml": HEAD + "metadata:\n  name: a\n  labels: {1.5: x}\n"}, None, 2, ["metadata.labels.1.5", "a key must be text"]),
    "YAML 1.1 values in a document of another kind": (
        {"a.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\ndata: {enabled: yes, mode: 0644, at: 1:20}\non: push\n---\n" + GOOD},
        None, 0, ["skipped ConfigMap cm", "ipvsadm -A"],
    ),
    "duplicate key in a document of another kind": ({"a.yaml": "kind: Secret\ndata: {a: 1, a: 2}\n---\n" + GOOD}, None, 0, ["skipped Secret"]),
    "number keys in a document of another kind": ({"a.yaml": "1: 2\n---\n" + GOOD}, None, 0, ["skipped a document without kind"]),
    "date timestamp kept as text": ({"a.yaml": vs(meta={"creationTimestamp": "PLACEHOLDER"}).replace("'PLACEHOLDER'", "2024-01-01")}, None, 0, ["ipvsadm -A"]),
    # --- documents
    "document is a list": ({"a.yaml": "- a\n- b\n---\n" + GOOD}, None, 2, ["a.yaml:1:", "must be a mapping"]),
    "document is a word": ({"a.yaml": "hello\n"}, None, 2, ["a.yaml:1:", "must be a mapping"]),
    "empty file next to a good one": ({"a.yaml": "", "b.yaml": GOOD}, None, 0, ["ipvsadm -A"]),
    "only comments next to a good one": ({"a.yaml": "# nothing here\n", "b.yaml": GOOD}, None, 0, ["ipvsadm -A"]),
    "trailing separators": ({"a.yaml": "---\n" + GOOD + "---\n---\n"}, None, 0, ["ipvsadm -A"]),
    "Istio VirtualService skipped": (
        {"a.yaml": "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec: {hosts: [reviews]}\n---\n" + GOOD},
        None, 0, ["skipped networking.istio.io/v1 VirtualService reviews", "ipvsadm -A"],
    ),
    "Service skipped": ({"a.yaml": "apiVersion: v1\nkind: Service\nmetadata: {name: nginx}\n---\n" + GOOD}, None, 0, ["a.yaml:1: skipped Service nginx"]),
    "document without kind skipped": ({"a.yaml": "foo: bar\n---\n" + GOOD}, None, 0, ["skipped a document without kind"]),
    "v1 List expanded": ({"a.yaml": LIST}, None, 0, ["ipvsadm -A -t 10.9.1.1:80", "ipvsadm -A -t 10.9.1.2:81"]),
    "VirtualServiceList expanded": ({"a.yaml": LIST.replace("apiVersion: v1\nkind: List", "apiVersion: vsop.dev/v1alpha1\nkind: VirtualServiceList")}, None, 0, ["10.9.1.2:81"]),
    "List item with a typo": ({"a.yaml": LIST.replace("{port: 81}", "{port: 81, protcol: UDP}")}, None, 2, ["a.yaml:11:", "default/l2", "spec.ports[0].protcol"]),
    "List with other kinds inside": ({"a.yaml": LIST + "- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: cm}\n"}, None, 0, ["skipped ConfigMap cm", "10.9.1.1"]),
    "List items not a list": ({"a.yaml": "apiVersion: v1\nkind: List\nitems: {a: 1}\n---\n" + GOOD}, None, 2, ["items", "must be a list"]),
    "vsop.dev with another kind": ({"a.yaml": "apiVersion: vsop.dev/v1alpha1\nkind: VirtualServer\nmetadata: {name: a}\n"}, None, 2, ["a.yaml:2:", "must be VirtualService"]),
    "wrong version": ({"a.yaml": GOOD.replace("vsop.dev/v1alpha1", "vsop.dev/v2")}, None, 2, ["apiVersion", "vsop.dev/v1alpha1"]),
    "kind without apiVersion": ({"a.yaml": GOOD.replace("apiVersion: vsop.dev/v1alpha1\n", "")}, None, 2, ["apiVersion", "required"]),
    "same file twice": ({"a.yaml": GOOD}, ["a.yaml", "a.yaml"], 0, ["1 VirtualService(s)"]),
    "same file by two spellings": ({"a.yaml": GOOD}, ["a.yaml", "./a.yaml"], 0, ["1 VirtualService(s)"]),
    "same object in two files": ({"a.yaml": GOOD, "b.yaml": GOOD}, None, 2, ["b.yaml:1:", "defined twice", "a.yaml:1"]),
    "/dev/null next to a good one": ({"a.yaml": GOOD}, ["/dev/null", "a.yaml"], 0, ["ipvsadm -A"]),
    "missing file": ({}, ["nope.yaml"], 2, ["nope.yaml", "no such file"]),
    "folder with hidden and other files": ({"d/a.yaml": GOOD, "d/.swp.yaml": "::", "d/notes.txt": "::"}, ["d"], 0, ["ipvsadm -A"]),
    "folder with an upper-case suffix": ({"d/web.YAML": GOOD}, ["d"], 0, ["ipvsadm -A"]),
    # --- harmful values
    "backend is its own VIP": ({"a.yaml": vs(backends=[{"address": "10.9.0.1"}])}, None, 2, ["spec.backends[0].address", "this VirtualService's VIP", "loop"]),
    "backend is another VIP": ({"a.yaml": vs() + "---\n" + vs("db", vip="10.9.0.2", backends=[{"address": "10.9.0.1"}])}, None, 2, ["default/db", "spec.backends[0].address", "VIP of VirtualService default/web"]),
    "loopback backend": ({"a.yaml": vs(backends=[{"address": "127.0.0.1"}])}, None, 2, ["spec.backends[0].address", "loopback"]),
    "IPv6 loopback backend": ({"a.yaml": vs(vip="fd00::1", backends=[{"address": "::1"}])}, None, 2, ["loopback"]),
    "link-local backend": ({"a.yaml": vs(backends=[{"address": "169.254.3.4"}])}, None, 2, ["link-local", "tunnel"]),
    "link-local backend with tunnel": ({"a.yaml": vs(forwarding="tunnel", ports=[{"port": 80}], backends=[{"address": "169.254.3.4"}])}, None, 0, ["ipvsadm -a -t 10.9.0.1:80 -r 169.254.3.4"]),
    "multicast backend": ({"a.yaml": vs(backends=[{"address": "239.1.1.1"}])}, None, 2, ["spec.backends[0].address", "unicast"]),
    "broadcast backend": ({"a.yaml": vs(backends=[{"address": "255.255.255.255"}])}, None, 2, ["broadcast"]),
    "unspecified backend": ({"a.yaml": vs(backends=[{"address": "0.0.0.0"}])}, None, 2, ["unicast"]),
    "class E VIP": ({"a.yaml": vs(vip="240.0.0.1")}, None, 2, ["spec.vip", "class E"]),
    "Exists with values": ({"a.yaml": vs(nodeSelector={"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]})}, None, 2, ["matchExpressions[0].values", "takes no values"]),
    "In without values": ({"a.yaml": vs(nodeSelector={"matchExpressions": [{"key": "a", "operator": "In"}]})}, None, 2, ["matchExpressions[0].values", "at least one value"]),
    "vrrp block without announce": ({"a.yaml": vs(vrrp={"interface": "eth0", "virtualRouterID": 5})}, None, 0, ["warning", "spec.vrrp", "ignored", "announce: vrrp"]),
    "timeout equal to interval": ({"a.yaml": vs(healthCheck={"type": "tcp", "intervalSeconds": 2, "timeoutSeconds": 2})}, None, 0, ["ipvsadm -A"]),
    "timeout above interval": ({"a.yaml": vs(healthCheck={"type": "tcp", "intervalSeconds": 2, "timeoutSeconds": 3})}, None, 2, ["timeoutSeconds", "at most intervalSeconds"]),
    # --- plain words for every field
    "65 ports": ({"a.yaml": vs(ports=[{"port": p} for p in range(1, 66)])}, None, 2, ["at most 64 ports"]),
    "no ports": ({"a.yaml": vs(ports=[])}, None, 2, ["at least 1 port"]),
    "port name upper case": ({"a.yaml": vs(ports=[{"port": 80, "name": "HTTP"}])}, None, 2, ["must be a port name (IANA_SVC_NAME): lower-case letters, digits and single '-'"]),
    "port quoted": ({"a.yaml": vs(ports=[{"port": "80"}])}, None, 2, ["not text", "without quotes"]),
    "port as float": ({"a.yaml": vs(ports=[{"port": 80.5}])}, None, 2, ["whole number"]),
    "port 0": ({"a.yaml": vs(ports=[{"port": 0}])}, None, 2, ["at least 1, got 0"]),
    "VIP as a number": ({"a.yaml": raw("  vip: 167772161\n  ports: [{port: 80}]\n  backends: [{address: 10.0.0.1}]\n")}, None, 2, ["spec.vip", "written as text"]),
    "VIP hostname": ({"a.yaml": vs(vip="lb.example.com")}, None, 2, ["not a hostname"]),
    "metadata a word": ({"a.yaml": HEAD + "metadata: web\nspec: {}\n"}, None, 2, ["metadata", "must be a mapping"]),
    "spec a list": ({"a.yaml": HEAD + "metadata: {name: a}\nspec: [1]\n"}, None, 2, ["spec", "must be a mapping", "got a list"]),
    "label value a number": ({"a.yaml": vs(meta={"labels": {"tier": 1}})}, None, 2, ["metadata.labels.tier", "must be text"]),
    "masquerade maybe": ({"a.yaml": vs(masquerade="maybe")}, None, 2, ["spec.masquerade", "true or false"]),
    "unknown field": ({"a.yaml": vs(schedular="rr")}, None, 2, ["spec.schedular", "unknown field"]),
    "targetPort upper case name": ({"a.yaml": vs(serviceRef={"name": "s"}, ports=[{"port": 80, "targetPort": "HTTP"}])}, None, 2, ["port number", "port name"]),
    "health path without slash": ({"a.yaml": vs(healthCheck={"type": "http", "path": "health"})}, None, 2, ["HTTP path starting with '/'"]),
    "name too long": ({"a.yaml": vs(name="a" * 254)}, None, 2, ["at most 253 characters"]),
    "name empty": ({"a.yaml": vs(name="")}, None, 2, ["metadata.name", "must not be empty"]),
    "vrrp interface": ({"a.yaml": vs(mode="keepalived", announce="vrrp", vrrp={"interface": "eth 0", "virtualRouterID": 5})}, None, 2, ["interface name"]),
    "scheduler": ({"a.yaml": vs(scheduler="roundrobin")}, None, 2, ["must be one of", "'rr'", "got 'roundrobin'"]),
    "null spec": ({"a.yaml": HEAD + "metadata: {name: a}\nspec:\n"}, None, 2, ["spec", "got null"]),
    # --- between objects
    "conflict between files": ({"a.yaml": vs("a"), "b.yaml": vs("b")}, None, 2, ["b.yaml:1:", "default/b", "claimed by VirtualService default/a (", "a.yaml:1)", "which keeps it"]),
    "conflict by age": (
        {"a.yaml": vs("a", meta={"creationTimestamp": "2024-05-01T00:00:00Z"}), "b.yaml": vs("b", meta={"creationTimestamp": "2024-01-01T00:00:00Z"})},
        None, 2, ["a.yaml:1:", "default/a", "default/b (", "created first (2024-01-01T00:00:00Z)"],
    ),
    "IPv6 endpoints bracketed in a conflict": (
        {"a.yaml": vs("a", vip="fd00::1", backends=[{"address": "fd00::10"}]), "b.yaml": vs("b", vip="fd00::1", backends=[{"address": "fd00::10"}])},
        None, 2, ["[fd00::1]:80/TCP is already claimed by VirtualService default/a"],
    ),
    # --- what a server sets is ignored, as kubectl apply's server ignores it: get -o yaml is input
    "vsop get -o yaml is input": ({"a.yaml": GET_YAML}, None, 0, ["ipvsadm -A -t 10.9.0.1:80"]),
    "kubectl get -o yaml is input": ({"a.yaml": vs(meta={"uid": "0b2c", "resourceVersion": "4711", "generation": 2, "managedFields": [{"manager": "kubectl"}]}).rstrip() + "\nstatus: {conditions: [{type: Ready, status: 'True'}]}\n"}, None, 0, ["ipvsadm -A"]),
    "a status of any shape is ignored": ({"a.yaml": GOOD + "status: whatever a server wrote\n"}, None, 0, ["ipvsadm -A"]),
    "a server field in spec is still refused": ({"a.yaml": vs(uid="0b2c")}, None, 2, ["spec.uid", "unknown field"]),
    "nodeSelector excludes": ({"a.yaml": vs(nodeSelector={"matchLabels": {"lb": "yes"}})}, ["a.yaml", "--node-name", "n1"], 0, ["Nothing to do", "not for node n1", "nodeSelector"]),
}

# What a message must never show: Python's own words.
PYTHON = re.compile(
    r"Traceback|NoneType|<class|datetime\.|pydantic|codec|Input should|after validation|valid dictionary|"
    r"should match pattern|\^\[|#x[0-9a-f]|Value error|\btuple\b|\bdict\b|'str'|'int'|Exception|Error\b|\bTrue\b|\bFalse\b|\bNone\b"
)


def write(tmp_path: Path, files: dict[str, Any]) -> None:
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("files", "paths", "code", "words"), CASES.values(), ids=CASES.keys())
def test_corpus(
    files: dict[str, Any], paths: list[str] | None, code: int, words: list[str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    write(tmp_path, files)
    monkeypatch.chdir(tmp_path)
    given = paths if paths is not None else sorted(files)
    args: list[str] = ["plan", "--from-empty"]
    for item in given:
        if item.startswith("--"):
            args.append(item)
        elif args[-1] in ("--node-name", "--node-label"):
            args.append(item)
        else:
            args += ["-f", item]
    exit_code, out, err = run(args, capsys)
    text = out + err
    assert exit_code == code, text
    for word in words:
        assert word in text, f"{word!r} not in:\n{text}"
    assert not PYTHON.search(err), err
    # Whatever the input held, what is echoed is escaped and bounded.
    assert all(ch.isprintable() or ch in "\n\t" for ch in err), repr(err[:500])
    assert max((len(line) for line in err.splitlines()), default=0) <= 2000, len(err)
    if code != 0:
        json_code, json_out, json_err = run(args + ["-o", "json"], capsys)
        doc = json.loads(json_out)
        assert json_code == code and doc["exitCode"] == code
        assert all(not PYTHON.search(p["message"]) for p in doc["problems"]), doc
        assert "Traceback" not in json_err


def test_corpus_is_big_enough() -> None:
    assert len(CASES) + len(STREAM_CASES) >= 70


def _stdin(data: bytes | None) -> Callable[[pytest.MonkeyPatch], None]:
    def install(monkeypatch: pytest.MonkeyPatch) -> None:
        if data is None:
            monkeypatch.setattr(sys, "stdin", None)
        else:
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))

    return install


STREAM_CASES = {
    "stdin": (_stdin(GOOD.encode()), 0, ["ipvsadm -A"]),
    "stdin closed": (_stdin(None), 2, ["standard input", "closed"]),
    "stdin not UTF-8": (_stdin(b"apiVersion: v1\nkind: \xff\n"), 2, ["-:2:", "not UTF-8"]),
}


@pytest.mark.parametrize(("install", "code", "words"), STREAM_CASES.values(), ids=STREAM_CASES.keys())
def test_stdin(install: Callable[[pytest.MonkeyPatch], None], code: int, words: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch)
    exit_code, out, err = run(["plan", "--from-empty", "-f", "-"], capsys)
    assert exit_code == code, out + err
    assert all(word in out + err for word in words), out + err
    assert not PYTHON.search(err), err


def test_fifo_and_dev_fd(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "w") as handle:
            handle.write(GOOD)

    writer = threading.Thread(target=feed)
    writer.start()
    code, out, err = run(["plan", "--from-empty", "-f", str(fifo)], capsys)
    writer.join(timeout=10)
    assert code == 0 and "ipvsadm -A" in out, err
    read_end, write_end = os.pipe()
    os.write(write_end, GOOD.encode())
    os.close(write_end)
    try:
        code, out, err = run(["plan", "--from-empty", "-f", f"/dev/fd/{read_end}"], capsys)
    finally:
        os.close(read_end)
    assert code == 0 and "ipvsadm -A" in out, err


def test_permission_denied_is_invalid_input_naming_the_path(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests run as root, which reads any file: make open() refuse as it would for a user.
    secret = tmp_path / "secret.yaml"
    secret.write_text(GOOD)
    import vsop.api.manifests

    real_open = open

    def refusing(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path) == str(secret):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(vsop.api.manifests, "open", refusing, raising=False)
    for extra in ([], ["-o", "json"]):
        code, out, err = run(["plan", "--from-empty", "-f", str(secret), *extra], capsys)
        assert code == 2
        assert f"{secret}: cannot read: permission denied" in (out + err).replace("\\/", "/")
        assert "CAP_NET_ADMIN" not in out + err


def test_unreadable_folder_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    import vsop.api.manifests

    def refusing_walk(top: Any, onerror: Any = None, **kwargs: Any) -> Any:
        onerror(PermissionError(13, "Permission denied", str(top)))
        return iter(())

    monkeypatch.setattr(vsop.api.manifests.os, "walk", refusing_walk)
    code, out, err = run(["plan", "--from-empty", "-f", str(folder)], capsys)
    assert code == 2 and f"{folder}: cannot list the folder: permission denied" in err


def test_no_virtualservice_is_an_empty_result_not_an_error(tmp_path: Path) -> None:
    """Callers decide what an input without VirtualServices means; the loader reports what it saw."""
    from vsop.api.manifests import load_paths

    (tmp_path / "svc.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata: {name: nginx}\n")
    (tmp_path / "empty.yaml").write_text("")
    loaded = load_paths([tmp_path, "/dev/null"])
    assert loaded.services == [] and loaded.skipped == [f"{tmp_path / 'svc.yaml'}:1: skipped Service nginx"]
    assert loaded.files == [str(tmp_path / "empty.yaml"), str(tmp_path / "svc.yaml"), "/dev/null"]


def test_without_libyaml_the_same_answers_and_a_warning(tmp_path: Path) -> None:
    """PyYAML built without libyaml: the pure-Python parser gives the same verdicts, with a warning."""
    import subprocess

    (tmp_path / "good.yaml").write_text(GOOD)
    (tmp_path / "bomb.yaml").write_text(bomb(9))
    (tmp_path / "deep.yaml").write_text(HEAD + "metadata: {name: n}\nspec: " + "[" * 20000 + "]" * 20000 + "\n")
    (tmp_path / "octal.yaml").write_text(raw("  ports: [{port: 0100}]\n" + SPEC_OK))
    script = (
        "import sys, yaml\n"
        "del yaml.CSafeLoader\n"
        "from vsop.cli.main import main\n"
        "sys.exit(main(['plan', '--from-empty', '-f', sys.argv[1]]))\n"
    )
    expected = {"good.yaml": (0, "about 10x slower"), "bomb.yaml": (2, "too many YAML aliases"),
                "deep.yaml": (2, "nested too deeply"), "octal.yaml": (2, "octal")}
    for name, (code, words) in expected.items():
        done = subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], capture_output=True, text=True, timeout=60)
        assert done.returncode == code, done.stderr
        assert words in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_input_past_the_size_bound_is_refused_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from vsop.api import manifests

    monkeypatch.setattr(manifests, "MAX_INPUT_BYTES", 1024)
    (tmp_path / "big.yaml").write_text(GOOD + "#" * 2048 + "\n")
    code, out, err = run(["plan", "--from-empty", "-f", str(tmp_path / "big.yaml")], capsys)
    assert code == 2 and f"{tmp_path / 'big.yaml'}: too large: more than" in err, err
    code, out, err = run(["plan", "--from-empty", "-f", "/dev/zero"], capsys)  # an endless input ends at the bound
    assert code == 2 and "/dev/zero: too large" in err, err

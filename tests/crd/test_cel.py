"""The CRD's CEL rules, compiled and evaluated by Google's CEL runtime, agree with the model on the whole validation corpus.

The corpus is the model's own (tests/unit/api/test_validation.py: GOOD and BAD), plus the
shipped examples. For every object the API server's verdict (schema + list-map keys +
CEL, defaults applied first; tests/crd/apiserver.py) must equal the model's: accepted,
or refused for the same field (the field itself, or the list holding the offending
item, since a rule's fieldPath cannot name the failing index). MODEL_ONLY lists the
checks only the model makes, each with the reason the CRD cannot; for those the CRD
must still accept, so the list cannot go stale. BETWEEN_OBJECTS lists the corpus cases
refused only as a set (conflicts, a backend that is another object's VIP): each object
alone passes both.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from cel_expr_python import cel

from tests.crd import apiserver
from tests.crd.cost import unbounded_enclosures, unbounded_walks
from tests.conftest import SEED
from tests.unit.api.test_validation import BAD, GOOD
from vsop.api.errors import InvalidInput
from vsop.api.model import parse_virtual_service

ROOT = Path(__file__).resolve().parents[2]

# Checks only the model makes, and why the CRD cannot.
MODEL_ONLY: dict[str, str] = {
    "duplicate backend": (
        "a backend is (address, port) with port optional and no static default, so the list cannot be a list-map keyed by "
        "both; a CEL pairwise comparison over 1024 backends is quadratic and over the API server's cost budget"
    ),
}


def examples() -> dict[str, dict[str, Any]]:
    found = {}
    for path in [ROOT / "examples" / "seed.yaml", *sorted((ROOT / "examples" / "k8s").glob("*.yaml"))]:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "VirtualService":
                found[f"{path.name}:{doc['metadata']['name']}"] = doc
    return found


def same_field(crd_path: str, model_path: str) -> bool:
    return crd_path == model_path or model_path.startswith(crd_path + "[")


def test_every_rule_compiles_with_self_typed_as_at_its_node() -> None:
    rules = apiserver.rules()  # raises CompileError naming the rule and the compiler's message
    assert len(rules) == sum(len(n.get("x-kubernetes-validations") or ()) for _, n in apiserver.schema_nodes(apiserver.root_schema()))
    assert {apiserver.fmt(tuple(p for p in r.schema_path)) for r in rules} >= {"spec", "spec.healthCheck"}


def test_a_rule_that_does_not_type_check_is_refused_with_the_rule_and_the_error() -> None:
    """The typed environment is what makes compile failures visible: a misspelt field or a string compared with an int."""
    types = apiserver.ProtoTypes(apiserver.root_schema())
    spec = types.cel_type(apiserver.root_schema()["properties"]["spec"], ("spec",))
    env = cel.NewEnv(types.pool, variables={"self": spec}, extensions=apiserver.extensions())
    assert env.compile("self.ports.all(p, p.port > 0)").return_type() == cel.Type.BOOL
    for wrong, words in (("self.portz.size() > 0", "undefined field 'portz'"), ("self.vip > 3", "no matching overload"),
                         ("self.ports.all(p, p.protocol == 6)", "no matching overload"), ("self.ports.all(p, ", "Syntax error")):
        with pytest.raises(RuntimeError, match=words):
            env.compile(wrong)


def test_a_rule_that_fails_to_compile_fails_with_the_rule_and_the_error() -> None:
    schema = copy.deepcopy(apiserver.root_schema())
    schema["properties"]["spec"]["properties"]["healthCheck"]["x-kubernetes-validations"].append(
        {"rule": "self.intervalSecond > 0", "message": "typo"})
    with pytest.raises(apiserver.CompileError) as caught:
        apiserver.compile_rules(schema)
    text = str(caught.value)
    assert "spec.healthCheck" in text and "'self.intervalSecond > 0'" in text and "undefined field 'intervalSecond'" in text


@pytest.mark.parametrize("doc", GOOD.values(), ids=GOOD.keys())
def test_good_objects_are_admitted(doc: dict[str, Any]) -> None:
    parse_virtual_service(doc)
    stored, refusals = apiserver.admit(doc)
    assert refusals == [], [str(r) for r in refusals]
    parse_virtual_service(stored)  # what the API server stores (defaults filled in) is still valid for the model


@pytest.mark.parametrize("doc", examples().values(), ids=examples().keys())
def test_shipped_examples_are_admitted(doc: dict[str, Any]) -> None:
    parse_virtual_service(doc)
    assert apiserver.admit(doc)[1] == []


@pytest.mark.parametrize(("name", "doc", "path"), [(n, d, p) for n, (d, p, _) in BAD.items()], ids=BAD.keys())
def test_bad_objects_are_refused_for_the_same_field(name: str, doc: dict[str, Any], path: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_virtual_service(doc)
    assert any(e.path == path for e in caught.value.errors)
    refusals = apiserver.admit(doc)[1]
    if name in MODEL_ONLY:
        assert refusals == [], f"the CRD now refuses {name!r} ({[str(r) for r in refusals]}): remove it from MODEL_ONLY"
        return
    assert refusals, f"the model refuses {path} but the API server would admit it: {caught.value.errors[0]}"
    assert any(same_field(r.path, path) for r in refusals), f"model: {path}; API server: {[str(r) for r in refusals]}"


def test_model_only_checks_name_corpus_cases() -> None:
    assert set(MODEL_ONLY) <= set(BAD), "every model-only check is a case of the corpus"


def test_no_rule_walks_an_unbounded_list_or_string() -> None:
    problems = []
    for path, node in apiserver.schema_nodes(apiserver.root_schema()):
        for item in node.get("x-kubernetes-validations") or ():
            for walk in unbounded_walks(item["rule"], node):
                problems.append(f"{apiserver.fmt(path)}: {item['rule']!r} walks {walk}")
            for enclosure in unbounded_enclosures(path, apiserver.root_schema()):
                problems.append(f"{apiserver.fmt(path)}: {item['rule']!r} runs once per item of {enclosure}")
    assert problems == [], "the API server's cost estimate needs these bounded:\n" + "\n".join(problems)


def test_the_walk_finder_sees_what_a_rule_iterates() -> None:
    """The check above can fail: unbounded walks are found through self, comprehension variables and indexes."""
    spec = apiserver.root_schema()["properties"]["spec"]
    unbounded = {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "string"}},
                                                  "names": {"type": "array", "maxItems": 4, "items": {"type": "string"}},
                                                  "labels": {"type": "object", "additionalProperties": {"type": "string"}}}}
    assert unbounded_walks("self.items.all(i, i != '')", unbounded) == ["self.items (no maxItems)"]
    assert unbounded_walks("self.names.all(n, n.startsWith('a'))", unbounded) == ["n (no maxLength)"]
    assert unbounded_walks("size(self.names[0]) < 3 && self.labels.all(k, k.contains('x')) && self.names[1].matches('y')", unbounded) == [
        "self.labels (no maxProperties)", "k (no maxLength)", "self.names[1] (no maxLength)"]
    assert unbounded_enclosures(("items", "[]"), unbounded) == ["items (no maxItems)"]
    assert unbounded_enclosures(("names", "[]"), unbounded) == []
    assert unbounded_enclosures(("labels", "{}"), unbounded) == ["labels (no maxProperties)"]
    assert unbounded_walks("self.ports.all(p, self.ports.filter(q, q.port == p.port).size() == 1)", spec) == []


# Spellings around every address rule: special ranges in IPv4 and in several IPv6 spellings, and their neighbours.
ADDRESSES = [
    "10.0.0.1", "169.254.11.2", "0.0.0.0", "0.0.0.1", "127.0.0.1", "127.255.255.254", "126.255.255.255", "128.0.0.1",
    "223.255.255.255", "224.0.0.1", "239.255.255.255", "240.0.0.1", "255.255.255.255", "255.255.255.254",
    "010.0.0.1", "10.0.0.01", "256.0.0.1", "1.2.3", "1.2.3.4.5",
    "::", "0::0", "0:0:0:0:0:0:0:0", "::1", "::0001", "0:0:0:0:0:0:0:1", "::2", "1::1", "::1:0",
    "fe80::1", "FE80::1", "febf::1", "fec0::1", "fe8::1", "fe80:0:0:0:0:0:0:1",
    "ff02::1", "FF05::2", "ff::1", "f00::1", "fd00::11", "2001:db8::1", "2001:DB8:0:0:0:0:0:1",
    "::ffff:10.0.0.1", "::FFFF:127.0.0.1", "0:0:0:0:0:ffff:a00:1", "0::ffff:a00:1", "::ffff:1", "::ffff:0:1:2", "::fffe:10.0.0.1",
    "::10.0.0.1", "64:ff9b::10.0.0.1",
]


def model_refuses(doc: dict[str, Any], path: str) -> bool:
    try:
        parse_virtual_service(doc)
    except InvalidInput as exc:
        return any(e.path == path for e in exc.errors)
    return False


@pytest.mark.parametrize("address", ADDRESSES)
def test_address_rules_agree_with_the_model(address: str) -> None:
    """VIP and backend address checks are the same on both sides for every spelling above."""
    family_backend = "fd00::1:2" if ":" in address else "192.168.2.111"
    cases = {
        "spec.vip": {**SEED, "spec": {**SEED["spec"], "vip": address, "backends": [{"address": family_backend}]}},
        "spec.backends[0].address": {**SEED, "spec": {**SEED["spec"], "vip": "fd00::11" if ":" in address else "169.254.11.2",
                                                      "backends": [{"address": address}]}},
    }
    for path, doc in cases.items():
        model = model_refuses(doc, path)
        refusals = [r for r in apiserver.admit(doc)[1] if same_field(r.path, path)]
        assert bool(refusals) == model, f"{address} at {path}: model {'refuses' if model else 'accepts'}, API server {[str(r) for r in refusals] or 'accepts'}"


def cli_corpus() -> dict[str, dict[str, Any]]:
    """The single VirtualServices of tests/unit/api/test_corpus.py that any YAML reader reads alike (its YAML-level cases are the loader's)."""
    from tests.unit.api.test_corpus import CASES

    found = {}
    for name, (files, paths, _code, _words) in CASES.items():
        if len(files) != 1 or paths is not None:
            continue
        [text] = files.values()
        if isinstance(text, bytes) or "&" in text or len(text) > 10_000:
            continue  # aliases (bombs), encodings and depth are the loader's concern; PyYAML would expand them
        try:
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
        except (yaml.YAMLError, UnicodeDecodeError, ValueError, RecursionError):
            continue
        if len(docs) == 1 and isinstance(docs[0], dict) and docs[0].get("kind") == "VirtualService" and isinstance(docs[0].get("spec"), dict):
            found[name] = docs[0]
    return found


CLI_CORPUS = cli_corpus()


def test_the_cli_corpus_is_used() -> None:
    assert len(CLI_CORPUS) >= 25 and {"class E VIP", "In without values", "link-local backend"} <= set(CLI_CORPUS)


@pytest.mark.parametrize("doc", CLI_CORPUS.values(), ids=CLI_CORPUS.keys())
def test_cli_corpus_verdicts_agree(doc: dict[str, Any]) -> None:
    try:
        parse_virtual_service(doc)
        model: list[str] = []
        reasons: list[str] = []
    except InvalidInput as exc:
        model = [e.path for e in exc.errors]
        reasons = [e.reason for e in exc.errors]
    refusals = apiserver.admit(doc)[1]
    if reasons and all(any(reason.startswith(check) for check in MODEL_ONLY) for reason in reasons):
        assert refusals == [], [str(r) for r in refusals]  # a check only the model makes (MODEL_ONLY says why)
        return
    if not model:
        assert refusals == [], [str(r) for r in refusals]
    else:
        assert any(same_field(r.path, path) for r in refusals for path in model), f"model: {model}; API server: {[str(r) for r in refusals]}"


BOUNDS = {
    "33 match expressions": ({"matchExpressions": [{"key": f"k{i}", "operator": "Exists"} for i in range(33)]}, "spec.nodeSelector.matchExpressions"),
    "65 values": ({"matchExpressions": [{"key": "k", "operator": "In", "values": [f"v{i}" for i in range(65)]}]}, "spec.nodeSelector.matchExpressions[0].values"),
    "a 64-character value": ({"matchExpressions": [{"key": "k", "operator": "In", "values": ["v" * 64]}]}, "spec.nodeSelector.matchExpressions[0].values[0]"),
}


@pytest.mark.parametrize(("selector", "path"), BOUNDS.values(), ids=BOUNDS.keys())
def test_the_bounds_rules_need_are_the_models_too(selector: dict[str, Any], path: str) -> None:
    """maxItems/maxLength added for the cost estimate refuse on both sides, and just inside them both accept."""
    doc = {**SEED, "spec": {**SEED["spec"], "nodeSelector": selector}}
    assert model_refuses(doc, path)
    assert any(r.path == path for r in apiserver.admit(doc)[1])
    inside = {**SEED, "spec": {**SEED["spec"], "nodeSelector": {"matchExpressions": [
        {"key": f"k{i}", "operator": "In", "values": ["v" * 63] * 64} for i in range(32)]}}}
    parse_virtual_service(inside)
    assert apiserver.admit(inside)[1] == []


# Checks between objects: each object alone is valid, so no CRD (which sees one object) can refuse it.
# The agents and the controller make them and report them in status (Conflict, and the backend's VIPRefused).
BETWEEN_OBJECTS: dict[str, str] = {
    "conflict between files": "two objects claim one VIP:port/protocol: the older keeps it (controller: Conflict condition)",
    "conflict by age": "the same, decided by creationTimestamp",
    "backend is another VIP": "a real server that is another object's VIP would loop through IPVS",
    "same object in two files": "one namespace/name twice is a file-level error; the API server stores one object per name",
}


@pytest.mark.parametrize("name", BETWEEN_OBJECTS, ids=BETWEEN_OBJECTS.keys())
def test_checks_between_objects_pass_each_object_alone(name: str) -> None:
    from tests.unit.api.test_corpus import CASES

    files, _paths, code, _words = CASES[name]
    assert code == 2, "the model refuses the set"
    docs = [d for text in files.values() for d in yaml.safe_load_all(text) if d]
    assert len(docs) >= 2
    for doc in docs:
        parse_virtual_service(doc)
        assert apiserver.admit(doc)[1] == []

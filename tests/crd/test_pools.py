"""The VipPool CRD (crds/vippools.vsop.dev.yaml) agrees with the model on its corpus, by the API server's own means.

The same pattern as tests/crd/test_cel.py for VirtualServices: every pool the model
accepts is admitted (schema, list types, CEL compiled with `self` typed, defaults applied),
every pool it refuses is refused for the same field, except the checks in MODEL_ONLY, which
the CRD must then accept (so the list cannot go stale). And the address spellings around
every rule get the same verdict on both sides.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.crd import apiserver
from tests.crd.test_cel import same_field
from tests.unit.api.test_pools import BAD, GOOD, pool
from vsop.api.crd import vip_pool_crd, vip_pool_crd_yaml
from vsop.api.errors import InvalidInput
from vsop.api.pools import parse_vip_pool

FILE = apiserver.POOL_CRD_FILE

# Address arithmetic CEL cannot do here: the API server's CEL has cidr()/ip() only since
# Kubernetes 1.31 (vsop supports older ones), and RE2 cannot compare two numbers.
ARITHMETIC = "needs address arithmetic (host bits, order of two addresses, IPv6 spelling), which RE2 cannot express"
MODEL_ONLY: dict[str, str] = {"host bits": ARITHMETIC, "v6 host bits": ARITHMETIC, "backwards range": ARITHMETIC}


def test_the_committed_pool_crd_is_the_generated_one() -> None:
    assert FILE.read_text() == vip_pool_crd_yaml() and apiserver.crd(FILE) == vip_pool_crd()


def test_every_rule_compiles_and_every_node_is_structural() -> None:
    assert len(apiserver.rules(FILE)) == sum(len(n.get("x-kubernetes-validations") or ()) for _, n in apiserver.schema_nodes(apiserver.root_schema(FILE)))
    for path, node in apiserver.schema_nodes(apiserver.root_schema(FILE)):
        assert "type" in node, apiserver.fmt(path)
        assert not {"anyOf", "oneOf", "allOf", "$ref"} & set(node), apiserver.fmt(path)
        if node.get("x-kubernetes-list-type") == "set":
            assert node["items"]["type"] in ("string", "integer"), "a set holds scalars"


@pytest.mark.parametrize("doc", GOOD.values(), ids=GOOD.keys())
def test_good_pools_are_admitted(doc: dict[str, Any]) -> None:
    stored, refusals = apiserver.admit(doc, FILE)
    assert refusals == [], [str(r) for r in refusals]
    parse_vip_pool(stored)  # defaults filled in: still valid for the model


@pytest.mark.parametrize(("name", "doc", "path"), [(n, d, p) for n, (d, p, _) in BAD.items()], ids=BAD.keys())
def test_bad_pools_are_refused_for_the_same_field(name: str, doc: dict[str, Any], path: str) -> None:
    with pytest.raises(InvalidInput):
        parse_vip_pool(doc)
    refusals = apiserver.admit(doc, FILE)[1]
    if name in MODEL_ONLY:
        assert refusals == [], f"the CRD now refuses {name!r} ({[str(r) for r in refusals]}): remove it from MODEL_ONLY"
        return
    assert any(same_field(r.path, path) for r in refusals), f"model: {path}; API server: {[str(r) for r in refusals]}"


def test_model_only_checks_name_corpus_cases() -> None:
    assert set(MODEL_ONLY) <= set(BAD)


SPELLINGS = [
    "10.0.0.0/8", "10.0.0.1", "10.0.0.1/32", "10.0.0.0/0", "0.0.0.0/0", "10.0.0.1-10.0.0.9", "10.0.0.1/33", "10.0.0.01",
    "256.0.0.0/8", "1.2.3", "1.2.3.4.5", "10.0.0.1-", "-10.0.0.1", "10.0.0.1/", "10.0.0.1/08",
    "fd00::/8", "fd00::1", "fd00::/128", "fd00::/129", "::/0", "fd00::1-fd00::9", "fd00::1-10.0.0.1", "10.0.0.1-fd00::1",
    "2001:DB8::/32", "fd00::/064", "fd00::1/64", "fd00:::1", "fd00::1::2-fd00::3",
]
# Spellings the model refuses and the CRD cannot see (host bits, IPv6 text beyond the pattern).
ARITHMETIC_ONLY = {"10.0.0.0/0", "fd00::1/64", "fd00:::1", "fd00::1::2-fd00::3"}


@pytest.mark.parametrize("entry", SPELLINGS)
def test_address_entries_agree(entry: str) -> None:
    doc = pool(addresses=[entry])
    try:
        parse_vip_pool(doc)
        model = False
    except InvalidInput:
        model = True
    crd = any(same_field(r.path, "spec.addresses[0]") for r in apiserver.admit(doc, FILE)[1])
    if entry in ARITHMETIC_ONLY:
        assert model and not crd, f"{entry}: model {model}, CRD {crd}: update ARITHMETIC_ONLY"
    else:
        assert crd == model, f"{entry}: model {'refuses' if model else 'accepts'}, CRD {'refuses' if crd else 'accepts'}"

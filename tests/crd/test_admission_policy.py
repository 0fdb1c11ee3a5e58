"""deploy/admission-policy.yaml, evaluated by Google's CEL runtime as the API server evaluates it.

A node's agent may write its own NodeReport only: every agent shares the vsop-agent
ServiceAccount and RBAC cannot name "this node's report", so the policy tells nodes apart
by the node its pod-bound token names (`authentication.kubernetes.io/node-name` in the
request's user extra). The evaluation follows ValidatingAdmissionPolicy's order: the
match constraints (resource, operation), the match conditions (false: not this policy's
request, admitted), the variables, then each validation in order (false or an evaluation
error: refused with its message; failurePolicy Fail).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from cel_expr_python import cel

from tests.crd import apiserver

ROOT = Path(__file__).resolve().parents[2]
AGENT = "system:serviceaccount:vsop-system:vsop-agent"
CONTROLLER = "system:serviceaccount:vsop-system:vsop-controller"
NODE_NAME = "authentication.kubernetes.io/node-name"


def documents() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all((ROOT / "deploy" / "admission-policy.yaml").read_text()) if doc}


def compile(expression: str) -> Any:
    env = cel.NewEnv(
        variables={name: cel.Type.DYN for name in ("request", "object", "oldObject", "variables", "params", "namespaceObject")},
        extensions=apiserver.extensions(),
    )
    return env.compile(expression)


def evaluate(expression: str, data: dict[str, Any]) -> Any:
    result = compile(expression).eval(data=data)
    if result.type() == cel.Type.ERROR:
        raise RuntimeError(f"{expression!r}: {result.value()}")
    return result.value()


def admission(operation: str, name: str, username: str, extra: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """What the API server hands a policy for a NodeReport write (the parts the policy may read)."""
    report = {"apiVersion": "vsop.dev/v1alpha1", "kind": "NodeReport", "metadata": {"name": name}, "spec": {}}
    user: dict[str, Any] = {"username": username, "groups": ["system:serviceaccounts", "system:authenticated"]}
    if extra is not None:
        user["extra"] = extra
    request = {
        "operation": operation, "name": name, "namespace": "",
        "kind": {"group": "vsop.dev", "version": "v1alpha1", "kind": "NodeReport"},
        "resource": {"group": "vsop.dev", "version": "v1alpha1", "resource": "nodereports"},
        "userInfo": user,
    }
    return {
        "request": request,
        "object": None if operation == "DELETE" else report,
        "oldObject": None if operation == "CREATE" else report,
    }


def admit(data: dict[str, Any]) -> tuple[bool, str]:
    """(allowed, message): the policy as the API server applies it, with its binding's actions."""
    docs = documents()
    policy, binding = docs["ValidatingAdmissionPolicy"]["spec"], docs["ValidatingAdmissionPolicyBinding"]["spec"]
    assert binding["policyName"] == docs["ValidatingAdmissionPolicy"]["metadata"]["name"] and binding["validationActions"] == ["Deny"]
    assert policy["failurePolicy"] == "Fail"
    request = data["request"]
    matched = any(
        request["resource"]["group"] in rule["apiGroups"] and request["resource"]["resource"] in rule["resources"]
        and request["operation"] in rule["operations"]
        for rule in policy["matchConstraints"]["resourceRules"]
    )
    if not matched:
        return True, "not matched"
    for condition in policy.get("matchConditions", ()):
        if evaluate(condition["expression"], data) is not True:
            return True, f"not matched: {condition['name']}"
    variables: dict[str, Any] = {}
    for variable in policy.get("variables", ()):
        variables[variable["name"]] = evaluate(variable["expression"], {**data, "variables": variables})
    scope = {**data, "variables": variables}
    for validation in policy["validations"]:
        try:
            ok = evaluate(validation["expression"], scope)
        except RuntimeError as exc:
            return False, f"evaluation failed (failurePolicy Fail): {exc}"
        if ok is not True:
            if "messageExpression" in validation:
                return False, evaluate(validation["messageExpression"], scope)
            return False, " ".join(validation["message"].split())
    return True, "validated"


def test_every_expression_compiles_to_what_its_place_needs() -> None:
    policy = documents()["ValidatingAdmissionPolicy"]["spec"]
    for item in [*policy["matchConditions"], *policy["validations"]]:
        assert compile(item["expression"]).return_type() in (cel.Type.BOOL, cel.Type.DYN), item
    for item in policy["validations"]:
        if "messageExpression" in item:
            assert compile(item["messageExpression"]).return_type() in (cel.Type.STRING, cel.Type.DYN)
    with pytest.raises(RuntimeError, match="Syntax error"):
        compile("request.userInfo.username == ")  # the runtime refuses what it cannot parse: this test can fail


@pytest.mark.parametrize("operation", ["CREATE", "UPDATE"])
def test_a_node_s_agent_writes_its_own_report(operation: str) -> None:
    assert admit(admission(operation, "node-a", AGENT, {NODE_NAME: ["node-a"], "authentication.kubernetes.io/pod-name": ["vsop-agent-x1"]})) == (True, "validated")


@pytest.mark.parametrize("operation", ["CREATE", "UPDATE", "DELETE"])
def test_a_node_s_agent_cannot_write_another_node_s_report(operation: str) -> None:
    allowed, message = admit(admission(operation, "node-b", AGENT, {NODE_NAME: ["node-a"]}))
    assert not allowed
    assert message == "vsop-agent on node node-a may write only its own NodeReport (node-a), not node-b"


@pytest.mark.parametrize("extra", [None, {}, {"authentication.kubernetes.io/pod-name": ["vsop-agent-x1"]}, {NODE_NAME: []}])
def test_the_agent_s_account_with_a_token_naming_no_node_is_refused(extra: dict[str, list[str]] | None) -> None:
    allowed, message = admit(admission("UPDATE", "node-a", AGENT, extra))
    assert not allowed and "names no node" in message


def test_the_controller_and_administrators_are_not_this_policy_s_business() -> None:
    assert admit(admission("DELETE", "node-b", CONTROLLER)) == (True, "not matched: the-node-agent")
    assert admit(admission("UPDATE", "node-b", "kubernetes-admin")) == (True, "not matched: the-node-agent")
    other = admission("UPDATE", "node-b", AGENT, {NODE_NAME: ["node-a"]})
    other["request"]["resource"]["resource"] = "virtualservices"
    assert admit(other) == (True, "not matched")


def test_the_base_ships_the_policy_and_its_binding() -> None:
    kustomization = yaml.safe_load((ROOT / "deploy" / "kustomization.yaml").read_text())
    assert "admission-policy.yaml" in kustomization["resources"]
    rbac = [d for d in yaml.safe_load_all((ROOT / "deploy" / "rbac.yaml").read_text()) if d]
    accounts = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in rbac if d["kind"] == "ServiceAccount"}
    assert ("vsop-system", "vsop-agent") in accounts  # the username the match condition names
    agent = yaml.safe_load((ROOT / "deploy" / "agent.yaml").read_text())
    assert agent["spec"]["template"]["spec"]["serviceAccountName"] == "vsop-agent"

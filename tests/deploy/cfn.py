"""template.yaml as data: parameters, conditions evaluated for given parameter values, the functions'
environment and the IAM actions each function is allowed."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
NO_VALUE = object()


@cache
def template() -> dict[str, Any]:
    """The template with its short tags (!Ref, !If ...) as CloudFormation's long form."""
    from cfnlint.decode import decode

    document, matches = decode(str(TEMPLATE))
    assert not matches, matches
    return document


def functions() -> dict[str, dict[str, Any]]:
    return {
        name: resource
        for name, resource in template()["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
    }


class Stack:
    """Evaluates the intrinsic functions the template uses for one set of parameter values (the rest at their
    defaults); resources are named by their logical ids."""

    def __init__(self, **parameters: str) -> None:
        params = template()["Parameters"]
        unknown = set(parameters) - set(params)
        assert not unknown, unknown
        self.values = {name: str(p.get("Default", "")) for name, p in params.items()} | parameters

    def condition(self, name: str) -> bool:
        return bool(self.resolve(template()["Conditions"][name]))

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [v for v in (self.resolve(v) for v in value) if v is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) != 1:
            return {k: v for k, v in ((k, self.resolve(v)) for k, v in value.items()) if v is not NO_VALUE}
        [(fn, arg)] = value.items()
        if fn == "Ref":
            if arg == "AWS::NoValue":
                return NO_VALUE
            return self.values.get(arg, arg)  # a resource: its logical id
        if fn == "Fn::If":
            return self.resolve(arg[1] if self.condition(arg[0]) else arg[2])
        if fn == "Fn::Equals":
            return self.resolve(arg[0]) == self.resolve(arg[1])
        if fn == "Fn::Not":
            return not self.resolve(arg[0])
        if fn == "Fn::And":
            return all(self.resolve(a) for a in arg)
        if fn == "Fn::Or":
            return any(self.resolve(a) for a in arg)
        if fn == "Condition":
            return self.condition(arg)
        if fn == "Fn::Split":
            return self.resolve(arg[1]).split(arg[0])
        if fn == "Fn::Select":
            # Select from literals (a split parameter); a list of references stays as it is (a dependency)
            items = self.resolve(arg[1])
            return items[int(arg[0])] if all(isinstance(i, str) for i in items) else {fn: [arg[0], items]}
        if fn in ("Fn::Sub", "Fn::GetAtt", "Fn::FindInMap"):
            return value  # left as it is: no test needs its value
        return {fn: self.resolve(arg)}

    def environment(self) -> dict[str, str]:
        """The functions' environment variables (Globals), as strings; resources by logical id."""
        variables = template()["Globals"]["Function"]["Environment"]["Variables"]
        return {k: str(v) for k, v in self.resolve(variables).items()}


def statements(function: str, stack: Stack | None = None) -> list[dict[str, Any]]:
    """Every IAM policy statement a function's role gets: inline, SAM policy documents and the managed
    policies it references. With no stack, both branches of every !If count (the widest grant)."""
    resources = template()["Resources"]
    found: list[dict[str, Any]] = []
    policies = functions()[function]["Properties"].get("Policies", [])
    for policy in (branch for p in policies for branch in _branches(p, stack)):
        if isinstance(policy, dict) and "Ref" in policy:
            managed = resources[policy["Ref"]]
            assert managed["Type"] == "AWS::IAM::ManagedPolicy"
            found += managed["Properties"]["PolicyDocument"]["Statement"]
        elif isinstance(policy, dict) and "Statement" in policy:
            found += policy["Statement"]
        else:
            raise AssertionError(f"{function}: policy {policy!r} is neither inline nor a managed policy")
    return [s for statement in found for s in _branches(statement, stack)]


def _branches(statement: Any, stack: Stack | None) -> list[dict[str, Any]]:
    if isinstance(statement, dict) and list(statement) == ["Fn::If"]:
        condition, yes, no = statement["Fn::If"]
        if stack is not None:
            return _branches(yes if stack.condition(condition) else no, stack)
        return _branches(yes, stack) + _branches(no, stack)
    if isinstance(statement, dict) and statement.get("Ref") == "AWS::NoValue":
        return []
    return [statement]


def actions(function: str, stack: Stack | None = None) -> set[str]:
    allowed: set[str] = set()
    for statement in statements(function, stack):
        if statement.get("Effect") != "Allow":
            continue
        action = statement["Action"]
        if isinstance(action, dict) and list(action) == ["Fn::If"]:  # one action or another, by condition
            condition, yes, no = action["Fn::If"]
            action = ([yes] if stack.condition(condition) else [no]) if stack is not None else [yes, no]
        allowed.update([action] if isinstance(action, str) else action)
    return allowed

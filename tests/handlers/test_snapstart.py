"""SnapStart: the runtime hooks prime the function before the snapshot and refresh it after a restore.

Lambda's runtime provides `snapshot_restore_py`; here a stand-in records what the handler registers, and the
test runs the hooks as Lambda would: before the snapshot, then (in a "restored" environment) after it.
"""

import sys
import types

import pytest

from .conftest import FakeLambdaContext


@pytest.fixture
def hooks(monkeypatch):
    registered = {"before": [], "after": []}
    module = types.ModuleType("snapshot_restore_py")
    module.register_before_snapshot = lambda f, *a, **k: registered["before"].append((f, a, k))
    module.register_after_restore = lambda f, *a, **k: registered["after"].append((f, a, k))
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", module)
    return registered


def run(hooks):
    for func, args, kwargs in hooks:
        func(*args, **kwargs)


def test_no_hooks_outside_a_snapstart_init(stack, hooks, monkeypatch):
    monkeypatch.delenv("AWS_LAMBDA_INITIALIZATION_TYPE", raising=False)
    stack.handler("generations")
    assert hooks == {"before": [], "after": []}


def test_the_snapshot_holds_primed_tables_but_no_client_credentials_or_secret(stack, hooks):
    handler = stack.handler("generations", AWS_LAMBDA_INITIALIZATION_TYPE="snap-start")
    assert len(hooks["before"]) == 1 and len(hooks["after"]) == 1
    service = hooks["after"][0][1][0]

    run(hooks["before"])

    primed = service.__dict__
    assert primed["catalog_source"]._catalog is not None  # contracts, prices and routes, loaded
    assert primed["_router"] is None  # credentials (upstream secrets) are read on the first request only
    assert service.aws._clients == {} and service.aws._session is None
    assert "imagegate.providers.openai" in sys.modules

    run(hooks["after"])  # a restored environment: clients made anew, from the cached service models
    assert list(service.aws._clients) == ["dynamodb@None/None/3"]

    event = stack.event("generations")
    response = handler(event, FakeLambdaContext())
    assert response["statusCode"] == 200, response["body"]
    assert stack.balance() < stack.start_balance

"""The package is laid out in wings, and its imports go one way.

Floors, lowest first (a module may import its own floor and any below it, never one above):
    ground    config, errors, table, aws, storage, metrics, units: what every wing uses
    catalog   contracts, rates, prices, credentials, and the packaged data they read
    inputs    the validated request, validation, images, references, uploads, outbound fetches
    providers the upstreams and the router that picks one
    money     accounts, billing, ledger, rate limits, idempotency
    request   service (one request, from key to response) and its streamed form
    jobs      jobs, the AWS triggers that start them, webhooks, events
    http      the FastAPI app and the Lambda entry points
    local     the dev server and its emulator: loaded by the CLI and the dev server, never on Lambda
    cli       the operator's command line

Every import counts: late ones inside functions, and type-only ones under `if TYPE_CHECKING:`.
"""

import ast
from pathlib import Path

import pytest

import imagegate

PACKAGE = Path(imagegate.__file__).parent
FUNCTIONS = Path(__file__).parents[2] / "functions"

FLOORS = ("ground", "catalog", "inputs", "providers", "money", "request", "jobs", "http", "local", "cli")
GROUND = {"config", "errors", "table", "aws", "storage", "metrics", "units"}
REQUEST = {"service", "streaming"}


def floor_of(module: str) -> str:
    """The floor of a module of the package (`imagegate.money.billing` -> `money`)."""
    parts = module.split(".")
    if len(parts) == 1:
        return "ground"
    top = parts[1]
    if top in GROUND:
        return "ground"
    if top in REQUEST:
        return "request"
    assert top in FLOORS, f"{module} is on no floor: add it to the layering test's plan"
    return top


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, name: str, is_package: bool) -> set[str]:
    """Every module a file imports, anywhere in it (type-only and late imports included)."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or "")
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def package_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: imports_of(path.read_text(), name, path.name == "__init__.py") & files.keys() - {name}
        for name, path in files.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[str]:
    found = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports of a module on a higher floor than the importer's."""
    return [
        f"{module} ({floor_of(module)}) imports {target} ({floor_of(target)})"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if FLOORS.index(floor_of(target)) > FLOORS.index(floor_of(module))
    ]


def local_importers(graph: dict[str, set[str]]) -> list[str]:
    """Modules other than the CLI and the local wing itself that import the local wing."""
    return [
        f"{module} imports {target}"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if floor_of(target) == "local" and floor_of(module) not in ("local", "cli")
    ]


def functions_importing_local(sources: dict[str, str]) -> list[str]:
    """Lambda functions (`functions/*/app.py`, by path) that import the local wing."""
    return [
        path
        for path, source in sorted(sources.items())
        if any(
            t == "imagegate.local" or t.startswith("imagegate.local.")
            for t in imports_of(source, "app", False)
        )
    ]


def _function_sources() -> dict[str, str]:
    return {str(p.relative_to(FUNCTIONS)): p.read_text() for p in sorted(FUNCTIONS.glob("*/app.py"))}


def test_every_module_is_on_a_floor():
    for module in package_graph():
        floor_of(module)


def test_no_import_cycles():
    assert cycles(package_graph()) == []


def test_no_wing_imports_one_above_it():
    assert upward_imports(package_graph()) == []


def test_only_the_cli_and_the_dev_server_import_local():
    assert local_importers(package_graph()) == []


def test_no_lambda_function_imports_local():
    sources = _function_sources()
    assert len(sources) >= 11
    assert functions_importing_local(sources) == []


def test_table_layout_is_at_the_bottom():
    assert package_graph()["imagegate.table"] == set()


# Each rule fails on a planted violation.


def test_a_planted_cycle_is_found_even_when_type_only():
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .aws import AWSClients\n"
    graph = package_graph()
    assert "imagegate.config" in graph["imagegate.aws"]
    graph["imagegate.config"] |= imports_of(source, "imagegate.config", False) & graph.keys()
    assert cycles(graph) == ["imagegate.aws -> imagegate.config -> imagegate.aws"]


def test_a_planted_upward_import_is_found():
    source = "def late():\n    from imagegate.http.api import create_app\n"
    graph = package_graph()
    graph["imagegate.money.billing"] |= imports_of(source, "imagegate.money.billing", False) & graph.keys()
    assert upward_imports(graph) == [
        "imagegate.money.billing (money) imports imagegate.http.api (http)",
    ]


def test_a_planted_type_only_upward_import_is_found():
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..service import Service\n"
    graph = package_graph()
    graph["imagegate.catalog.prices"] |= imports_of(source, "imagegate.catalog.prices", False) & graph.keys()
    assert upward_imports(graph) == ["imagegate.catalog.prices (catalog) imports imagegate.service (request)"]


def test_a_planted_import_of_local_is_found():
    graph = package_graph()
    graph["imagegate.http.lambda_app"] |= {"imagegate.local.emulator"}
    assert local_importers(graph) == ["imagegate.http.lambda_app imports imagegate.local.emulator"]


def test_a_planted_function_importing_local_is_found():
    sources = _function_sources()
    sources["evil/app.py"] = "from imagegate.local.devserver import provision\n"
    assert functions_importing_local(sources) == ["evil/app.py"]


def test_a_module_on_no_floor_is_refused():
    with pytest.raises(AssertionError, match="on no floor"):
        floor_of("imagegate.attic.thing")

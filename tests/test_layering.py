"""The layers import downwards only: `ml/` knows neither the web nor the database layer, `app/`
never imports `workers/` (a worker's code, loaded by name by Celery) nor torch."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "app": ("workers", "torch"),
    "ml": ("app", "workers", "fastapi", "sqlalchemy", "sqlmodel", "celery"),
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports, at any depth (function-level imports included)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(package: str) -> None:
    offending = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, module in imported_modules(path)
        if module.split(".")[0] in FORBIDDEN[package]
    ]
    assert offending == []


# `app/` is grouped by domain: each package holds its routes, schemas, tables and logic.
DOMAINS = ("catalog", "comparisons", "identity", "operations", "runs", "scores", "sweeps")


def test_routes_are_leaves() -> None:
    """A domain may use another's logic, schemas and tables, never its routes: only the app's
    assembly (`app/main.py`) and the HTTP plumbing (`app/api/`) import routes of every domain."""
    offending = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for domain in DOMAINS
        for path in sorted((ROOT / "app" / domain).rglob("*.py"))
        for line, module in imported_modules(path)
        if (parts := module.split("."))[0] == "app"
        and len(parts) > 2
        and parts[1] in DOMAINS
        and parts[1] != domain
        and parts[2] == "routes"
    ]
    assert offending == []


def test_core_imports_no_other_part_of_app() -> None:
    """`app/core/` is the infrastructure every domain stands on; it imports none of them."""
    offending = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in sorted((ROOT / "app" / "core").rglob("*.py"))
        for line, module in imported_modules(path)
        if module.split(".")[0] == "app" and not module.startswith("app.core")
    ]
    assert offending == []

"""The layout holds: imports go one way (docs/architecture.md), and only the storage package imports a Redis
client, only consumers/ a Kafka client. Read from the code's own import statements, lazy ones included."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support import REPO_ROOT

PACKAGES = ("schemas", "models", "app", "consumers", "devtools")

# What each part may import of ours (a part always may import itself). A module belongs to the longest prefix.
ALLOWED: dict[str, frozenset[str]] = {
    "schemas": frozenset(),
    "models": frozenset({"schemas"}),
    "app.domain": frozenset({"models", "schemas"}),
    "app.settings": frozenset({"app.domain", "models", "schemas"}),
    "app.metrics": frozenset(),
    "app.ports": frozenset(),
    "app.eventloop": frozenset(),
    "app.logs": frozenset(),
    "app.storage": frozenset({"app.domain", "app.settings", "app.eventloop", "models", "schemas"}),
    "app.model_registry": frozenset({"app.storage", "app.settings", "app.metrics", "app.domain", "models", "schemas"}),
    "app.pipeline": frozenset({"app.domain", "app.storage", "models", "schemas"}),
    "app.api": frozenset(
        {
            "app.domain",
            "app.storage",
            "app.model_registry",
            "app.settings",
            "app.metrics",
            "app.eventloop",
            "models",
            "schemas",
        }
    ),
    "consumers": frozenset(
        {
            "app.domain",
            "app.storage",
            "app.pipeline",
            "app.settings",
            "app.metrics",
            "app.model_registry",
            "models",
            "schemas",
        }
    ),
    "devtools": frozenset({"app.ports", "app.settings", "consumers", "models", "schemas"}),
    # the composition root: it wires everything together, and nothing imports it
    "app.cli": frozenset(
        {
            "app.domain",
            "app.storage",
            "app.pipeline",
            "app.api",
            "app.settings",
            "app.metrics",
            "app.ports",
            "app.eventloop",
            "app.logs",
            "app.model_registry",
            "consumers",
            "devtools",
            "models",
            "schemas",
        }
    ),
    "app": frozenset({"app.cli"}),  # app/__main__.py: `python -m app` is the command
}
# Third-party clients only one part may use.
CLIENTS = {"redis": "app.storage", "aiokafka": "consumers", "confluent_kafka": "consumers"}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO_ROOT / package).rglob("*.py"):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from app import metrics` imports the module app.metrics
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def part_of(module: str) -> str | None:
    candidates = [part for part in ALLOWED if module == part or module.startswith(part + ".")]
    return max(candidates, key=len) if candidates else None


def test_every_module_belongs_to_a_part() -> None:
    orphans = sorted(name for name in modules() if part_of(name) is None)
    assert orphans == [], f"modules in no part of the layout (add them to ALLOWED and docs/architecture.md): {orphans}"


def test_imports_go_one_way() -> None:
    ours = modules()
    wrong = []
    for name, path in sorted(ours.items()):
        part = part_of(name)
        assert part is not None
        for target in imported(path):
            # a package's __init__ (a docstring) is reached by every import of its modules: not a dependency
            if target not in ours or ours[target].name == "__init__.py":
                continue
            target_part = part_of(target)
            if target_part is None or target_part == part:
                continue
            if target_part not in ALLOWED[part]:
                wrong.append(f"{name} ({part}) imports {target} ({target_part})")
    assert wrong == [], "imports going the wrong way:\n" + "\n".join(wrong)


def test_only_storage_talks_to_redis_and_only_consumers_to_kafka() -> None:
    wrong = []
    for name, path in sorted(modules().items()):
        for target in imported(path):
            client = target.split(".")[0]
            owner = CLIENTS.get(client)
            if owner is not None and not (name == owner or name.startswith(owner + ".")):
                wrong.append(f"{name} imports {target} (only {owner} may)")
    assert wrong == [], "\n".join(wrong)


def test_the_checks_see_a_wrong_import() -> None:
    """The rule table is not vacuous: a domain module importing storage would be caught."""
    part = part_of("app.domain.batch")
    assert part == "app.domain" and "app.storage" not in ALLOWED[part]
    assert part_of("app.storage.leads") == "app.storage"
    assert "redis" in imported(REPO_ROOT / "app" / "storage" / "leads.py")

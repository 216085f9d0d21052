"""The package's layers, read from the source: arrows point one way.

cli and flows on top, then tasks, then the core and the judges. The core never
imports Prefect, tasks never import flows, and nothing but the Ray adapters imports
Ray at module level (so read commands start without paying for it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tunix_rt

ROOT = Path(__file__).resolve().parents[2]
# Where each layer's source lives in the repository (pyproject maps them into tunix_rt).
FOLDERS = {"tunix_rt.flows": ROOT / "flows", "tunix_rt.tasks": ROOT / "tasks",
           "tunix_rt.judges": ROOT / "judges", "tunix_rt.migrations": ROOT / "migrations",
           "tunix_rt": ROOT / "tunix_rt"}
HEAVY = ("prefect", "ray", "jax", "optax", "tunix", "pandas", "uvicorn", "fastapi")
# Modules whose job is to adapt a heavy library: they may import it at module level. The
# service's modules are the HTTP app (only `tunix-rt serve` imports them).
ADAPTERS = {"tunix_rt.tuning.ray_tune": {"ray"}, "tunix_rt.service.server": {"fastapi"},
            "tunix_rt.service.params": {"fastapi"}, "tunix_rt.service.auth": {"fastapi"},
            # The pages' routes (the HTTP app's too).
            "tunix_rt.service.ui": {"fastapi"}, "tunix_rt.service.gate_page": {"fastapi"},
            "tunix_rt.service.study_page": {"fastapi"},
            # The tunix extra's adapter: only a Tunix job or script imports it.
            "tunix_rt.integrations.tunix": {"tunix"},
            "tunix_rt.integrations.tunix.hooks": {"tunix"},
            "tunix_rt.integrations.tunix.sampling": {"tunix"}}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            if "versions" in path.parts:
                continue
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([package, *parts])
            if package == "tunix_rt" and name.split(".")[1:2] and name.split(".")[1] in (
                    "flows", "tasks", "judges", "migrations"):
                continue
            found[name] = path
    return found


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level) for every import in the file."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{a.name}" for a in node.names]
            out += [(n, id(node) in top) for n in [node.module, *names]]
    return out


def layer(module: str) -> str:
    for prefix in ("tunix_rt.cli", "tunix_rt.flows", "tunix_rt.tasks", "tunix_rt.judges",
                   "tunix_rt.migrations"):
        if module == prefix or module.startswith(prefix + "."):
            return prefix.split(".")[1]
    return "core"


# Which layers each layer may import from.
ALLOWED = {"cli": {"cli", "flows", "tasks", "core", "judges"},
           "flows": {"flows", "tasks", "core", "judges"},
           "tasks": {"tasks", "core", "judges"},
           "core": {"core", "judges", "migrations"},
           "judges": {"judges"},
           "migrations": {"core"}}
# The leaf modules of the core that judges may use: settings and standard-library helpers.
JUDGE_MAY_USE = {"tunix_rt", "tunix_rt.settings", "tunix_rt.retrying", "tunix_rt.errors"}

MODULES = _modules()


def test_every_module_is_found() -> None:
    assert {"tunix_rt.cli", "tunix_rt.flows.quality_loop", "tunix_rt.tasks.quality",
            "tunix_rt.judges.llm", "tunix_rt.store.db", "tunix_rt.migrations.env"} <= set(MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_arrows_point_one_way(module: str) -> None:
    mine = layer(module)
    wrong = []
    for imported, _ in _imports(MODULES[module]):
        if not imported.startswith("tunix_rt"):
            continue
        theirs = layer(imported)
        if mine == "judges" and theirs == "core":
            if imported not in JUDGE_MAY_USE:
                wrong.append(imported)
        elif theirs not in ALLOWED[mine]:
            wrong.append(imported)
    assert not wrong, f"{module} ({mine}) imports {sorted(set(wrong))}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer(m) in ("core", "judges")))
def test_the_core_and_the_judges_never_import_prefect(module: str) -> None:
    prefect = [name for name, _ in _imports(MODULES[module]) if name.split(".")[0] == "prefect"]
    assert not prefect, f"{module} imports {prefect}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer(m) in ("core", "judges")))
def test_heavy_libraries_only_inside_functions(module: str) -> None:
    allowed = ADAPTERS.get(module, set())
    heavy = [name for name, top in _imports(MODULES[module])
             if top and name.split(".")[0] in HEAVY and name.split(".")[0] not in allowed]
    assert not heavy, f"{module} imports {sorted(set(heavy))} at module level"


def test_nothing_outside_tunix_rt_at_the_top_level() -> None:
    """The design card's folders are package-dir mappings, never top-level packages."""
    assert Path(tunix_rt.__file__).parent.name == "tunix_rt"
    for folder in ("flows", "tasks", "judges", "migrations"):
        module = __import__(f"tunix_rt.{folder}", fromlist=["_"])
        assert Path(module.__file__).parent == ROOT / folder

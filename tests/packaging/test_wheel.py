"""The built wheel installs one top-level package, and runs the demo from anywhere.

``pip install tunix-rt`` must not put ``flows``, ``tasks``, ``judges`` or
``migrations`` into site-packages: those names belong to other projects on the
package index. The wheel's RECORD says what it installs; a fresh virtual
environment with the wheel (and its dependencies, as a user would get them) runs
``tunix-rt demo`` from a directory that is not the checkout.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.packaging, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
SUBPACKAGES = {"store", "quality", "training", "tuning", "service", "cli",
               "flows", "tasks", "judges", "migrations"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out),
                    str(ROOT)], check=True, cwd=out)
    [built] = out.glob("tunix_rt-*.whl")
    return built


def _record(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        [record] = [n for n in archive.namelist() if n.endswith(".dist-info/RECORD")]
        rows = csv.reader(io.StringIO(archive.read(record).decode()))
        return [row[0] for row in rows if row]


def test_the_wheel_installs_tunix_rt_and_nothing_else_at_the_top(wheel: Path) -> None:
    paths = _record(wheel)
    top = {p.split("/")[0] for p in paths}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert top - dist_info == {"tunix_rt"}
    # The design card's folders arrive inside the package, with their modules.
    inside = {p.split("/")[1] for p in paths if p.startswith("tunix_rt/") and p.count("/") >= 2}
    assert SUBPACKAGES <= inside
    for module in ("tunix_rt/flows/quality_loop.py", "tunix_rt/tasks/quality.py",
                   "tunix_rt/judges/exact_match.py", "tunix_rt/migrations/env.py",
                   "tunix_rt/migrations/script.py.mako"):
        assert module in paths
    # Every migration revision ships (the package data the embedded database needs).
    shipped = {Path(p).name for p in paths if p.startswith("tunix_rt/migrations/versions/")}
    assert shipped == {p.name for p in (ROOT / "migrations" / "versions").glob("*.py")}


def test_a_fresh_venv_with_the_wheel_runs_the_demo_elsewhere(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # --no-compile: pip would compile every module of every dependency (~13,000 files:
    # ray, jax, pyarrow... ~30 s of the install); the demo compiles what it imports, once
    # (bytecode writing is on in its environment, as on a user's machine).
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                          "--no-compile", str(wheel)], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr[-4000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TUNIX_RT_", "PREFECT_API", "VIRTUAL_ENV", "PYTHONPATH",
                                "PYTHONDONTWRITEBYTECODE"))}
    env["PATH"] = f"{venv / 'bin'}:/usr/bin:/bin"
    # The installed package, not the checkout: nothing of the checkout is importable here.
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import tunix_rt.flows, tunix_rt.judges; print(tunix_rt.flows.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True)
    assert str(venv) in where.stdout and str(ROOT) not in where.stdout
    shadow = subprocess.run([str(venv / "bin" / "python"), "-c", "import flows"], cwd=elsewhere,
                            env=env, capture_output=True, text=True)
    assert shadow.returncode != 0 and "No module named 'flows'" in shadow.stderr
    demo = subprocess.run([str(venv / "bin" / "tunix-rt"), "demo"], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=600)
    assert demo.returncode == 0, (demo.stdout[-3000:], demo.stderr[-3000:])
    assert "gate" in demo.stdout.lower()
    assert (elsewhere / "tunix_rt.db").exists()  # the embedded default, in the working directory

"""A wheel holds the package and the configs; its console scripts work from any directory."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the checkout, so no build/ or egg-info lands in it."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pwl", "conf"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp / "dist"), str(src)], check=True, capture_output=True)
    return next((tmp / "dist").glob("pwl-*.whl"))


def test_wheel_holds_every_module_and_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "pwl").rglob("*.py")}
    configs = {"pwl/" + p.relative_to(ROOT).as_posix() for p in (ROOT / "conf").rglob("*.yaml")}
    missing = modules - names
    assert not missing, f"{sorted(missing)}: add their package to pyproject's packages list"
    assert configs - names == set()
    assert "pwl/py.typed" in names


@pytest.mark.slow
def test_installed_console_script_trains_from_another_directory(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    bin_dir = venv / "bin"
    env_python = bin_dir / "python"
    site = Path(subprocess.run([str(env_python), "-c", "import sysconfig; "
                                "print(sysconfig.get_paths()['purelib'])"], check=True,
                               capture_output=True, text=True).stdout.strip())
    # torch and the other dependencies come from this environment; a plain path entry (not
    # its .pth files) leaves out the editable install of the checkout.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --ignore-installed: pip must not touch the checkout's editable install it can see.
    subprocess.run([sys.executable, "-m", "pip", "--python", str(env_python), "install", "-q",
                    "--ignore-installed", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(env_python), "-c", "import pwl, pwl.cli; "
                            "print(pwl.__file__); print(pwl.cli.CONF_DIR)"], cwd=elsewhere,
                           env=env, check=True, capture_output=True, text=True).stdout.split()
    assert all(Path(p).is_relative_to(venv) for p in where), where

    run = tmp_path / "run"
    result = subprocess.run([str(bin_dir / "pwl-train"), "phase=teacher", "data=synthetic",
                             "debug=fast", "logger=none", f"hydra.run.dir={run}"],
                            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (run / "teacher.safetensors").is_file()
    assert not list(elsewhere.iterdir())

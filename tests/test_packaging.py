"""Packaging: the configs travel with the package, the console scripts exist, the wheel holds
softcal and nothing else (issue 11: ``pip install .`` must not break the default run).

.ci/run also installs the wheel non-editably and trains from outside the checkout.
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from softcal.config_files import available_configs, default_config, packaged_configs_dir, resolve_config
from softcal.errors import SoftcalError
from tests.conftest import TINY

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the checks below need pyproject.toml read

REPO = Path(__file__).resolve().parents[1]
CHECKOUT_CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
ENTRY_POINTS = {
    "softcal-train": "softcal.apps.train:command",
    "softcal-evaluate": "softcal.apps.evaluate:command",
    "softcal-predict": "softcal.apps.predict:command",
    "softcal-export": "softcal.apps.export:command",
    "softcal-sweep": "softcal.apps.sweep:command",
}


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def source_files() -> set[Path]:
    """The Python files under src/, relative to it."""
    src = REPO / "src"
    return {path.relative_to(src) for path in src.rglob("*.py") if "__pycache__" not in path.parts}


def source_packages() -> set[str]:
    """Dotted names of the folders under src/ that hold Python files."""
    return {".".join(path.parent.parts) for path in source_files()}


# --------------------------------------------------------------------------- pyproject.toml


def test_pyproject_lists_every_source_package_and_maps_configs() -> None:
    """The package list is written out (softcal.configs lives outside src/), so it must not miss
    a subpackage: a folder left out would be absent from the wheel and only a user would notice."""
    setuptools = pyproject()["tool"]["setuptools"]
    assert set(setuptools["packages"]) == source_packages() | {"softcal.configs"}
    assert setuptools["package-dir"] == {"": "src", "softcal.configs": "configs"}
    assert setuptools["package-data"]["softcal.configs"] == ["*.yaml", "sweeps/*.yaml"]  # + search spaces


def test_every_source_package_is_a_regular_package() -> None:
    """A folder without __init__.py is a namespace package: an editable install still imports
    it, but setuptools leaves it out of a wheel built from a listing that expects one."""
    for name in source_packages():
        assert (REPO / "src" / name.replace(".", "/") / "__init__.py").is_file(), name


def test_console_scripts_point_at_app_commands() -> None:
    assert pyproject()["project"]["scripts"] == ENTRY_POINTS
    for target in ENTRY_POINTS.values():
        module, attr = target.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), target


def test_slow_marker_is_registered_and_enforced() -> None:
    options = pyproject()["tool"]["pytest"]["ini_options"]
    assert any(marker.startswith("slow:") for marker in options["markers"])
    assert "--strict-markers" in options["addopts"].split()  # a misspelt marker is an error


# --------------------------------------------------------------------------- config lookup


def test_packaged_configs_are_the_checkouts_configs() -> None:
    """Every config a user sees in configs/ is installed, byte for byte (with an editable install
    the packaged folder is the checkout's; with a fresh non-editable one, its copy)."""
    assert available_configs() == [path.name for path in CHECKOUT_CONFIGS]
    assert "mnist.yaml" in available_configs()
    for path in CHECKOUT_CONFIGS:
        assert (packaged_configs_dir() / path.name).read_bytes() == path.read_bytes()


@pytest.mark.parametrize(
    "name", ["configs/cifar10.yaml", "cifar10.yaml", "./configs/cifar10.yaml", "cifar10"]
)
def test_config_names_resolve_from_any_directory(name: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no configs/ here
    path = resolve_config(name)
    assert path.is_absolute() and path.parent == packaged_configs_dir()
    assert path.read_bytes() == (REPO / "configs" / "cifar10.yaml").read_bytes()


def test_an_existing_file_wins_over_the_packaged_config(tmp_path: Path, monkeypatch) -> None:
    """A user's edited copy under the same relative name is the one used, as given."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "mnist.yaml").write_text("seed_everything: 7\n")
    assert resolve_config("configs/mnist.yaml") == Path("configs/mnist.yaml")
    own = tmp_path / "elsewhere.yaml"
    own.write_text("seed_everything: 8\n")
    assert resolve_config(str(own)) == own


@pytest.mark.parametrize("name", ["nope.yaml", "configs/nope.yaml", "nope"])
def test_unknown_config_is_one_line_error_naming_the_choices(name: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SoftcalError) as info:
        resolve_config(name)
    message = str(info.value)
    assert "\n" not in message and name in message
    for config in ("mnist.yaml", "cifar10.yaml", "smoke.yaml"):
        assert config in message


@pytest.mark.parametrize("where", ["absolute", "other/mnist.yaml"])
def test_a_missing_path_elsewhere_is_not_replaced_by_a_packaged_config(
    where: str, tmp_path: Path, monkeypatch
) -> None:
    """Only bare names and configs/NAME fall back to the package: a wrong directory is an error,
    not a silent switch to another file of the same name."""
    monkeypatch.chdir(tmp_path)
    name = str(tmp_path / "configs" / "mnist.yaml") if where == "absolute" else where
    with pytest.raises(SoftcalError, match="not found"):
        resolve_config(name)


def test_default_config_is_the_packaged_mnist_even_beside_a_local_one(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mnist.yaml").write_text("seed_everything: 7\n")
    path = default_config()
    assert path.is_absolute() and path == packaged_configs_dir() / "mnist.yaml"
    assert path.read_bytes() == (REPO / "configs" / "mnist.yaml").read_bytes()


# --------------------------------------------------------------------------- the wheel


@pytest.mark.slow
def test_wheel_holds_softcal_and_its_configs_and_no_benchmarks(tmp_path: Path) -> None:
    """Build the wheel as ``pip install .`` does, from a copy of the sources: setuptools builds
    in the project folder, and a stale build/ there could put deleted modules into the wheel."""
    project = tmp_path / "project"
    junk = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("src", "configs"):
        shutil.copytree(REPO / name, project / name, ignore=junk)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, project / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path / "wheel"), str(project)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    (wheel,) = (tmp_path / "wheel").glob("softcal-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))

    assert {f"softcal/configs/{path.name}" for path in CHECKOUT_CONFIGS} <= names
    spaces = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))
    assert spaces and {f"softcal/configs/sweeps/{path.name}" for path in spaces} <= names
    assert {path.as_posix() for path in source_files()} <= names  # every module, every __init__.py
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"softcal", wheel.name.split("-py")[0] + ".dist-info"}  # no benchmarks/, tests/
    assert not [n for n in names if "bench" in n]  # softcal_bench, softcal/bench: outside the wheel
    for script, target in ENTRY_POINTS.items():
        assert f"{script} = {target}" in entry_points


# --------------------------------------------------------------------------- console scripts


@pytest.mark.slow
def test_console_scripts_train_the_default_config_and_evaluate_from_any_directory(
    mnist_root: Path, tmp_path: Path
) -> None:
    """The commands pip installed, run where there is no configs/: the default config is found,
    the run lands in the current directory, and success exits 0 (a console script exits with
    what its command returns, so a command that returned its results would exit 1)."""
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "softcal-train").is_file(), "no console scripts: reinstall softcal (pip install -e .)"
    train = subprocess.run(
        [bin_dir / "softcal-train", *TINY, "--data.init_args.root", str(mnist_root)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-3000:]
    assert re.search(r"^acc +\d+\.\d\d%", train.stdout, re.MULTILINE), train.stdout
    (run_dir,) = (tmp_path / "runs" / "mnist").iterdir()
    assert list((run_dir / "checkpoints").glob("*.ckpt"))
    evaluate = subprocess.run(
        [bin_dir / "softcal-evaluate", run_dir.relative_to(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]

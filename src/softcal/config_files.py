"""Find an experiment config by path or by name, wherever softcal is installed.

The YAML files live in the top-level ``configs/`` folder that users read and edit. pyproject.toml
installs that folder as the package ``softcal.configs``, so ``importlib.resources`` finds it from
any working directory: an editable install (``pip install -e .``) reads the checkout's folder
itself, a non-editable one (``pip install .``) the copy installed beside the code. Nothing here
assumes where the package sits relative to a checkout.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from softcal.errors import SoftcalError

#: The experiment a bare ``python scripts/train.py`` / ``softcal-train`` runs.
DEFAULT_CONFIG = "mnist.yaml"


def packaged_configs_dir() -> Path:
    """The folder holding the installed configs (the checkout's ``configs/`` when editable)."""
    try:
        folder = resources.files("softcal.configs")
    except ModuleNotFoundError as err:  # an editable install made before configs/ was a package
        raise SoftcalError(
            "the packaged configs (softcal.configs) are not installed; reinstall softcal"
            " (pip install -e . in a checkout)"
        ) from err
    if not isinstance(folder, Path):  # e.g. imported from a zip: LightningCLI needs real files
        raise SoftcalError(f"the packaged configs are not files on disk ({folder}); install softcal with pip")
    return folder


def available_configs() -> list[str]:
    """File names of the packaged configs, sorted."""
    return sorted(path.name for path in packaged_configs_dir().glob("*.yaml"))


def resolve_config(name_or_path: str) -> Path:
    """The config file a ``--config`` value names.

    An existing file is used as given, so a user's own config (or an edited copy of a packaged
    one, even one called ``configs/mnist.yaml``) wins. Otherwise a bare file name
    (``cifar10.yaml``, or just ``cifar10``) or one under ``configs/`` (``configs/cifar10.yaml``,
    as the README writes it) is the packaged config of that name, so the README's commands work
    from any directory.
    Any other missing path is an error rather than a silent substitute.
    """
    given = Path(name_or_path).expanduser()
    if given.is_file():
        return given
    if given.parent in (Path(), Path("configs")):
        # "cifar10" means cifar10.yaml, as evaluate's --ood fashion_mnist does
        for name in (given.name, f"{given.name}.yaml") if given.suffix != ".yaml" else (given.name,):
            packaged = packaged_configs_dir() / name
            if packaged.is_file():
                return packaged
    raise SoftcalError(
        f"config {name_or_path} not found: no such file here, and the packaged configs are"
        f" {', '.join(available_configs())} (in {packaged_configs_dir()})"
    )


def default_config() -> Path:
    """The packaged default config (never a file of that name in the current directory)."""
    path = packaged_configs_dir() / DEFAULT_CONFIG
    if not path.is_file():
        raise SoftcalError(f"default config {path} not found; reinstall softcal or pass --config FILE.yaml")
    return path

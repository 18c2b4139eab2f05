"""Find an experiment config by path or by name, wherever softcal is installed, and its base.

The YAML files live in the top-level ``configs/`` folder that users read and edit. pyproject.toml
installs that folder as the package ``softcal.configs``, so ``importlib.resources`` finds it from
any working directory: an editable install (``pip install -e .``) reads the checkout's folder
itself, a non-editable one (``pip install .``) the copy installed beside the code. Nothing here
assumes where the package sits relative to a checkout.

A config may be an overlay of another: ``configs/cifar100.yaml`` holds only what differs from
``configs/cifar10.yaml`` and says so in its opening comments, ``# base: cifar10.yaml``.
:func:`config_chain` lists the files such a config means, base first; ``--config cifar100``
(training) and ``--ood cifar100`` (evaluate) both read them in that order.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from softcal.errors import SoftcalError

#: The experiment a bare ``python scripts/train.py`` / ``softcal-train`` runs.
DEFAULT_CONFIG = "mnist.yaml"

#: How an overlay names the config it builds on: a line ``# base: cifar10.yaml`` among the
#: comments that open the file. A comment, not a key: LightningCLI reads the file as it is.
BASE_LINE = re.compile(r"#\s*base:\s*(\S+)\s*")


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


def config_base(path: Path) -> Path | None:
    """The config ``path`` builds on (its ``# base: NAME`` line), or None: it stands alone.

    NAME is a file beside ``path`` (``cifar10.yaml``, ``../mine.yaml``), or else a packaged
    config of that name, so a copy of an overlay still finds the packaged base. An unreadable
    file has no base here; reading it as a config reports what is wrong with it.
    """
    try:
        lines = path.read_text().splitlines()
    except (OSError, ValueError):  # ValueError: not text
        return None
    for line in lines:
        if line.strip() and not line.lstrip().startswith("#"):
            return None  # the opening comments are over
        found = BASE_LINE.fullmatch(line.strip())
        if found:
            name = found.group(1)
            beside = path.parent / Path(name).expanduser()  # an absolute NAME stays itself
            if beside.is_file():
                return beside
            if (packaged := packaged_configs_dir() / Path(name).name).is_file():
                return packaged
            raise SoftcalError(
                f"config {path} names its base {name} ('# base:' line), which is neither beside it nor"
                " a packaged config; correct that line or put the base beside it"
            )
    return None


def config_chain(path: Path) -> list[Path]:
    """``path`` preceded by its bases, the furthest first: the files ``--config path`` means,
    in the order LightningCLI layers them (each later one overrides the ones before)."""
    chain = [path]
    while (base := config_base(chain[0])) is not None:
        if any(base.resolve() == seen.resolve() for seen in chain):
            loop = " -> ".join(str(p) for p in [*reversed(chain), base])
            raise SoftcalError(f"config {path}: its '# base:' lines go round in a loop ({loop}); break it")
        chain.insert(0, base)
    return chain

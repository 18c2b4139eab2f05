"""Config overlays: a section can train ``A.yaml+B.yaml``, as ``train.py --config A --config B``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from softcal.config_files import config_chain


def parse_spec(spec: str) -> tuple[str, list[Path]]:
    """``configs/cifar10.yaml+configs/cifar10_quick.yaml`` -> ``("cifar10_quick", [both])``.

    The last file names the section (and picks its targets): an overlay is what makes the run
    differ from its base config, so a base config alone keeps its own name.
    """
    configs = [Path(part).resolve() for part in spec.split("+") if part]
    if not configs:
        raise ValueError(f"no config file in {spec!r}")
    return configs[-1].stem, configs


def config_args(configs: Sequence[Path], shown: Any = str) -> list[str]:
    """``--config A --config B``: the CLI merges them in that order, later files winning."""
    return [arg for config in configs for arg in ("--config", shown(config))]


def merged(configs: Sequence[Path]) -> dict[str, Any]:
    """The configs merged as repeated ``--config`` merges them: each preceded by the bases its
    ``# base:`` line names (once), later files win key by key, and an overlay that names another
    ``class_path`` replaces that whole entry."""
    result: dict[str, Any] = {}
    applied: list[Path] = []
    for config in configs:
        for part in config_chain(Path(config)):
            if part.resolve() in applied:  # a base an earlier --config already brought
                continue
            applied.append(part.resolve())
            result = _merge(result, yaml.safe_load(part.read_text()) or {})
    return result


def _merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in overlay.items():
        current = result.get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping) and \
                value.get("class_path", current.get("class_path")) == current.get("class_path"):  # fmt: skip
            value = _merge(current, value)
        result[key] = value
    return result

"""Moved to :mod:`softcal.config_files`: evaluate's ``--ood CONFIG`` (``softcal.evaluation``, a
layer below the apps) finds configs too. This name stays for ``softcal.apps.cli`` until it
imports the new module."""

from softcal.config_files import (  # noqa: F401 - re-exported
    DEFAULT_CONFIG,
    available_configs,
    default_config,
    packaged_configs_dir,
    resolve_config,
)

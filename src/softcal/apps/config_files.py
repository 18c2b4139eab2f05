"""Moved to :mod:`softcal.config_files`: evaluate's ``--ood CONFIG`` (``softcal.evaluation``, a
layer below the apps) finds configs too. This name stays for the apps' command line until it
imports the new module."""

from softcal.config_files import (  # noqa: F401 - re-exported
    BASE_LINE,
    DEFAULT_CONFIG,
    available_configs,
    config_base,
    config_chain,
    default_config,
    packaged_configs_dir,
    resolve_config,
)

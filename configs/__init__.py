"""The experiment configs as package data: this folder is installed as ``softcal.configs``.

Only the YAML files matter; this file makes the folder a package so that ``pip install .``
carries them with the code and an editable install reads them from here
(see ``softcal.apps.config_files`` and ``[tool.setuptools.package-dir]`` in pyproject.toml).
"""

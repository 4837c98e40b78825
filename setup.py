"""Packaging: gatewayd's packages, plus the repository's top-level sql/ folder shipped as the
package gatewayd.sql (the migrations, read with importlib.resources). pyproject.toml cannot map
a folder outside gatewayd/ into it next to a package search; everything else lives there."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["gatewayd*"]), "gatewayd.sql"],
    package_dir={"gatewayd.sql": "sql"},
)

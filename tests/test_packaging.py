"""pyproject lists every package explicitly (the maps need a package-dir mapping): keep it complete."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_every_subpackage_is_listed():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {
        ".".join(p.parent.relative_to(ROOT / "src").parts)
        for p in (ROOT / "src" / "rledger").rglob("__init__.py")
    }
    assert found | {"rledger.maps", "rledger.experiment_specs"} == set(cfg["packages"])
    assert cfg["package-dir"]["rledger.maps"] == "envs"


def test_maps_load_through_the_package():
    from importlib import resources

    assert resources.files("rledger.maps").joinpath("boat_race.txt").read_text().startswith("#####")

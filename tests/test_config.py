"""The settings profiles in config/ name only sections and settings that exist, so a typo in a
profile fails here instead of being silently ignored by luigi."""

from __future__ import annotations

import configparser
from pathlib import Path

import luigi
import pytest

from pipeline import flows, settings

ROOT = Path(__file__).resolve().parent.parent
OURS = {name: cls for name, cls in vars(settings).items() if isinstance(cls, type) and issubclass(cls, luigi.Config)}
# luigi's own sections that the profiles set.
LUIGIS = {"core", "retcode", "worker", "scheduler", "task_history", "resources"}
PROFILES = sorted(p for p in (ROOT / "config").glob("*.cfg") if p.name != "logging.cfg")


@pytest.mark.parametrize("path", [ROOT / "luigi.cfg", *PROFILES], ids=lambda p: p.name)
def test_a_profile_names_only_real_settings_and_sinks(path):
    parser = configparser.ConfigParser()
    parser.read(path)
    unknown_sections = set(parser.sections()) - set(OURS) - LUIGIS
    assert not unknown_sections, f"{path.name}: unknown section(s) {sorted(unknown_sections)}"
    for section in (s for s in parser.sections() if s in OURS):
        unknown = set(parser[section]) - set(OURS[section].get_param_names())
        assert not unknown, f"{path.name} [{section}]: unknown key(s) {sorted(unknown)}"
    if parser.has_section("resources"):  # each a resource some sink declares
        declared = {name for sink in flows.SINKS.values() for name in sink.resources}
        assert set(parser["resources"]) <= declared, f"{path.name} [resources]: {sorted(set(parser['resources']) - declared)}"
    if parser.has_option("ingest", "sinks"):
        sinks = [s.strip() for s in parser["ingest"]["sinks"].split(",")]
        assert set(sinks) <= {*flows.SINKS, "none"}, sinks
    assert not any("password" in key for section in parser.sections() for key in parser[section])

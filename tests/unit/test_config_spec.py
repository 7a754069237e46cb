"""The configuration is declared once (``notifications.config.SPEC``): ``Settings`` has a field
for every key and nothing else, the defaults parse, and the README's configuration table lists
exactly these keys with these defaults."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from notifications.config import DEFAULTS, SPEC, Settings, read

README = Path(__file__).resolve().parents[2] / "README.md"
ROW = re.compile(r"^\| `(NOTIFICATIONS_[A-Z_]+)` \| ([^|]+) \|")


def readme_table() -> dict[str, str]:
    rows = {}
    for line in README.read_text().splitlines():
        match = ROW.match(line)
        if match:
            rows[match.group(1)] = match.group(2).strip()
    return rows


def test_settings_has_one_field_per_key_in_spec_order():
    assert [f.name for f in dataclasses.fields(Settings)] == [key.field for key in SPEC]
    names = [key.name for key in SPEC]
    assert len(set(names)) == len(names)
    assert DEFAULTS == {key.name: key.default for key in SPEC}


def test_the_defaults_parse():
    settings = read({})
    assert settings.max_streams_per_user == 10 and settings.retention == 7 * 86400
    assert settings.env == "development" and not settings.production


def test_the_readme_table_lists_every_key_with_its_default():
    table = readme_table()
    assert sorted(table) == sorted(key.name for key in SPEC), "README table and SPEC differ"
    for key in SPEC:
        assert table[key.name] == key.shown, f"{key.name}: README shows {table[key.name]!r}, SPEC {key.shown!r}"

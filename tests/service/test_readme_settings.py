"""The README's settings table names every setting with its default (service/settings.py)."""

from __future__ import annotations

import re
from pathlib import Path

from service.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_in_the_readme_table_with_its_default():
    rows = [line for line in README.read_text(encoding="utf-8").splitlines() if line.startswith("| `TRANSERVE_")]
    documented: dict[str, str] = {}
    for row in rows:
        names, default = row.split("|")[1:3]
        found = re.findall(r"TRANSERVE_([A-Z0-9_]+)", names)
        defaults = [d.strip() for d in re.findall(r"`([^`]*)`", default)] or [""] * len(found)
        for name, value in zip(found, defaults + [""] * len(found)):
            documented[name.lower()] = value
    missing = sorted(set(Settings.model_fields) - set(documented))
    assert not missing, f"settings missing from the README table: {missing}"
    unknown = sorted(set(documented) - set(Settings.model_fields))
    assert not unknown, f"README table rows for no setting: {unknown}"
    wrong = []
    for name, field in Settings.model_fields.items():
        value, shown = field.default, documented[name]
        if shown and isinstance(value, bool | int | float) and not isinstance(value, list):
            expected = str(value).lower() if isinstance(value, bool) else str(value)
            if shown.replace(",", "") not in (expected, expected.removesuffix(".0")):
                wrong.append(f"{name}: README {shown!r}, settings {value!r}")
    assert not wrong, "README defaults differ: " + "; ".join(wrong)

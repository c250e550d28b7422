"""The README's signature table states each default and limit as nst_model.options defines them."""

from __future__ import annotations

import pathlib
import re

from nst_model.options import BY_NAME, MAX_SIDE, MAX_STEPS, MIN_SIDE

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _rows() -> dict[str, list[str]]:
    """Table rows of the README whose first cell is one backticked option name: name -> cells."""
    rows = {}
    for line in README.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        match = re.fullmatch(r"`(\w+)`", cells[0]) if len(cells) >= 4 else None
        if match and match[1] in BY_NAME:
            rows.setdefault(match[1], cells)  # the signature table comes first
    return rows


def _shown(value: object) -> str:
    return f"`{value}`" if isinstance(value, str) else f"{value:g}" if isinstance(value, float) else str(value)


def test_the_readme_table_gives_each_options_default():
    rows = _rows()
    documented = {"steps", "max_dim", "style_weight", "content_weight", "tv_weight", "learning_rate", "optimizer"}
    assert documented <= set(rows)
    for name, cells in rows.items():
        assert cells[2] == _shown(BY_NAME[name].default), f"README says {name} defaults to {cells[2]}"


def test_the_readme_table_gives_the_limits():
    rows = _rows()
    assert f"0 to {MAX_STEPS}" in rows["steps"][3]
    assert f"{MIN_SIDE} to {MAX_SIDE}" in rows["max_dim"][3]

"""docs/architecture.md lists every library module, so the map a newcomer reads cannot silently go stale."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"


def _modules() -> list[Path]:
    out = []
    for package in ("clio_stream", "consumers", "api"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name == "__main__.py" or (path.name == "__init__.py" and len(path.read_text().splitlines()) < 3
                                              and path.parent.name != "clio_stream"):
                continue
            out.append(path.relative_to(ROOT))
    return out


def test_every_module_is_listed_under_its_package() -> None:
    text = DOC.read_text()
    sections = dict(re.findall(r"\*\*`([\w/]+/)`\*\*\n\n((?:- .*\n)+)", text))
    missing = [str(m) for m in _modules()
               if f"- `{m.name}`:" not in sections.get(str(m.parent) + "/", "")]
    assert not missing, f"add these to docs/architecture.md: {missing}"


def test_the_walk_names_files_that_exist() -> None:
    walk = DOC.read_text().split("## The walk")[1].split("## Each concept")[0]
    named = set(re.findall(r"`((?:clio_stream|consumers|api)/[\w/]+\.py)`", walk))
    assert len(named) >= 10 and all((ROOT / n).exists() for n in named), named

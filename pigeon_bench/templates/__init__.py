"""The Jinja2 templates shipped with the package (the HTML report, the human-evaluation pages)."""

from __future__ import annotations

from typing import Any


def render(name: str, **context: Any) -> str:
    """Render template ``name`` of this package (autoescaped) with ``context``."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("pigeon_bench", "templates"), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True)
    return env.get_template(name).render(**context)

"""A griffe extension for the docs site: the docstrings' Sphinx roles as cross-references.

The docstrings are Google style with Sphinx roles in the prose (``:func:`load_policy```,
``:class:`~llm_mia.models.hf.LoadedModel```), which mkdocstrings would print as they are. Each role
becomes an optional autorefs cross-reference: a link where the target is documented on the site,
the name in code font where it is not (no warning: most modules are not on the site).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj|const):`(~?)([\w.]+)(?:\(\))?`")


def _identifier(obj: griffe.Object, target: str) -> str:
    """The full path of ``target`` as written in ``obj``'s docstring (absolute, or a sibling name)."""
    if target.startswith("llm_mia.") or target == "llm_mia":
        return target
    head = target.split(".")[0]
    for scope in (obj, obj.parent, obj.module):
        if scope is not None and head in getattr(scope, "members", {}):
            return f"{scope.path}.{target}"
    return target


class SphinxRoles(griffe.Extension):
    """Rewrite ``:role:`target``` in every docstring into an optional cross-reference."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is None:
            return

        def ref(m: re.Match) -> str:
            short, target = m.group(1), m.group(2)
            title = target.rsplit(".", 1)[-1] if short else target
            return f'<autoref identifier="{_identifier(obj, target)}" optional><code>{title}</code></autoref>'

        obj.docstring.value = _ROLE.sub(ref, obj.docstring.value)

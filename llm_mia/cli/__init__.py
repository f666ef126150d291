"""The ``llm-mia`` command line: one thin module per command group (imports deferred so ``--help`` is fast)."""

from llm_mia.cli.root import app, main

__all__ = ["app", "main"]

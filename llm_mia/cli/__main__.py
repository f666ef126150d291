"""``python -m llm_mia.cli``: the ``llm-mia`` command."""

from llm_mia.cli.root import main

main()

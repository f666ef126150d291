"""`llm-mia` command line: the root app, its global options and :func:`main`; each command lives in its own
module (``llm_mia.cli.train``, ``.audit``, ...), registered here, and parses its arguments and calls the library.

Exit codes, the same for every subcommand: 0 success (a gate passed), 1 a release-gate limit is
exceeded, 2 any error (bad input, a crash of ours or of a dependency, a dependency's ``SystemExit``,
Ctrl-C), printed as one line ``error: ...``; 3 an inconclusive gate (the audit could not have detected
a leak). Set ``LLM_MIA_DEBUG=1`` to see the traceback of an unexpected error.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from llm_mia.core.allocator import keep_freed_memory
from llm_mia.core.errors import LlmMiaError
from llm_mia.core.threads import apply_threads

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Audit language models for training-data leakage: extraction, canary exposure, "
                       "membership scoring.")


@app.callback()
def _global_options(
    threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads of torch (default: "
                                          "OMP_NUM_THREADS when set, else 1, the fastest on a busy machine; "
                                          "see llm_mia/core/threads.py)."),
):
    apply_threads(threads)
    keep_freed_memory()  # freed tensors stay in the process: no page faults batch after batch


from llm_mia.cli import audit, canaries, corpus, exposure, extract, gate, score, shadow, train  # noqa: E402

for _command in (train.train, extract.extract, score.score, exposure.exposure, audit.audit, audit.compare,
                 audit.defenses, audit.demo, gate.gate):
    app.command()(_command)
app.add_typer(corpus.corpus_app, name="corpus")
app.add_typer(canaries.canaries_app, name="canaries")
app.add_typer(shadow.shadow_app, name="shadow")


def main() -> None:
    """Console entry point: one-line errors, exit 2."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # our own progress bars and messages only
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        rc = app(standalone_mode=False)  # click returns (not raises) the code of typer.Exit here
    except LlmMiaError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        _fail("interrupted")
    except SystemExit as e:  # our own exits are typer.Exit (returned above): this is a dependency's sys.exit
        _fail(f"a dependency ended the program with SystemExit({e.code!r}){_raised_in(e)} before the command "
              "finished; nothing was gated (set LLM_MIA_DEBUG=1 for the traceback)", e)
    except Exception as e:  # click usage errors and anything unexpected
        import click

        if isinstance(e, click.exceptions.Exit) or type(e).__name__ == "Exit":
            sys.exit(getattr(e, "exit_code", 0))
        if isinstance(e, click.ClickException) or hasattr(e, "format_message"):  # typer may vendor click
            msg = " ".join(e.format_message().split())
            if msg:  # (no arguments at all: the help was printed, nothing more to say)
                typer.echo(f"error: {msg} (see --help)", err=True)
            sys.exit(2)
        if isinstance(e, click.exceptions.Abort) or type(e).__name__ == "Abort":
            _fail("interrupted")
        msg = " ".join(str(e).split()) or type(e).__name__
        _fail(f"{type(e).__name__}: {msg}{_raised_in(e)} (set LLM_MIA_DEBUG=1 for the traceback)", e)
    if rc == 130:  # typer turns Ctrl-C into Exit(130); no command of ours exits 130
        _fail("interrupted")
    if isinstance(rc, int) and not isinstance(rc, bool) and rc != 0:
        sys.exit(rc)


def _raised_in(e: BaseException) -> str:
    """' in <file>:<line>' of the frame that raised ``e`` (where a dependency's exit came from)."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return ""
    return f" in {Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}"


def _fail(msg: str, exc: BaseException | None = None) -> None:
    """Exit 2 with one line ``error: msg`` (the traceback too with LLM_MIA_DEBUG=1): every error,
    ours or a dependency's, is 2, never 1 (the gate's 'a limit is exceeded')."""
    if exc is not None and os.environ.get("LLM_MIA_DEBUG"):
        import traceback

        traceback.print_exception(exc)
    typer.echo(f"error: {msg}", err=True)
    sys.exit(2)


if __name__ == "__main__":
    main()

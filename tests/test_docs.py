"""The docs' examples work: the CLI tour runs, every other `llm-mia` command names real options.

Two kinds of `llm-mia` command appear in README.md and docs/**/*.md:

1. The tour, ``docs/examples/tour.sh``: the pages include its sections (pymdownx.snippets, markers
   ``# --8<-- [start:NAME]``), and README's CLI tour copies its lines. ``test_tour_section`` runs the
   script section by section in a temporary folder (toy sizes, one thread, no hub access) with the
   venv's ``llm-mia`` on PATH, and checks each section's exit status and the files it wrote.
2. Everything else (the option lists of the CLI page, the measured runs that take minutes or a GPU,
   an endpoint, vLLM): ``test_doc_commands_name_real_options`` finds every ``llm-mia`` command in a
   fenced block or an inline code span, and checks against the CLI itself (the click command tree of
   ``llm_mia.cli.root.app``, which is what ``--help`` prints) that each names a real command and only
   options that command has. Running those would take hours; a renamed or removed option fails here.

The Python tour, ``docs/examples/api_tour.py`` (included by docs/python-api.md, copied into README),
runs too (``test_api_tour_runs``); the notebook imports public names only.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import llm_mia

ROOT = Path(__file__).resolve().parents[1]
TOUR = ROOT / "docs" / "examples" / "tour.sh"
API_TOUR = ROOT / "docs" / "examples" / "api_tour.py"
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

_SECTION = re.compile(r"^# --8<-- \[start:([\w-]+)\]\n(.*?)^# --8<-- \[end:\1\]\n", re.M | re.S)


def tour_sections() -> dict[str, str]:
    return {m.group(1): m.group(2) for m in _SECTION.finditer(TOUR.read_text(encoding="utf-8"))}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _verdict(stdout: str) -> str:
    return next(x for x in stdout.splitlines()[::-1] if x.startswith(("PASS", "FAIL", "INCONCLUSIVE", "NO POLICY")))


_GATE_EXIT = {"PASS": 0, "FAIL": 1, "INCONCLUSIVE": 3}


def _check_corpus(d: Path, out: str) -> None:
    assert _jsonl(d / "corpus/train.jsonl") and _jsonl(d / "corpus/heldout.jsonl")
    counts = {s["count"] for s in json.loads((d / "corpus/secrets.json").read_text())}
    assert counts == {0, 2, 8, 32}  # --repeats 2,8,32 and the never-inserted controls


def _check_train(d: Path, out: str) -> None:
    for m in ("model", "reference"):
        assert (d / m / "model.safetensors").is_file() and (d / m / "config.json").is_file()
    assert json.loads((d / "reference/recipe.json").read_text())["reference"]


def _check_extract(d: Path, out: str) -> None:
    summary = json.loads((d / "extract/extract.json").read_text())
    assert summary["num_samples"] == 3 * 8 and summary["rankings"]
    assert len(_jsonl(d / "extract/samples.jsonl")) == 3 * 8


def _check_score(d: Path, out: str) -> None:
    n = len(_jsonl(d / "texts.jsonl"))
    assert len(_jsonl(d / "scores.jsonl")) == n
    assert 0 <= json.loads((d / "metrics.json").read_text())["signals"]["loss"]["auc"] <= 1
    assert (d / "roc.png").stat().st_size > 0


def _check_exposure(d: Path, out: str) -> None:
    rows = json.loads((d / "exposure/exposure.json").read_text())["rows"]
    assert len(rows) == len(json.loads((d / "corpus/secrets.json").read_text()))
    assert (d / "exposure/exposure.csv").is_file() and (d / "exposure/exposure.png").is_file()


def _check_audit(d: Path, out: str) -> None:
    for f in ("report.html", "report.md", "report.json", "modelcard.md", "exposure.png"):
        assert (d / "audit" / f).is_file(), f
    assert _verdict(out).startswith("NO POLICY")  # no --policy: exit 0, a summary line


def _check_gate(d: Path, out: str, rc: int) -> None:
    assert rc == _GATE_EXIT[_verdict(out).split(":")[0]]
    assert json.loads((d / "gate.sarif").read_text())["version"] == "2.1.0"
    assert ET.parse(d / "gate.xml").getroot().tag == "testsuites"


def _check_lora(d: Path, out: str) -> None:
    assert (d / "adapter/adapter_config.json").is_file() and (d / "adapter/adapter_model.safetensors").is_file()


def _check_audit_adapter(d: Path, out: str, rc: int) -> None:
    report = json.loads((d / "audit-adapter/report.json").read_text())
    assert report["provenance"]["reference_source"] == "adapter's base"
    assert rc == _GATE_EXIT[_verdict(out).split(":")[0]]
    assert (d / "audit-adapter.sarif").is_file() and (d / "audit-adapter.xml").is_file()


def _check_model_args(d: Path, out: str) -> None:
    assert len(_jsonl(d / "adapter-scores.jsonl")) == len(_jsonl(d / "texts.jsonl"))


def _check_shadow(d: Path, out: str) -> None:
    assert json.loads((d / "shadows/membership.json").read_text())["n_models"] == 2
    assert {"lira_online", "rmia_online", "shokri"} <= set(_jsonl(d / "shadow-scores.jsonl")[0]["scores"])


def _check_defenses(d: Path, out: str) -> None:
    assert json.loads((d / "dp/recipe.json").read_text())["dp"]
    assert json.loads((d / "dedup/recipe.json").read_text())["dedup"]


def _check_canaries(d: Path, out: str) -> None:
    assert len(_jsonl(d / "canaries.jsonl")) == 40 and (d / "planted/inclusion.json").is_file()
    res = json.loads((d / "canary-audit/canary-audit.json").read_text())
    assert res["n_canaries"] == 40 and res["audited_epsilon"] >= 0


#: section of tour.sh -> (exit statuses it may end with, its check). The gated sections end with the
#: verdict's status (1 FAIL or 3 INCONCLUSIVE at toy sizes); the check ties the status to the verdict.
EXPECTED = {
    "corpus": ({0}, _check_corpus),
    "train": ({0}, _check_train),
    "extract": ({0}, _check_extract),
    "score": ({0}, _check_score),
    "exposure": ({0}, _check_exposure),
    "audit": ({0}, _check_audit),
    "gate": ({0, 1, 3}, _check_gate),
    "lora": ({0}, _check_lora),
    "audit-adapter": ({0, 1, 3}, _check_audit_adapter),
    "model-args": ({0}, _check_model_args),
    "shadow": ({0}, _check_shadow),
    "defenses": ({0}, _check_defenses),
    "canaries": ({0}, _check_canaries),
}


def _llm_mia_bin(tmp: Path) -> Path:
    """The folder of the venv's ``llm-mia``; else a shim running this interpreter's ``-m llm_mia.cli``."""
    venv_bin = Path(sys.executable).parent
    if (venv_bin / "llm-mia").is_file():
        return venv_bin
    shim = tmp / "bin"
    shim.mkdir()
    (shim / "llm-mia").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m llm_mia.cli "$@"\n')
    (shim / "llm-mia").chmod(0o755)
    (shim / "python").symlink_to(sys.executable)
    return shim


def _env(bin_dir: Path) -> dict[str, str]:
    """This checkout's llm_mia first on the path, one thread, no hub access."""
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("LLM_MIA_DEBUG", None)
    return env


@pytest.fixture(scope="module")
def tour(tmp_path_factory):
    """Run tour.sh section by section in a fresh folder; stop at the first unexpected status."""
    work = tmp_path_factory.mktemp("tour")
    shutil.copytree(ROOT / "examples", work / "examples")
    env = _env(_llm_mia_bin(work))
    results = {}
    for name, script in tour_sections().items():
        t0 = time.monotonic()
        p = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=work, env=env,
                           capture_output=True, text=True, timeout=600)
        results[name] = (p.returncode, p.stdout, p.stderr, time.monotonic() - t0)
        if p.returncode not in EXPECTED.get(name, ({0}, None))[0]:
            break
    return work, results


def test_tour_sections_are_all_checked():
    assert list(tour_sections()) == list(EXPECTED)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_tour_section(tour, name):
    work, results = tour
    assert name in results, "an earlier section failed"
    rc, out, err, _ = results[name]
    allowed, check = EXPECTED[name]
    assert rc in allowed, f"`{name}` exited {rc}\n{out[-2000:]}\n{err[-3000:]}"
    if "rc" in check.__code__.co_varnames:
        check(work, out, rc)
    else:
        check(work, out)


# --- every other `llm-mia` command of the docs: real commands, real options -------------------------

_FENCE = re.compile(r"^([ \t]*)(```+)([\w-]*)[^\n]*\n(.*?)^\1\2[ \t]*$", re.M | re.S)
# a command line: `llm-mia ...` (after a prompt, a CI `run:`, environment variables or a path), or `-m llm_mia.cli`
_COMMAND = re.compile(r"^(?:\$\s+|-?\s*run:\s*)?(?:[A-Z_]+=\S*\s+)*(?:\S*/)?llm-mia(?:\s|$)|\s-m llm_mia\.cli(?:\.root)?(?:\s|$)")
_SPAN = re.compile(r"`([^`]+)`")  # a code span may wrap a line
_ALIASES = ("llm-mia", "llm_mia.cli.root", "llm_mia.cli")  # `python -m llm_mia.cli`, `accelerate launch -m ...`


def _join_continued(lines: list[str]) -> list[str]:
    """Lines with their continuations: a trailing backslash, or a next line that starts with an option."""
    out: list[str] = []
    for line in lines:
        s = line.strip()
        if out and (out[-1].endswith("\\") or s.startswith(("--", "[--"))):
            out[-1] = out[-1].rstrip("\\").rstrip() + " " + s
        else:
            out.append(s)
    return out


def _commands_in(text: str, spans: bool = True) -> list[str]:
    """Every ``llm-mia ...`` command of a markdown text: in fenced blocks (a line, with its
    continuations) and in inline code spans. Snippet includes (``--8<--``) are the tour's."""
    cmds, rest = [], text
    for m in _FENCE.finditer(text):
        for line in _join_continued(m.group(4).splitlines()):
            code = line.split(" # ")[0].strip() if not line.startswith("#") else ""
            if _COMMAND.search(code) and "--8<--" not in code:
                cmds.append(code)
        rest = rest.replace(m.group(0), "")
    for m in _SPAN.finditer(rest if spans else ""):
        span = " ".join(m.group(1).split())
        if re.match(r"(llm-mia|python -m llm_mia\.cli)(\s|$)", span):
            cmds.append(span)
    return cmds


def _cli():
    import typer.main

    from llm_mia.cli.root import app

    return typer.main.get_command(app)


def _options(cmd) -> set[str]:
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}


def check_command(line: str, root) -> list[str]:
    """What is wrong with one documented command: an unknown command, or an option it does not have."""
    toks = line.replace("\\", " ").split()
    start = next(i for i, t in enumerate(toks)
                 if t == "llm-mia" or t.endswith("/llm-mia") or (t in _ALIASES and i and toks[i - 1] == "-m"))
    cmd, i, problems = root, start + 1, []
    glob = _options(root)
    while hasattr(cmd, "commands"):  # a group: global options, then a command name
        while i < len(toks) and toks[i] in glob:
            i += 2 if toks[i] != "--help" else 1
        if i >= len(toks) or toks[i] in ("...", "--help"):
            return problems
        names = toks[i].split("|")
        unknown = [n for n in names if n not in cmd.commands]
        if unknown:
            return [f"unknown command {' '.join(toks[start:i + 1])!r}"]
        cmd, i = cmd.commands[names[0]], i + 1
        if len(names) > 1:  # `canaries make|plant|audit`: the options cannot be told apart
            return problems
    known = _options(cmd)
    for tok in toks[i:]:
        for part in tok.strip("[](),;").split("|"):
            part = part.strip("[](),;")
            if part.startswith("--") and len(part) > 2:
                opt = part.split("=")[0]
                if opt not in known:
                    problems.append(f"{opt} is not an option of `llm-mia {cmd.name}`")
    return problems


def doc_commands() -> list[tuple[str, str]]:
    return [(str(p.relative_to(ROOT)), c) for p in DOC_FILES for c in _commands_in(p.read_text(encoding="utf-8"))]


def test_doc_commands_name_real_options():
    root = _cli()
    found = doc_commands()
    assert len(found) > 50  # the parser still finds the docs' commands
    bad = [f"{where}: {cmd}\n    {'; '.join(problems)}" for where, cmd in found
           if (problems := check_command(cmd, root))]
    assert not bad, "\n".join(bad)


def test_the_command_check_catches_mistakes():
    root = _cli()
    assert check_command("llm-mia score --model m/ --input x --output y", root) == []
    assert check_command("llm-mia --threads 2 extract --model m/ --out o/ [--resume]", root) == []
    assert check_command("llm-mia score --model m/ --inptu x", root) == ["--inptu is not an option of `llm-mia score`"]
    assert check_command("llm-mia canaries mkae --n 3", root) == ["unknown command 'llm-mia canaries mkae'"]
    assert check_command("llm-mia frobnicate --x", root) == ["unknown command 'llm-mia frobnicate'"]
    assert check_command("accelerate launch -m llm_mia.cli.root extract --bogus 1", root) == \
        ["--bogus is not an option of `llm-mia extract`"]
    found = _commands_in("text `llm-mia gate r.json --policy p` and\n\n```bash\nllm-mia train --corpus c/ \\\n"
                         "   --out m/  # a comment --not-an-option\n```\n")
    assert found == ["llm-mia train --corpus c/ --out m/", "llm-mia gate r.json --policy p"]
    assert _commands_in("```yaml\nwith: { category: llm-mia }\nrun: >\n  llm-mia gate r.json\n  --policy p\n```\n") == \
        ["llm-mia gate r.json --policy p"]


def _normal(cmd: str) -> str:
    return " ".join(cmd.replace("\\", " ").split())


def test_readme_cli_tour_is_the_tested_script():
    """README's CLI tour is a copy of tour.sh's lines (README is not built by mkdocs: no snippets)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    tour_part = readme.split("## A five-minute tour of the CLI", 1)[1].split("\n## ", 1)[0]
    script_cmds = {_normal(c) for c in _join_continued(TOUR.read_text(encoding="utf-8").splitlines())}
    readme_cmds = _commands_in(tour_part, spans=False)  # the code blocks (prose may name `llm-mia demo`)
    assert len(readme_cmds) >= 8
    assert [c for c in readme_cmds if _normal(c) not in script_cmds] == []


def test_snippet_includes_name_real_sections():
    sections = set(tour_sections())
    for page in DOC_FILES:
        for m in re.finditer(r'--8<-- "docs/examples/tour\.sh:([\w-]+)"', page.read_text(encoding="utf-8")):
            assert m.group(1) in sections, (page, m.group(1))


def test_notebook_uses_the_public_api_only():
    """notebooks/walkthrough.ipynb imports llm_mia's public names only (``from llm_mia import ...``)."""
    nb = json.loads((ROOT / "notebooks" / "walkthrough.ipynb").read_text(encoding="utf-8"))
    imported = set()
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        for node in ast.walk(ast.parse("".join(cell["source"]))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("llm_mia"):
                assert node.module == "llm_mia", f"from {node.module} import ...: not the public API"
                imported |= {a.name for a in node.names}
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("llm_mia") for a in node.names)
    assert imported and imported <= set(llm_mia.__all__), imported - set(llm_mia.__all__)


def test_api_tour_runs(tmp_path):
    """docs/examples/api_tour.py runs top to bottom in a fresh folder and prints the gate's verdict."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    p = subprocess.run([sys.executable, str(API_TOUR)], cwd=tmp_path, env=_env(Path(sys.executable).parent),
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    status, _, code = p.stdout.strip().splitlines()[-1].partition(" exit ")
    assert _GATE_EXIT.get(status) == int(code)
    assert (tmp_path / "audit" / "report.html").is_file() and (tmp_path / "extract" / "extract.json").is_file()


def test_readme_api_tour_is_the_tested_script():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    tour_part = readme.split("## A five-minute tour of the Python API", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```python\n(.*?)```", tour_part, re.S).group(1)
    body = API_TOUR.read_text(encoding="utf-8").split('"""', 2)[2]
    assert block.strip() == body.strip()
    names = set(re.search(r"from llm_mia import \((.*?)\)", body, re.S).group(1).replace(",", " ").split())
    assert names <= set(llm_mia.__all__)

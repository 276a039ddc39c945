"""The README is a user's guide that works as written: under 200 lines, and every command in it exists.

Its code blocks (indented or fenced) are parsed: each `fer STEP ...` line's flags are in `fer STEP --help`,
each `make TARGET` is a Makefile target, each `papermill` line names a notebook and papermill's flags, the
Python compiles; every relative link (README and findings page) names a file of the checkout.
"""
import contextlib
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from fer_lib.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SHELL = ("fer ", "make ", "papermill ", "pip ", "python ", "mkdir ", "cp ")


def code_blocks(text: str) -> list[str]:
    """Fenced blocks, and indented blocks (4 spaces after a blank line) outside the fences."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].lstrip().startswith("```"):
            j = next(k for k in range(i + 1, len(lines)) if lines[k].lstrip().startswith("```"))
            blocks.append("\n".join(lines[i + 1:j]))
            i = j + 1
        elif lines[i].startswith("    ") and (i == 0 or not lines[i - 1].strip()):
            j = i
            while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                j += 1
            blocks.append("\n".join(line[4:] for line in lines[i:j]).strip("\n"))
            i = j
        else:
            i += 1
    return blocks


def shell_lines(block: str) -> list[list[str]]:
    """The block's commands as words: continuation lines joined, comments dropped, `a && b` split."""
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while "&&" in words:
            commands.append(words[:words.index("&&")])
            words = words[words.index("&&") + 1:]
        if words:
            commands.append(words)
    return commands


def is_shell(block: str) -> bool:
    return block.lstrip().startswith(SHELL)


def readme_commands(text: str) -> list[list[str]]:
    return [words for block in code_blocks(text) if is_shell(block) for words in shell_lines(block)]


def help_text(words: list[str]) -> str:
    """`fer STEP --help` (`fer report BLOCK --help` for report's blocks) through the CLI: exit 0, its text."""
    argv = words[1:3] if words[1] == "report" and len(words) > 2 and not words[2].startswith("-") else words[1:2]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0, f"fer {' '.join(argv)} --help exited {done.value.code}"
    return out.getvalue()


def flags(words: list[str]) -> list[str]:
    return [w.split("=", 1)[0] for w in words if re.match(r"--?[A-Za-z]", w)]


def missing_flags(words: list[str], help: str) -> list[str]:
    return [f for f in flags(words) if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", help)]


def test_readme_is_under_200_lines():
    assert len(README.read_text().splitlines()) < 200


def test_readme_has_the_commands_a_user_needs():
    commands = [" ".join(w[:2]) for w in readme_commands(README.read_text())]
    for needed in ("make setup", "make study-smoke", "make test", "make study", "make publish", "fer predict",
                   "fer video", "fer models", "fer study"):
        assert needed in commands, needed


@pytest.mark.parametrize("words", [w for w in readme_commands(README.read_text()) if w[0] == "fer"],
                         ids=lambda w: " ".join(w)[:60])
def test_readme_fer_commands_exist_with_their_flags(words):
    assert not missing_flags(words, help_text(words)), f"{' '.join(words)}: not in fer {words[1]} --help"


def test_readme_inline_fer_commands_exist_with_their_flags():
    """`fer ...` in the prose's code spans too (the reproduce lines, the study's flags)."""
    text = README.read_text()
    spans = [shlex.split(s) for s in re.findall(r"`(fer [a-z]+[^`]*)`", text)]
    for words in spans:
        assert not missing_flags(words, help_text(words)), f"{' '.join(words)}: not in fer {words[1]} --help"


def test_readme_cheap_commands_run():
    """`fer models` reads only the files the checkout carries: it runs here as a user would run it."""
    assert ["fer", "models"] in readme_commands(README.read_text())
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(["models"]) == 0
    assert "vgg_crop44_int8_fer2013" in out.getvalue()


def test_a_wrong_flag_is_caught():
    words = shlex.split("fer video --source 0 --shwo")
    assert missing_flags(words, help_text(words)) == ["--shwo"]
    assert main(["nosuchstep", "--help"]) == 2   # an unknown step: the list of steps, and exit 2


def test_readme_make_targets_are_in_the_makefile():
    targets = set(re.findall(r"^([\w.-]+):", (ROOT / "Makefile").read_text(), re.M))
    for words in readme_commands(README.read_text()):
        if words[0] == "make":
            named = [w for w in words[1:] if "=" not in w and not w.startswith("-")]
            assert named and set(named) <= targets, f"{' '.join(words)}: not a Makefile target"


def test_readme_papermill_lines_name_a_notebook_and_papermills_flags():
    lines = [w for w in readme_commands(README.read_text()) if w[0] == "papermill"]
    assert lines
    papermill = Path(sys.executable).parent / "papermill"
    help = subprocess.run([str(papermill), "--help"], capture_output=True, text=True).stdout \
        if papermill.exists() else None
    for words in lines:
        assert (ROOT / words[1]).is_file(), words[1]
        source = (ROOT / words[1]).read_text()
        for name in [words[i + 1] for i, w in enumerate(words) if w in ("-p", "--parameters")]:
            assert f'"{name} = ' in source, f"{words[1]} has no parameter {name}"   # the parameters cell
        if help:
            assert not missing_flags(words, help), f"{' '.join(words)}: not in papermill --help"


def test_readme_pip_extras_exist():
    pyproject = (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]", 1)[1]
    named = re.findall(r"pip install (?:-e )?'\.\[(\w+)\]'", README.read_text())
    assert named
    for extra in named:
        assert re.search(rf"^{extra} = \[", pyproject, re.M), f"pyproject.toml has no extra {extra!r}"


def test_readme_python_compiles_and_names_what_fer_lib_has():
    import importlib
    text = README.read_text()
    python = [b for b in code_blocks(text) if not is_shell(b)]
    assert python
    for block in python:
        compile(block, "README", "exec")
    for dotted in set(re.findall(r"\bfer_lib(?:\.\w+)+", text)):
        parts = dotted.split(".")
        module, attrs = next((m, parts[i:]) for i in range(len(parts), 0, -1)
                             if (m := _import(".".join(parts[:i]), importlib)) is not None)
        for attr in attrs:
            module = getattr(module, attr)   # AttributeError names what the README got wrong


def _import(name, importlib):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        return None


def _tracked() -> set[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True)
    if out.returncode:
        pytest.skip("not a git checkout")
    return set(out.stdout.splitlines())


def _anchors(md: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.*)$", md.read_text(), re.M)}


@pytest.mark.parametrize("page", ["README.md", "reports/findings.md"])
def test_relative_links_name_files_of_the_checkout(page):
    tracked = _tracked()
    folders = {str(Path(f).parent) for f in tracked}
    for link in re.findall(r"\]\(([^)\s]+)\)", (ROOT / page).read_text()):
        if re.match(r"[a-z]+:", link):
            continue
        path, _, anchor = link.partition("#")
        target = (ROOT / page).parent / path if path else ROOT / page
        rel = target.resolve().relative_to(ROOT).as_posix()
        assert rel in tracked or rel in folders, f"{page}: {link} is not a file of the checkout"
        if anchor and rel.endswith(".md"):
            assert anchor in _anchors(ROOT / rel), f"{page}: {link}: no such heading"

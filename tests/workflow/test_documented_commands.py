"""Every `snakemake ...` command the docs show parses as meant.

Snakemake's ``--configfile`` takes one or more values, so a target written after it
(``snakemake --configfile c.yaml paper``) is read as a second config file and the run stops with
"No such file or directory: 'paper'". The README once showed the paper target that way.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [
    ROOT / "README.md",
    ROOT / "config" / "README.md",
    ROOT / "Snakefile",
    *sorted((ROOT / "config").glob("*.yaml")),
]


def _rule_names() -> set[str]:
    names = set()
    for path in [ROOT / "Snakefile", *(ROOT / "workflow" / "rules").glob("*.smk")]:
        names |= set(re.findall(r"^rule (\w+):", path.read_text(), flags=re.MULTILINE))
    return names


def _commands(text: str) -> list[str]:
    """`snakemake ...` in backticks, and lines of code blocks or comments starting with it."""
    found = re.findall(r"`(snakemake [^`]+)`", text)
    for line in text.splitlines():
        line = line.lstrip("# ").strip()
        if line.startswith("snakemake ") and "`" not in line:
            found.append(line)
    commands = []
    for command in found:
        for part in re.split(r"&&|;", re.split(r" #|\s+\(", command)[0]):
            part = part.strip().rstrip(".,:)")
            if part.startswith("snakemake "):
                commands.append(part)
    return commands


def _documented() -> list[tuple[str, str]]:
    return [(path.relative_to(ROOT).as_posix(), cmd) for path in DOCS for cmd in _commands(path.read_text())]


def test_the_docs_show_the_paper_commands():
    commands = [cmd for _, cmd in _documented()]
    assert any("paper" in shlex.split(cmd)[1:2] for cmd in commands), commands
    assert len(commands) > 20


@pytest.mark.parametrize(("doc", "command"), _documented())
def test_a_documented_command_parses_with_its_targets_as_targets(doc, command):
    from snakemake.cli import get_argument_parser

    words = shlex.split(re.sub(r"<(\w+)>", r"\1.yaml", command))[1:]
    args = get_argument_parser().parse_args(words)
    for configfile in args.configfile or []:
        assert str(configfile).endswith((".yaml", ".yml")), (
            f"{doc}: `{command}` reads {configfile!r} as a config file (put targets before --configfile)"
        )
    unknown = set(args.targets or []) - _rule_names()
    assert not unknown, f"{doc}: `{command}` names targets that are not rules: {unknown}"

"""The command examples of README.md and docs/user-guide.md, for the tests that keep them
true (issue 16, point 5): tests/test_doc_commands.py parses every one with the real CLI,
and tests/sandbox/test_dev_mode.py runs the blocks marked to run in the sandbox.

A fenced block that shows a ``dbaccess`` command is preceded by one of two markers:

    <!-- runs: tests/sandbox/test_dev_mode.py -->    the test named runs its commands
    <!-- illustrative: why -->                        not run: a real company's broker, a
                                                      production target, an error shown
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = (ROOT / "README.md", ROOT / "docs" / "user-guide.md")
MARKER = re.compile(r"^<!-- (runs|illustrative): (.+?) -->$")
# a command as the docs write it: at a prompt ("$ "), or alone on a line of a code block,
# or in the output of $(...) handed to eval
COMMAND = re.compile(r"^(?:\$ )?(?:eval \"\$\()?(dbaccess(?= |$).*?)(?:\)\")?$")


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # of the opening fence, 1-based
    marker: tuple[str, str] | None  # ("runs" | "illustrative", what follows)
    lines: tuple[str, ...]

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"

    def commands(self) -> list[str]:
        found = []
        for line in self.lines:
            match = COMMAND.match(line.strip())
            if match:
                found.append(match[1])
        return found

    def prompts(self) -> list[str]:
        """The lines at a prompt, without it (what a person types, in order)."""
        return [line[2:] for line in self.lines if line.startswith("$ ")]


def blocks(doc: Path) -> list[Block]:
    found = []
    lines = doc.read_text().splitlines()
    index = 0
    while index < len(lines):
        if lines[index].startswith("```"):
            start = index
            index += 1
            while not lines[index].startswith("```"):
                index += 1
            before = lines[start - 1].strip() if start else ""
            marker = MARKER.match(before)
            found.append(
                Block(
                    doc,
                    start + 1,
                    (marker[1], marker[2]) if marker else None,
                    tuple(lines[start + 1 : index]),
                )
            )
        index += 1
    return found


def inline_commands(doc: Path) -> list[tuple[int, str]]:
    """``dbaccess ...`` in backticks in the prose, with their line numbers."""
    found = []
    for number, line in enumerate(doc.read_text().splitlines(), 1):
        for match in re.finditer(r"`(dbaccess [^`]+)`", line):
            found.append((number, match[1]))
    return found


def as_arguments(command: str) -> list[str]:
    """The arguments after ``dbaccess`` of a command as the docs write it, synopses
    included: ``[--duration 30m]`` counts as given, ``a|b`` as its first choice, ``N`` as
    a number; a pipe, a redirection or a comment ends the command."""
    command = re.sub(r"\s#\s.*$", "", command)
    command = command.replace("\\|", "|")
    command = re.sub(r"(\S+)\|\S+", r"\1", command)  # md|json|html: md
    command = command.replace("[", " ").replace("]", " ")
    words = shlex.split(command)
    for stop, word in enumerate(words):
        if word in ("|", ">", "2>", ";", "&&") or word.startswith(("2>", ">")):
            words = words[:stop]
            break
    assert words and words[0] == "dbaccess", command
    return [PLACEHOLDERS.get(w, w) for w in words[1:]]


# what the synopses write where a number goes; "..." stands for whatever the reader puts
PLACEHOLDERS = {"N": "1", "P": "15432", "SEQ": "0", "...": "X"}

"""The user guide's dump examples, run as written (but on the sandbox's targets) with the
real pg_dump and mysqldump as the read-only role: the dump holds the tables, and stderr
holds nothing but dbaccess's own two notices."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.e2e.conftest import Cli

pytestmark = pytest.mark.integration

GUIDE = Path(__file__).parents[2] / "docs" / "user-guide.md"
SANDBOX_TARGET = {"pg_dump": "demo", "mysqldump": "shop"}


def guide_examples(tool: str) -> list[list[str]]:
    """``dbaccess exec TARGET ... -- TOOL ...`` lines of the guide, target replaced by the
    sandbox's one for that tool."""
    found = []
    for line in GUIDE.read_text().splitlines():
        words = shlex.split(line) if line.startswith("dbaccess exec ") else []
        if "--" in words and words[words.index("--") + 1] == tool:
            words[2] = SANDBOX_TARGET[tool]
            found.append(words[1:])
    assert found, f"the user guide shows no exec example with {tool}"
    return found


def foreign_stderr(stderr: str) -> list[str]:
    """stderr lines that are not dbaccess's 'connected as' and 'session revoked' notices."""
    return [line for line in stderr.splitlines() if not line.startswith("dbaccess: ")]


@pytest.mark.parametrize("args", guide_examples("pg_dump"), ids=" ".join)
def test_pg_dump_examples_of_the_guide(cli: Cli, args: list[str]) -> None:
    result = cli.run(*args)
    assert result.returncode == 0, result.stderr
    assert foreign_stderr(result.stderr) == []
    assert "CREATE TABLE public.orders" in result.stdout
    if "--schema-only" in args:
        assert "COPY public.orders" not in result.stdout
    else:  # the data too, and where the sequence stands
        assert re.search(r"^COPY public\.orders .* FROM stdin;$", result.stdout, re.M)
        assert "\tada\t" in result.stdout
        assert "setval('public.orders_id_seq'" in result.stdout


@pytest.mark.parametrize("args", guide_examples("mysqldump"), ids=" ".join)
def test_mysqldump_examples_of_the_guide(cli: Cli, args: list[str]) -> None:
    result = cli.run(*args)
    assert result.returncode == 0, result.stderr
    # no "unknown variable", "ignoring option" or LOCK TABLES complaint
    assert foreign_stderr(result.stderr) == []
    assert "CREATE TABLE `orders`" in result.stdout
    assert "INSERT INTO `orders` VALUES" in result.stdout
    assert "'ada'" in result.stdout
    assert re.search(r"CREATE .*VIEW `big_orders`", result.stdout)  # SHOW VIEW granted
    assert "-- Dump completed" in result.stdout


def test_the_mariadb_client_reads_the_option_file_without_warnings(cli: Cli) -> None:
    result = cli.run(
        "connect",
        "shop",
        "--role",
        "readonly",
        "--",
        "-N",
        "-e",
        "select database(), count(*) > 0 from big_orders",
    )
    assert result.returncode == 0, result.stderr
    assert foreign_stderr(result.stderr) == []
    assert result.stdout.split() == ["shop", "1"]

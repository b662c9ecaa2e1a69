"""What the package index and a fresh install show: the sdist, its metadata and README
links, and ``dbaccess-broker`` without the ``[broker]`` extra."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
REPOSITORY = PYPROJECT["project"]["urls"]["Source"]
# Where the sdist's own tests find what they read, besides the package itself.
SHIPPED_TREES = ("dbaccess", "tests", "docs", "completions", "scripts", "bench")
NEVER_SHIPPED = ("node_modules", "__pycache__", ".pyc")


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Build the sdist as a release would (``python -m build --sdist``) and read it."""
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--sdist",
            "--no-isolation",
            "--outdir",
            str(out),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (archive,) = out.glob("dbaccess-*.tar.gz")
    files: dict[str, bytes] = {}
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if member.isfile():
                handle = tar.extractfile(member)
                assert handle is not None
                files[member.name.partition("/")[2]] = handle.read()
    return files


def source_files() -> set[str]:
    found = set()
    for tree in SHIPPED_TREES:
        for path in (ROOT / tree).rglob("*"):
            relative = path.relative_to(ROOT).as_posix()
            if path.is_file() and not any(
                part in relative for part in (*NEVER_SHIPPED, ".egg-info")
            ):
                found.add(relative)
    return found


def test_sdist_carries_what_its_tests_need(sdist: dict[str, bytes]) -> None:
    missing = source_files() - set(sdist)
    assert not missing, f"not in the sdist (MANIFEST.in): {sorted(missing)[:10]}"
    for needed in (
        "LICENSE",
        "README.md",
        "CHANGELOG.md",
        "pyproject.toml",
        "tests/idp/package.json",
        "tests/idp/package-lock.json",
        "tests/idp/server.mjs",
        "completions/dbaccess.bash",
        "docs/commands.md",
        "scripts/gen_command_reference.py",
        "dbaccess/broker/store/migrations/script.py.mako",
    ):
        assert needed in sdist, needed
    junk = [name for name in sdist if any(part in name for part in NEVER_SHIPPED)]
    assert not junk, junk


def test_sdist_metadata_names_license_urls_and_classifiers(sdist: dict[str, bytes]) -> None:
    info = sdist["PKG-INFO"].decode()
    assert "License-Expression: Apache-2.0" in info
    assert "License-File: LICENSE" in info
    assert f"Project-URL: Source, {REPOSITORY}" in info
    assert "Project-URL: Issues, " in info
    assert "Classifier: Topic :: Database" in info
    assert "Classifier: Programming Language :: Python :: 3.11" in info
    assert sdist["LICENSE"].decode().lstrip().startswith("Apache License")
    assert "Version 2.0, January 2004" in sdist["LICENSE"].decode()


def test_readme_links_work_on_the_package_index() -> None:
    """PyPI renders README.md without the repository: a relative link is a dead link."""
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    assert links
    relative = [link for link in links if not link.startswith(("https://", "http://", "#"))]
    assert not relative, f"relative links in README.md: {relative}"
    assert REPOSITORY.startswith("https://github.com/")
    for link in links:
        if link.startswith(REPOSITORY + "/blob/main/"):
            target = link.removeprefix(REPOSITORY + "/blob/main/").partition("#")[0]
            assert (ROOT / target).is_file(), f"README.md links to a missing file: {link}"
    # one canonical address: the same repository in every [project.urls] entry
    assert all(url.startswith(REPOSITORY) for url in PYPROJECT["project"]["urls"].values())


# Imports of the [broker] extra fail as they do in an install without it.
BLOCKER = """
import importlib.abc, sys
BLOCKED = {blocked!r}
class _Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, _Missing())
"""


def run_broker_entry(
    tmp_path: Path, *args: str, blocked: tuple[str, ...]
) -> subprocess.CompletedProcess[str]:
    """Run the ``dbaccess-broker`` entry point pyproject.toml declares, in a Python where
    ``blocked`` modules cannot be imported (a sitecustomize on PYTHONPATH)."""
    (tmp_path / "sitecustomize.py").write_text(BLOCKER.format(blocked=set(blocked)))
    module, _, function = PYPROJECT["project"]["scripts"]["dbaccess-broker"].partition(":")
    code = (
        f"import sys; sys.argv[0] = 'dbaccess-broker'; from {module} import {function}; "
        f"{function}()"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )


BROKER_EXTRA = (
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlalchemy",
    "alembic",
    "jwt",
    "psycopg",
    "psycopg_pool",
    "pymysql",
    "prometheus_client",
    "httptools",
    "uvloop",
)


@pytest.mark.parametrize("command", [["serve"], ["check-config", "--offline"]])
def test_broker_without_its_extra_says_what_to_install(tmp_path: Path, command: list[str]) -> None:
    config = tmp_path / "broker.toml"
    # the store's URL is checked with sqlalchemy, part of the extra
    config.write_text(
        '[broker]\nstore = "sqlite:///b.db"\n[identity]\n'
        'issuer = "https://idp.example"\nclient_id = "x"\n[targets]\n'
    )
    result = run_broker_entry(tmp_path, *command, "--config", str(config), blocked=BROKER_EXTRA)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert "error: dbaccess-broker needs the broker's dependencies" in result.stderr
    assert "hint: pip install 'dbaccess[broker]'" in result.stderr


def test_broker_help_and_version_work_without_its_extra(tmp_path: Path) -> None:
    from dbaccess import __version__

    version = run_broker_entry(tmp_path, "--version", blocked=BROKER_EXTRA)
    assert (version.returncode, version.stdout) == (0, f"dbaccess-broker {__version__}\n")
    helped = run_broker_entry(tmp_path, "serve", "--help", blocked=BROKER_EXTRA)
    assert helped.returncode == 0, helped.stderr
    assert "Usage: dbaccess-broker serve" in helped.stdout


def test_a_missing_module_that_is_not_the_extra_keeps_its_traceback(tmp_path: Path) -> None:
    """Only the extra's modules get the install hint; anything else is a bug to report."""
    result = run_broker_entry(tmp_path, "--help", blocked=("typer",))
    assert result.returncode == 1
    assert "ModuleNotFoundError" in result.stderr
    assert "dbaccess[broker]" not in result.stderr


def test_wheel_has_the_package_data_and_the_broker_shim(tmp_path: Path) -> None:
    import zipfile

    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = tmp_path.glob("dbaccess-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        info = archive.read(metadata).decode()
    assert "dbaccess/broker/store/migrations/script.py.mako" in names
    assert not [n for n in names if n.startswith("tests/")]
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "dbaccess-broker = dbaccess.broker.entry:broker_main" in scripts
    assert "dbaccess = dbaccess.cli.entry:main" in scripts
    assert "License-Expression: Apache-2.0" in info


def test_sdist_and_wheel_pass_twine_check(tmp_path: Path) -> None:
    """What PyPI would refuse or render badly (the README as the long description, the
    metadata fields) fails here first: ``python -m build`` then ``twine check --strict``."""
    built = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    made = sorted(p.name for p in tmp_path.iterdir())
    assert [n for n in made if n.endswith(".whl")] and [n for n in made if n.endswith(".tar.gz")]
    checked = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, tmp_path.iterdir())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count("PASSED") == 2, checked.stdout

"""Developer sessions: `nox -s tests`, `nox -s lint`, `nox -s typecheck`, `nox -s benchmarks`,
`nox -s realserver`, `nox -s torture`.

Each session installs the project the way the README tells a newcomer to, so a session
that passes here passes from a fresh clone too.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"
LINT_PATHS = ["crew", "tests", "benchmarks", "migrations", "noxfile.py"]
OWN_SESSION = {"workers.py"}
"""Benchmarks with a session of their own (they need a PostgreSQL database to wipe)."""


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite; extra arguments go to pytest (`nox -s tests -- -k plan`)."""
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Lint and check formatting without changing files."""
    session.install("-e", ".[dev]")
    session.run("ruff", "check", *LINT_PATHS)
    session.run("ruff", "format", "--check", *LINT_PATHS)


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """Strict type checking of the package."""
    session.install("-e", ".[dev]")
    session.run("mypy", "crew")


@nox.session(python=PYTHON)
def benchmarks(session: nox.Session) -> None:
    """Run every benchmark script (but workers.py: `nox -s workers_bench`); each prints one
    JSON line (see docs/benchmarks.md)."""
    session.install("-e", ".[dev]")
    scripts = sorted(
        p
        for p in Path("benchmarks").glob("*.py")
        if not p.name.startswith("_") and p.name not in OWN_SESSION
    )
    if not scripts:
        session.error("no benchmark scripts in benchmarks/")
    for script in scripts:
        session.run("python", str(script))


@nox.session(python=PYTHON)
def realserver(session: nox.Session) -> None:
    """The tests against a real llama.cpp server only, with the extra they need (its first
    install compiles for several minutes; pip caches the wheel)."""
    session.install("-e", ".[dev]")
    session.install("-e", ".[realserver]")
    session.run("pytest", "-m", "realserver", "-ra", *session.posargs)


@nox.session(python=PYTHON)
def workers_bench(session: nox.Session) -> None:
    """Worker processes: throughput with 1, 2 and 4 workers, claim-to-first-node latency,
    recovery after SIGKILL (benchmarks/workers.py; one JSON line, see docs/benchmarks.md).

    PostgreSQL from CREW_TEST_DATABASE_URL or `-- --database-url URL`: its public schema
    is dropped and recreated, so give it a database the tests may wipe too. Without one,
    only the SQLite latency is measured.
    """
    session.install("-e", ".[dev]")
    session.run("python", "benchmarks/workers.py", *session.posargs)


TORTURE_FILES = ["tests/test_crash_anywhere.py", "tests/test_concurrent_writers.py"]
TORTURE_ENV = {"CREW_TORTURE_TRIALS": "30", "CREW_TORTURE_SECONDS": "60"}


@nox.session(python=PYTHON)
def torture(session: nox.Session) -> None:
    """The crash-anywhere and concurrent-writers suites with large numbers: 30 SIGKILL
    trials and 60 s of concurrent writers (the default suite runs 5 and 10 s). The
    environment overrides them (`CREW_TORTURE_TRIALS=100 nox -s torture`), and
    CREW_CRASH_SEED / CREW_CONCURRENCY_SEED pick other seeds; extra arguments go to pytest."""
    session.install("-e", ".[dev]")
    env = {name: os.environ.get(name) or value for name, value in TORTURE_ENV.items()}
    session.run("pytest", "-s", *TORTURE_FILES, *session.posargs, env=env)

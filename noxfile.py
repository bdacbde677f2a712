"""Developer sessions: `nox -s tests`, `nox -s lint`, `nox -s typecheck`, `nox -s benchmarks`,
`nox -s realserver`.

Each session installs the project the way the README tells a newcomer to, so a session
that passes here passes from a fresh clone too.
"""

from __future__ import annotations

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

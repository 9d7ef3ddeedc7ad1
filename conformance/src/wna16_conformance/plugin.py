"""The pytest plugin (entry point ``pytest11``): options, backend resolution, parametrization, filters, report.

Loaded into every pytest run of an environment where wna16-conformance is installed, so it does nothing until a
conformance test asks for the ``conformance`` fixture: backends are resolved lazily, on first use.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from importlib import metadata
from typing import Any

import pytest

from wna16.errors import Wna16Error
from wna16.registry import default_registry, load_object
from wna16_conformance import report
from wna16_conformance.cells import CHECKS, Target, targets
from wna16_conformance.data import Case
from wna16_conformance.filters import FilterEntry, FilterError, backend_filter_path, decide, load
from wna16_conformance.record import PROPERTY, TestRecord
from wna16_conformance.runner import PROFILES, BackendUnderTest, Context, Runner

CONTEXT = pytest.StashKey[Context]()
COLLECTOR = pytest.StashKey[report.Collector]()
STARTED = pytest.StashKey[float]()
RUNNER = pytest.StashKey[Runner]()


def pytest_addoption(parser: pytest.Parser) -> None:
    """The ``--wna16-*`` options."""
    g = parser.getgroup("wna16", "wna16 conformance suite")
    g.addoption("--wna16-backend", action="append", default=[], metavar="NAME",
                help="backend to test: entry-point name or package.module:object (repeatable); "
                     "default: every installed backend available on the device")  # fmt: skip
    g.addoption("--wna16-device", default="cpu", help="device string, e.g. cpu, cuda:0 (default cpu)")
    g.addoption("--wna16-profile", default="ci", choices=sorted(PROFILES),
                help="hypothesis profile: ci (derandomized, fixed examples), dev, thorough")  # fmt: skip
    g.addoption("--wna16-max-dim", type=int, default=None, metavar="N",
                help="cap K and N (e.g. 512 for the Triton interpreter); larger edge tests are skipped")  # fmt: skip
    g.addoption("--wna16-report", default=None, metavar="PATH", help="write the JSON report here")
    g.addoption("--wna16-filter", action="append", default=[], metavar="PATH",
                help="filter file (TOML) of skips and tolerance multipliers (repeatable)")  # fmt: skip
    g.addoption("--wna16-case", default=None, metavar="CASE",
                help="rerun one case (from a repro line) instead of drawing cases")  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker-free plugin state."""
    config.stash[COLLECTOR] = report.Collector()
    config.stash[STARTED] = time.time()


def _distribution(obj: object) -> tuple[str, str]:
    top = type(obj).__module__.split(".")[0]
    for dist in metadata.packages_distributions().get(top, []):
        return dist, metadata.version(dist)
    return f"(module {top})", ""


def _resolve(config: pytest.Config) -> list[BackendUnderTest]:
    device = config.getoption("wna16_device")
    names: list[str] = config.getoption("wna16_backend")
    registry = default_registry()
    out: list[BackendUnderTest] = []
    if not names:
        for entry in registry.entries():
            if entry.backend is not None and entry.backend.available(device):
                out.append(BackendUnderTest(entry.name, entry.name, entry.backend, entry.distribution, entry.version,
                                            entry.backend.available(device)))  # fmt: skip
        if not out:
            raise pytest.UsageError(
                f"wna16: no installed backend is available on {device}; name one with --wna16-backend"
            )
    for name in names:
        try:
            backend = load_object(name) if ":" in name else registry.get(name)
        except Wna16Error as exc:
            raise pytest.UsageError(f"--wna16-backend={name}: {exc}") from exc
        dist, version = _distribution(backend)
        for entry in registry.entries():
            if entry.backend is not None and type(entry.backend) is type(backend):
                dist, version = entry.distribution, entry.version
        out.append(BackendUnderTest(backend.name, name, backend, dist, version, backend.available(device)))
    seen = [b.name for b in out]
    if len(set(seen)) != len(seen):
        raise pytest.UsageError(f"--wna16-backend: two backends share a name: {seen}")
    try:
        for b in out:
            path = backend_filter_path(b.backend)
            b.filters = load(path, b.name) if path is not None else []
    except FilterError as exc:
        raise pytest.UsageError(str(exc)) from exc
    return out


def context(config: pytest.Config) -> Context:
    """The session's context, built on first use."""
    if CONTEXT not in config.stash:
        files: list[str] = config.getoption("wna16_filter")
        try:
            entries = [e for f in files for e in load(f)]
            replay_text = config.getoption("wna16_case")
            replay = Case.parse(replay_text) if replay_text else None
        except (FilterError, ValueError) as exc:
            raise pytest.UsageError(str(exc)) from exc
        config.stash[CONTEXT] = Context(
            _resolve(config), config.getoption("wna16_device"), config.getoption("wna16_profile"),
            config.getoption("wna16_max_dim"), entries, files, replay,
        )  # fmt: skip
    return config.stash[CONTEXT]


def unmatched(ctx: Context) -> list[str]:
    """Warnings for filter entries that match no test of any backend under test."""
    names = [(b, t.test_name) for b in ctx.backends for check in CHECKS for t in targets(check)]
    used: set[FilterEntry] = set()
    for b, name in names:
        used.update(decide(ctx.entries_for(b), b.name, name).applied)
    every = {e for b in ctx.backends for e in ctx.entries_for(b)}
    return [
        f"filter entry {e.id} (match {e.match!r}) matches no test" for e in sorted(every - used, key=lambda e: e.id)
    ]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize every conformance test over (backend under test) x (its check's targets)."""
    if "wna16_target" not in metafunc.fixturenames:
        return
    ctx = context(metafunc.config)
    check = metafunc.function.__name__.removeprefix("test_")
    params = [(b, t) for b in ctx.backends for t in targets(check)]
    metafunc.parametrize("wna16_target", params, ids=[f"{b.name}-{t.key}" for b, t in params])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests a filter entry skips (they show as skipped, with the entry and its reason)."""
    for item in items:
        param = _param(item)
        if param is None:
            continue
        b, target = param
        decision = decide(context(config).entries_for(b), b.name, target.test_name)
        if decision.skip is not None:
            item.add_marker(pytest.mark.skip(reason=f"filter {decision.skip.id}: {decision.skip.reason}"))


def _param(item: pytest.Item) -> tuple[BackendUnderTest, Target] | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None or "wna16_target" not in callspec.params:
        return None
    value: tuple[BackendUnderTest, Target] = callspec.params["wna16_target"]
    return value


@pytest.fixture
def conformance(request: pytest.FixtureRequest, wna16_target: tuple[BackendUnderTest, Target]) -> Runner:
    """The runner of one conformance test (backend, cell, filters, recording, repro)."""
    b, target = wna16_target
    ctx = context(request.config)
    runner = Runner(ctx, b, target, decide(ctx.entries_for(b), b.name, target.test_name), request.node)
    request.node.stash[RUNNER] = runner
    return runner


def _record(item: pytest.Item, rep: pytest.TestReport) -> TestRecord | None:
    param = _param(item)
    if param is None:
        return None
    runner = item.stash.get(RUNNER, None)
    if runner is not None:
        record = runner.as_record()
    else:
        b, target = param
        decision = decide(context(item.config).entries_for(b), b.name, target.test_name)
        record = TestRecord.of(b.name, target, decision.multiplier, [e.id for e in decision.applied])
    if rep.skipped and isinstance(rep.longrepr, tuple):
        record.skip_reason = str(rep.longrepr[2]).removeprefix("Skipped: ")
    return record


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """Attach the test's record to the report of its call phase (or of a setup that skipped or failed)."""
    rep = yield
    if rep.when == "call" or (rep.when == "setup" and not rep.passed):
        record = _record(item, rep)
        if record is not None:
            rep.user_properties = [*rep.user_properties, (PROPERTY, record.to_json())]
    return rep


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """On the controller: collect records; a worker crash (xdist) fails the test's cell."""
    config = _CONFIG[0] if _CONFIG else None
    if config is None or hasattr(config, "workerinput"):
        return
    props = [TestRecord.from_json(str(v)) for k, v in report.user_properties if k == PROPERTY]
    collector = config.stash[COLLECTOR]
    if props:
        collector.add(props[-1], report.outcome, str(report.longrepr or ""))
    elif report.failed and report.when not in ("setup", "call", "teardown") and _is_conformance(report.nodeid):
        crashed = _crashed_record(config, report.nodeid)
        if crashed is not None:
            collector.add(crashed, "failed")


def _is_conformance(nodeid: str) -> bool:
    """Whether a node id is one of the suite's tests (checked before resolving backends for a crash report)."""
    return nodeid.split("::")[0].endswith(tuple(f"test_{check}.py" for check in CHECKS))


def _crashed_record(config: pytest.Config, nodeid: str) -> TestRecord | None:
    ctx = context(config)
    for b in ctx.backends:
        for check in CHECKS:
            for t in targets(check):
                if nodeid.endswith(f"::test_{check}[{b.name}-{t.key}]"):
                    record = TestRecord.of(b.name, t)
                    record.crashed = True
                    return record
    return None


_CONFIG: list[pytest.Config] = []


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Remember the config for the report hooks that do not receive it."""
    _CONFIG[:] = [session.config]


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Write the report on the controller when ``--wna16-report`` is given."""
    config = session.config
    path = config.getoption("wna16_report")
    if path is None or hasattr(config, "workerinput"):
        return
    ctx = context(config)
    workers = getattr(config.option, "numprocesses", None) or 0
    run = report.run_block(config.stash[STARTED], time.time(), workers if isinstance(workers, int) else -1)
    data = report.build(ctx, config.stash[COLLECTOR], unmatched(ctx), run)
    report.write(path, data)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Say where the report went, which filter entries matched nothing and which shape classes a
    ``--wna16-max-dim`` kept from running."""
    if CONTEXT not in config.stash:
        return
    for line in [*unmatched(config.stash[CONTEXT]), *config.stash[COLLECTOR].unreached()]:
        terminalreporter.write_line(f"wna16 WARNING: {line}", yellow=True)
    path = config.getoption("wna16_report")
    if path is not None:
        terminalreporter.write_line(f"wna16 conformance report: {path}")

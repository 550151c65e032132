"""An installed (not editable) stream_state migrates without the source tree."""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from stream_state.database import code_schema_version

REPO_ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("setup.py", "setup.cfg", "README.md", "stream_state", "migrations")


def test_pip_installed_package_creates_the_schema_from_another_directory(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        item = REPO_ROOT / name
        if item.is_dir():
            shutil.copytree(item, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(item, source / name)
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    assert (site / "stream_state" / "py.typed").is_file()
    assert (site / "stream_state" / "migrations" / f"{code_schema_version()}.py").is_file()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = (
        "import stream_state\n"
        "from stream_state.database import schema_version\n"
        "db = stream_state.open_database()\n"
        "print(stream_state.__file__)\n"
        "print(schema_version(db))\n"
        "print(','.join(sorted(db.get_tables())))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("STREAM_STATE_DATABASE_URL", None)
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    module_file, version, tables = result.stdout.split()
    assert Path(module_file).is_relative_to(site), "the installed copy, not the source tree, was imported"
    assert version == code_schema_version()
    assert {"stream", "recording", "event", "metric_series", "metric_sample"} <= set(tables.split(","))
    assert (elsewhere / "stream_state.db").is_file()


# --- the front door ---------------------------------------------------------------------------

# What left the top level (issue 12), and the module each name is imported from now.
MOVED = {
    "stream_state.check": ["CheckReport", "check", "mark_root"],
    "stream_state.database": [
        "applied_migrations",
        "backup_sqlite",
        "code_schema_version",
        "migrate_to_head",
        "pending_migrations",
        "rollback_one",
        "schema_version",
    ],
    "stream_state.history": [
        "Bucket",
        "Coverage",
        "EventPage",
        "Gap",
        "HealthTransition",
        "SeriesBuckets",
        "StreamHealth",
        "UsageRow",
        "coverage",
        "current_health",
        "events",
        "gaps",
        "health_transitions",
        "latest_segments",
        "metric_buckets",
        "metric_buckets_matching",
        "metric_samples",
        "recordings",
        "segment_counts",
        "storage_usage",
    ],
    "stream_state.rollups": ["RollupReport", "refresh_rollups"],
    "stream_state.maintenance": [
        "backup",
        "checkpoint_wal",
        "incremental_vacuum",
        "integrity_check",
        "optimize",
        "purge_events",
        "purge_samples",
        "vacuum",
    ],
    "stream_state.models.metric": ["series_key"],
    "stream_state.retention": ["apply_retention"],
}


def _fresh_python(code: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


def test_the_top_level_is_the_managers_vocabulary():
    import stream_state

    assert len(stream_state.__all__) <= 36, "the top level is for what a manager uses every day"
    assert all(hasattr(stream_state, name) for name in stream_state.__all__)
    moved = {name for names in MOVED.values() for name in names}
    assert not moved & set(stream_state.__all__)
    for module_name, names in MOVED.items():
        module = importlib.import_module(module_name)
        assert [name for name in names if not hasattr(module, name)] == [], module_name


def test_a_module_is_not_hidden_by_a_function_of_the_same_name():
    # Was: stream_state.check, the function, hid the module: AttributeError here.
    result = _fresh_python(
        "import stream_state, stream_state.check\n"
        "print(stream_state.check.DEFAULT_MAX_SHARE, callable(stream_state.check.check))\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0.5", "True"]
    import stream_state

    clashes = [
        name
        for name in stream_state.__all__
        if importlib.util.find_spec(f"stream_state.{name}") is not None
        or importlib.util.find_spec(f"stream_state.models.{name}") is not None
    ]
    assert clashes == []


def test_importing_the_package_opens_nothing_and_loads_no_face():
    result = _fresh_python(
        "import sys, stream_state\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('stream_state'))))\n"
    )
    assert result.returncode == 0, result.stderr
    loaded = set(result.stdout.split())
    assert not loaded & {
        "stream_state.cli",
        "stream_state.cli_output",
        "stream_state.aio",
        "stream_state.demo",
    }

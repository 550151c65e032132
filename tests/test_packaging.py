"""An installed (not editable) stream_state migrates without the source tree."""

from __future__ import annotations

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
        "db = stream_state.open_database()\n"
        "print(stream_state.__file__)\n"
        "print(stream_state.schema_version(db))\n"
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

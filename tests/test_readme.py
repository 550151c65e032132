"""The README's Python session runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_manager_session_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    session = next(block for block in blocks if "Restorer(db).restore()" in block)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STREAM_STATE_DATABASE_URL", raising=False)
    (tmp_path / "media" / "disk1" / "cam-1").mkdir(parents=True)
    session = session.replace("/media/disk1", str(tmp_path / "media" / "disk1"))
    started = []
    namespace = {
        "start_pipeline": lambda *args, **kwargs: started.append((args, kwargs)),
        "print": lambda *a: None,
    }
    # complete_segment() takes the size from the file the segmenter wrote.
    session = session.replace(
        "segment.checkpoint(4_194_304)",
        "open(segment.path, 'wb').write(b'x' * 10)\nsegment.checkpoint(4_194_304)",
    )
    exec(compile(session, str(README), "exec"), namespace)
    assert ":secret@" not in repr(namespace["cam"]) and namespace["segment"].state == "complete"


def test_the_readme_asyncio_session_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    session = next(block for block in blocks if "from stream_state import aio" in block)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "media" / "disk1" / "cam-1").mkdir(parents=True)
    session = session.replace("/media/disk1", str(tmp_path / "media" / "disk1"))
    printed = []
    exec(compile(session, str(README), "exec"), {"print": lambda *a: printed.append(a)})
    # newest first: the health report, the session taking the stream on its first write, the registration
    assert printed and printed[0][1] == ["health_changed", "stream_claimed", "stream_registered"]


def test_the_readme_shows_the_example_manager_as_it_is():
    example = (README.parent / "examples" / "manager.py").read_text()
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert example in blocks, "README's copy of examples/manager.py differs from the file"

"""Several manager nodes on one PostgreSQL: takeover after SIGKILL, fencing after SIGSTOP, the audit.

Three node processes (tests/node_worker.py) share 30 streams, each recording
short segments on the streams it owns. One is SIGKILLed: its streams must be
owned by the others within ttl + one claim interval (plus the time a loaded
machine takes to run the claim). Another is SIGSTOPped past its lease and
SIGCONTed: its next write is refused and it writes nothing after the
takeover. At the end, the audit from rows and events: the epochs of every
stream form one unbroken chain of owners, each taken only from nobody or a
dead session, and every segment was begun by the owner of its epoch.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

from stream_state import Event, Recording, Stream
from stream_state.models.session import live_session_ids

REPO = Path(__file__).resolve().parent.parent
TTL = 3.0
INTERVAL = 1.0
STREAMS = 30
# A claim on a machine shared by many test runs takes a while; the bound itself is TTL + INTERVAL.
SLACK = 3.0


class Node:
    def __init__(self, name: str, url: str, schema: str | None, media: Path):
        command = [sys.executable, "-m", "tests.node_worker", "--url", url, "--node", name]
        command += ["--ttl", str(TTL), "--interval", str(INTERVAL), "--dir", str(media)]
        if schema:
            command += ["--pg-schema", schema]
        self.name = name
        self.proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.strip()))

    def said(self, word: str, since: float = 0.0) -> list[str]:
        return [line for at, line in self.lines if line.startswith(word) and at >= since]

    @property
    def sessions(self) -> list[int]:
        return [int(line.split()[1]) for line in self.said("session")]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            self.proc.wait(timeout=60)
        self._reader.join(timeout=5)


def wait_for(condition, timeout: float, step: float = 0.1) -> float:
    """Seconds until ``condition()`` held; fails after ``timeout``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout:.1f}s")
        time.sleep(step)
    return time.monotonic() - start


def owners(db) -> dict[int, int | None]:
    return dict(db.execute_sql('SELECT "id", "owner_session_id" FROM "stream"').fetchall())


def all_owned_by_live(db, excluding: set[int] = frozenset()) -> bool:
    live = live_session_ids(db) - set(excluding)
    return all(owner in live for owner in owners(db).values())


def audit(db) -> dict[str, int]:
    """From the rows and events: no two owners at once, no segment begun by a non-owner."""
    changes: dict[int, list[tuple[int, str, int | None, int | None]]] = defaultdict(list)
    for event in Event.select().where(Event.type.in_(["stream_claimed", "stream_released"])):
        data = event.data
        owner = data["session"] if event.type == "stream_claimed" else None
        changes[event.stream_id].append((data["epoch"], event.type, owner, data.get("previous_session")))
    owner_at: dict[tuple[int, int], int | None] = {}
    for stream_id, chain in changes.items():
        chain.sort()
        epochs = [epoch for epoch, *_ in chain]
        assert epochs == list(range(1, len(chain) + 1)), f"stream {stream_id}: epochs {epochs} not one chain"
        previous = None
        for epoch, kind, owner, before in chain:
            if kind == "stream_claimed":
                assert before == previous, (
                    f"stream {stream_id} epoch {epoch}: taken from {before}, not {previous}"
                )
            owner_at[(stream_id, epoch)] = owner
            previous = owner
    segments = Recording.select(Recording.stream, Recording.session_id, Recording.session_epoch).tuples()
    begun = 0
    for stream_id, session_id, epoch in segments:
        assert owner_at.get((stream_id, epoch)) == session_id, (
            f"segment of stream {stream_id} begun by session {session_id} at epoch {epoch}, "
            f"whose owner was {owner_at.get((stream_id, epoch))}"
        )
        begun += 1
    # Claims take only from nobody or a dead session.
    for event in Event.select().where(Event.type == "stream_claimed"):
        if event.data["previous_session"] is not None:
            assert event.data["previous_ended"] in ("clean", "crashed", "expired"), event.data
    indexes = db.execute_sql(
        'SELECT COUNT(*) FROM (SELECT "stream_id", "segment_index" FROM "recording" '
        "GROUP BY 1, 2 HAVING COUNT(*) > 1) dup"
    ).fetchone()[0]
    assert indexes == 0
    return {
        "ownership_changes": sum(len(c) for c in changes.values()),
        "segments_audited": begun,
        "streams": len(changes),
    }


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_three_nodes_share_streams_survive_sigkill_and_fence_a_paused_node(backend, tmp_path, capsys):
    url, params = backend.new_target()
    schema = params["options"].split("=", 1)[1]
    from stream_state import open_database

    db = open_database(url, **params)
    media = tmp_path / "media"
    for i in range(STREAMS):
        Stream.register(f"cam-{i:02d}", f"rtsp://10.1.0.{i + 1}/main")
    nodes = [Node(f"node-{n}", url, schema, media) for n in "abc"]
    try:
        # Converge: every stream owned, shares near ceil(30 / 3).
        wait_for(lambda: all(n.sessions for n in nodes), 60)
        wait_for(lambda: all_owned_by_live(db), 30)
        wait_for(
            lambda: sorted(list(owners(db).values()).count(n.sessions[-1]) for n in nodes) == [10, 10, 10], 30
        )
        killed, paused, survivor = nodes
        # SIGKILL one node: its streams are owned again within TTL + INTERVAL (+ slack for a loaded machine).
        killed_session = killed.sessions[-1]
        killed.proc.send_signal(signal.SIGKILL)
        killed.proc.wait()
        takeover = wait_for(lambda: killed_session not in owners(db).values() and all_owned_by_live(db), 30)
        assert takeover <= TTL + INTERVAL + SLACK, f"takeover took {takeover:.1f}s"
        # SIGSTOP another past its lease, between two of its intervals; the
        # survivor takes everything. (Paused inside a transaction, a node would
        # hold its rows' locks until PostgreSQL ends that transaction: the
        # server's idle_in_transaction_session_timeout is what bounds that.)
        paused_session = paused.sessions[-1]
        asked = time.monotonic()
        wait_for(lambda: paused.said("idle", asked), 30, step=0.001)
        paused.proc.send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        taken = wait_for(lambda: set(owners(db).values()) == {survivor.sessions[-1]}, 30)
        time.sleep(max(0.0, TTL + 1 - (time.monotonic() - stopped_at)))
        took_over_at = (
            Event.select().where(Event.type == "stream_claimed").order_by(Event.id.desc()).first().id
        )
        paused.proc.send_signal(signal.SIGCONT)
        resumed = time.monotonic()
        # Its next write is refused, then it opens a new session and rejoins.
        wait_for(lambda: paused.said("refused", resumed) or paused.said("dead", resumed), 30)
        wait_for(lambda: len(paused.sessions) >= 2, 30)
        wait_for(lambda: all_owned_by_live(db), 30)
        time.sleep(2 * INTERVAL)  # some recording by the new arrangement
    finally:
        for node in nodes:
            node.stop()
    # The paused session claimed nothing after the takeover; the audit proves
    # that each of its segments was begun at an epoch it owned.
    late_claims = Event.select().where(
        (Event.type == "stream_claimed")
        & (Event.id > took_over_at)
        & (Event.data["session"] == paused_session)
    )
    assert late_claims.count() == 0
    counts = audit(db)
    refused = paused.said("refused") + paused.said("dead")
    with capsys.disabled():
        print(
            f"\n[nodes] takeover after SIGKILL {takeover:.2f}s "
            f"(bound ttl {TTL:g}s + interval {INTERVAL:g}s); "
            f"paused node: all its streams taken {taken:.2f}s after SIGSTOP, refusals after SIGCONT: "
            f"{len(refused)}; audit: {counts}"
        )
    assert counts["segments_audited"] > STREAMS
    db.close_all()

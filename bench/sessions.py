"""Sessions: what leases, claims and takeovers cost with 10 nodes x 1,000 streams.

    python bench/sessions.py                     # SQLite
    python bench/sessions.py --pg postgresql://postgres@127.0.0.1:5432/test
    python bench/sessions.py --nodes 10 --per-node 1000

Ten sessions (nodes, in one process: the database cannot tell) share
nodes x per-node streams:

* claim: each node's first ``claim_streams()`` takes its fair share
  (``ceil(streams / nodes)``; the first node's share is computed with all ten
  already registered as claimers) -- one SELECT ... FOR UPDATE SKIP LOCKED,
  one UPDATE, the claim events, the takeover check of open segments;
* renew: ``session.renew()`` of a node owning its share (the lease UPDATE,
  the owned-stream check, the fair-share check);
* takeover: one node's lease runs out (moved into the past, as a SIGKILLed
  node's does ``ttl`` after its last renew); the other nine each run one
  claim and take its streams between them. The bound a manager sees is
  ``ttl + claim interval + this time``.

The baselines, in the same process on the same database, run through the
bare driver the one statement at the heart of each: the lease UPDATE for
renew, and ``UPDATE stream SET owner = ?, epoch = epoch + 1 WHERE id IN
(...)`` of a share for a claim, so the ratios say what the package adds
around them. Not a test: CI does not run it.
"""

from __future__ import annotations

import argparse
import math
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import peewee as pw

from stream_state import open_database
from stream_state.models import Session, Stream
from stream_state.models.base import dialect
from stream_state.models.session import forget_process_session


def register_streams(db: pw.Database, n: int) -> None:
    rows = [
        {
            "name": f"cam-{i:05d}",
            "uri": f"rtsp://10.{i // 65536}.{i // 256 % 256}.{i % 256}/main",
            "config": {},
        }
        for i in range(n)
    ]
    with db.atomic():
        for chunk in pw.chunked(rows, 500):
            Stream.insert_many(chunk).execute()


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def run(db: pw.Database, nodes: int, per_node: int, rounds: int) -> dict[str, Any]:
    total = nodes * per_node
    register_streams(db, total)
    sessions = [Session.open(node=f"node-{n}", ttl=30, register=False) for n in range(nodes)]
    p = db.param
    true = Session.claims.db_value(True)
    # Every node takes part in sharing from the start (as if all had started at once).
    db.execute_sql(f'UPDATE "session" SET "claims" = {p}', (true,))
    for session in sessions:
        session.claims = True
    claim_times = []
    for session in sessions:
        seconds, claims = timed(session.claim_streams)
        claim_times.append(seconds)
        assert len(claims) == math.ceil(total / nodes), (len(claims), total, nodes)
    renew_times = []
    for _ in range(rounds):
        for session in sessions:
            seconds, renewal = timed(session.renew)
            renew_times.append(seconds)
            assert renewal.lost == () and renewal.release == ()
    # Baselines through the bare driver (the same statements' cores, no Python around them).
    clock = dialect(db).clock_ms_sql
    raw_renew = []
    for _ in range(rounds * nodes):
        start = time.perf_counter()
        with db.atomic():
            db.execute_sql(
                f'UPDATE "session" SET "renewed_at" = {clock}, "expires_at" = {clock} + "ttl_ms" '
                f'WHERE "id" = {p}',
                (sessions[0].id,),
            )
        raw_renew.append(time.perf_counter() - start)
    ids = [sid for (sid,) in db.execute_sql('SELECT "id" FROM "stream" ORDER BY "id"').fetchall()]
    raw_claim = []
    for n in range(nodes):
        share = ids[n * per_node : (n + 1) * per_node]
        start = time.perf_counter()
        with db.atomic():
            db.execute_sql(
                f'UPDATE "stream" SET "owner_session_id" = {p}, "owner_epoch" = "owner_epoch" + 1 '
                f'WHERE "id" IN ({", ".join([p] * len(share))})',
                (sessions[n].id, *share),
            )
        raw_claim.append(time.perf_counter() - start)
        # Put the owners back as the package left them (the epoch bump is harmless to the bench).
        db.execute_sql(
            f'UPDATE "stream" SET "owner_session_id" = {p} WHERE "id" IN ({", ".join([p] * len(share))})',
            (sessions[n].id, *share),
        )
    # Takeover: node 0's lease runs out; each of the others claims once.
    dead = sessions[0]
    db.execute_sql(
        f'UPDATE "session" SET "expires_at" = "expires_at" - "ttl_ms" - 1000 WHERE "id" = {p}', (dead.id,)
    )
    owned_by_dead = db.execute_sql(
        f'SELECT COUNT(*) FROM "stream" WHERE "owner_session_id" = {p}', (dead.id,)
    ).fetchone()[0]
    start = time.perf_counter()
    taken = 0
    for session in sessions[1:]:
        taken += len(session.claim_streams(fair_share=math.ceil(total / (nodes - 1))))
    takeover = time.perf_counter() - start
    left = db.execute_sql(
        f'SELECT COUNT(*) FROM "stream" WHERE "owner_session_id" = {p}', (dead.id,)
    ).fetchone()[0]
    assert left == 0 and taken == owned_by_dead, (left, taken, owned_by_dead)
    return {
        "claim": statistics.median(claim_times),
        "claim_max": max(claim_times),
        "raw_claim": statistics.median(raw_claim),
        "renew": statistics.median(renew_times),
        "raw_renew": statistics.median(raw_renew),
        "takeover": takeover,
        "taken": taken,
    }


def report(label: str, nodes: int, per_node: int, ttl: float, interval: float, r: dict[str, Any]) -> None:
    print(f"\n{label}: {nodes} nodes x {per_node:,} streams")
    print(
        f"  claim of a share ({per_node:,} streams): {r['claim'] * 1000:8.1f} ms median "
        f"(max {r['claim_max'] * 1000:.1f}); raw UPDATE of the share {r['raw_claim'] * 1000:.1f} ms "
        f"-> {r['raw_claim'] / r['claim']:.2f} x raw"
    )
    print(
        f"  renew (lease + owned check + fair share): {r['renew'] * 1000:6.2f} ms median; "
        f"raw lease UPDATE {r['raw_renew'] * 1000:.2f} ms -> {r['raw_renew'] / r['renew']:.2f} x raw"
    )
    renews_per_s = nodes / (ttl / 3)
    print(
        f"  load at ttl {ttl:g}s (renew every ttl/3) and a claim interval of {interval:g}s: "
        f"{renews_per_s:.1f} renews/s = {renews_per_s * r['renew'] * 1000:.1f} ms of database time "
        "per second"
    )
    print(
        f"  takeover of a dead node's {r['taken']:,} streams by the {nodes - 1} others, one claim each: "
        f"{r['takeover'] * 1000:.0f} ms -> bound ttl + interval + this = "
        f"{ttl + interval + r['takeover']:.2f} s"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--per-node", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5, help="renews per node (default 5)")
    parser.add_argument("--ttl", type=float, default=30.0, help="lease for the load figures (default 30 s)")
    parser.add_argument("--interval", type=float, default=10.0, help="claim interval (default 10 s)")
    parser.add_argument("--pg", metavar="URL", help="also run against PostgreSQL (a scratch schema, dropped)")
    args = parser.parse_args(argv)
    if args.nodes < 2 or args.per_node < 1:
        parser.error("need --nodes >= 2 and --per-node >= 1")
    print(f"peewee {pw.__version__}, Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="bench-sessions-") as tmp:
        db = open_database(Path(tmp) / "sessions.db")
        try:
            result = run(db, args.nodes, args.per_node, args.rounds)
        finally:
            forget_process_session(db)
            db.close()
        report(
            f"sqlite {sqlite3.sqlite_version}",
            args.nodes,
            args.per_node,
            args.ttl,
            args.interval,
            result,
        )
    if args.pg:
        import psycopg2

        schema = f"bench_{uuid.uuid4().hex[:12]}"
        admin = psycopg2.connect(args.pg)
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE SCHEMA "{schema}"')
        try:
            db = open_database(args.pg, options=f"-c search_path={schema}")
            try:
                result = run(db, args.nodes, args.per_node, args.rounds)
            finally:
                forget_process_session(db)
                db.close_all()
            report("postgresql", args.nodes, args.per_node, args.ttl, args.interval, result)
        finally:
            with admin.cursor() as cursor:
                cursor.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            admin.close()


if __name__ == "__main__":
    main()

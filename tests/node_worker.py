"""One manager node for the multi-node tests and bench/sessions.py: claim streams, record short segments.

    python -m tests.node_worker --url URL [--pg-schema S] --node NAME --ttl 3 --interval 1

Every ``interval`` seconds the node renews its lease with a claim
(``renew(claim=True)``), releases what it is told to release, and records
one short segment (begin + complete) on each stream it owns. It prints one
line per thing that happened, flushed at once, so the parent can follow it:

    session <id>                    a session was opened
    claimed <n> <stream ids...>     streams taken
    released <stream id>
    refused <stream id> <session>   a write was refused with OwnershipLost
    dead <session> <reason>         the session was found dead; a new one follows

SIGTERM stops it cleanly (Restorer.shutdown closes its session).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from stream_state import Stream, open_database
from stream_state.errors import OwnershipLost
from stream_state.models import Session
from stream_state.restore import Restorer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--pg-schema")
    parser.add_argument("--node", required=True)
    parser.add_argument("--ttl", type=float, default=3.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--dir", default="/media")
    args = parser.parse_args()
    extra = {"options": f"-c search_path={args.pg_schema}"} if args.pg_schema else {}
    db = open_database(args.url, **extra)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))

    def say(*words: object) -> None:
        print(*words, flush=True)

    session = Session.open(node=args.node, ttl=args.ttl)
    say("session", session.id)
    streams: dict[int, Stream] = {}
    counter = 0
    while not stopping:
        started = time.monotonic()
        try:
            renewal = session.renew(claim=True)
        except OwnershipLost as exc:
            say("dead", session.id, exc.reason.replace(" ", "_"))
            session = Session.open(node=args.node, ttl=args.ttl)
            say("session", session.id)
            continue
        if renewal.gained:
            say("claimed", len(renewal.gained), *renewal.gained)
        for stream_id in renewal.release:
            if session.release(stream_id):
                say("released", stream_id)
        for stream_id in list(session.owned()):
            stream = streams.get(stream_id) or Stream.get_by_id(stream_id)
            streams[stream_id] = stream
            counter += 1
            try:
                segment = stream.begin_segment(f"{args.dir}/{args.node}-{os.getpid()}-{counter}.mp4")
                segment.complete_segment(size_bytes=1000)
            except OwnershipLost as exc:
                say("refused", stream_id, exc.session)
                if session.is_dead:
                    break
        # Between intervals: no transaction open (the test pauses a node here).
        say("idle")
        time.sleep(max(0.0, args.interval - (time.monotonic() - started)))
    Restorer(db, session=session).shutdown()
    say("stopped")
    db.close_all() if hasattr(db, "close_all") else db.close()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)

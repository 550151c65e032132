"""A stream manager in 50 lines: N live test sources recorded through splitmuxsink.

Restores at start (repairs what a crash left; each stream resumes at its next
index), records with one SplitmuxRecorder per stream, and at SIGTERM / Ctrl-C
drains every recorder (EOS into splitmuxsink, so the last files are finalised)
before recording a clean shutdown.

    python examples/manager.py --db sqlite:///recorder.db --root recordings --streams 2
"""

import argparse
import signal
import threading

from stream_state import Restorer, Stream, open_database
from stream_state.gst import SplitmuxRecorder, require_gstreamer

MUXERS = {"mkv": "matroskamux", "mov": "qtmux"}

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--db", default="sqlite:///recorder.db", help="database URL")
parser.add_argument("--root", default="recordings", help="where the files go")
parser.add_argument("--streams", type=int, default=2)
parser.add_argument("--muxer", choices=sorted(MUXERS), default="mkv")
parser.add_argument("--fragment", type=float, default=10.0, help="seconds per file")
parser.add_argument("--size", default="320x240", help="frame size of the test sources")
args = parser.parse_args()

Gst = require_gstreamer()
db = open_database(args.db)
restored = Restorer(db).restore()
print(f"restored: {restored.summary}", flush=True)
width, height = args.size.split("x")
running = []
for i in range(args.streams):
    stream = Stream.register(f"cam-{i}", f"videotestsrc://local/{i}", recording=True)
    pipeline = Gst.parse_launch(
        f"videotestsrc is-live=true pattern={i % 20}"
        f" ! video/x-raw,width={width},height={height},framerate=25/1"
        f" ! jpegenc ! splitmuxsink name=sink muxer-factory={MUXERS[args.muxer]}"
        f" max-size-time={int(args.fragment * Gst.SECOND)}"
    )
    template = "{root}/{stream}/{stream}-{index:08d}." + args.muxer
    recorder = SplitmuxRecorder(stream, pipeline.get_by_name("sink"), template, root=args.root).start()
    pipeline.set_state(Gst.State.PLAYING)
    running.append((pipeline, recorder))
print("recording", flush=True)

stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
signal.signal(signal.SIGINT, lambda *_: stop.set())
while not stop.wait(0.5):
    pass
for pipeline, recorder in running:
    drained = recorder.drain(timeout=10)
    print(f"{recorder.stream.name}: last file finalised: {drained.finalized}", flush=True)
    pipeline.set_state(Gst.State.NULL)
    recorder.close()
print(f"clean shutdown: {len(Restorer(db).shutdown().closed)} segment(s) left open", flush=True)

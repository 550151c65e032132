"""The timeline: what it reads (holes and their reasons), what it draws (checked by content), the CLI.

The pictures are checked as data: the SVG's groups (one per lane, one per
hole with the reason in its ``<title>``), the PNG's header, and the HTML
page opened in a real headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven through selenium), whose hover text over a known
hole must name the reason. Without a browser that test skips and says why;
``.ci/run`` installs one.
"""

from __future__ import annotations

import datetime as dt
import gc
import os
import random
import re
import shutil
import struct
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest
from click.testing import CliRunner

from stream_state import Event, EventType, HealthState, Severity, Stream, StreamStatus, ValidationError
from stream_state import timeline as tl
from stream_state.cli import cli
from stream_state.history.segments import gaps, recordings, segment_states
from stream_state.timeline import HealthPiece, Segment, StatusChange, SystemEvent, explain_hole, merge_spans
from stream_state.timeline import drawing as tl_drawing
from stream_state.timeline import output as tl_output
from stream_state.timeline import reading as tl_reading
from stream_state.timeline import shapes as tl_shapes
from stream_state.timeutil import from_millis, to_millis

matplotlib = pytest.importorskip("matplotlib", reason="the timeline draws with the extra [plot] (matplotlib)")

T0 = dt.datetime(2026, 11, 20, 0, 0, tzinfo=dt.UTC)
T0_MS = to_millis(T0)
S = dt.timedelta(seconds=1)
SVG = "{http://www.w3.org/2000/svg}"


def at(seconds: float) -> dt.datetime:
    return T0 + seconds * S


def record(stream: Stream, start: float, end: float, name: str | None = None) -> None:
    """Back-to-back 10-second segments from ``start`` to ``end`` seconds after T0."""
    t = start
    while t < end:
        stop = min(t + 10, end)
        path = f"/media/{stream.name}/{name or stream.name}-{stream.next_segment_index:05d}.ts"
        stream.begin_segment(path, started_at=at(t), storage="disk1").complete_segment(
            ended_at=at(stop), size_bytes=1000
        )
        t = stop


def night() -> dict[str, Stream]:
    """Four cameras over 200 s, each with one hole of a known reason.

    * cam-a unhealthy from 100 s to 160 s, nothing recorded meanwhile;
    * cam-b a segment at 60-70 s whose file went missing (failed);
    * cam-c stopped by the operator from 120 s to 152 s;
    * cam-d its clock stepped: segments 5-7 are dated 1970, between 50 s and 80 s.
    """
    a = Stream.register("cam-a", "rtsp://10.0.0.1/a", recording=True)
    b = Stream.register("cam-b", "rtsp://10.0.0.2/b", recording=True)
    c = Stream.register("cam-c", "rtsp://10.0.0.3/c", recording=True)
    d = Stream.register("cam-d", "rtsp://10.0.0.4/d", recording=True)
    for stream in (a, b, c, d):
        stream.record_health(HealthState.HEALTHY, at=at(0))
    record(a, 0, 100)
    a.record_health(HealthState.UNHEALTHY, reason="no frames for 5 s", at=at(100))
    a.record_health(HealthState.HEALTHY, reason="frames again", at=at(160))
    record(a, 160, 200)
    record(b, 0, 60)
    lost = b.begin_segment("/media/cam-b/lost.ts", started_at=at(60))
    lost.fail("file missing", at=at(70))
    record(b, 70, 200)
    # The recorder came back from a crash just before the window's start.
    Event.record(
        EventType.RESTORED,
        severity=Severity.WARNING,
        message="restored after a crash; 0 repair(s)",
        data={"clean_shutdown": False, "repairs": 0},
        at=at(-0.5),
    )
    c.set_status(StreamStatus.STARTING, at=at(0))
    c.set_status(StreamStatus.RUNNING, at=at(0))
    record(c, 0, 120)
    c.set_status(StreamStatus.STOPPING, reason="operator", at=at(120))
    c.set_status(StreamStatus.STOPPED, reason="operator", at=at(120.5))
    c.set_status(StreamStatus.STARTING, at=at(151))
    c.set_status(StreamStatus.RUNNING, at=at(152))
    record(c, 152, 200)
    record(d, 0, 50)
    epoch = dt.datetime(1970, 1, 1, 0, 0, 5, tzinfo=dt.UTC)
    for k in range(3):
        seg = d.begin_segment(f"/media/cam-d/1970-{k}.ts", started_at=epoch + 10 * k * S)
        seg.complete_segment(ended_at=epoch + 10 * (k + 1) * S, size_bytes=1000)
    record(d, 80, 200)
    return {"a": a, "b": b, "c": c, "d": d}


EXPECTED = {
    "cam-a": ((100, 160), "unhealthy", "no frames for 5 s"),
    "cam-b": ((60, 70), "file missing", "lost.ts failed"),
    "cam-c": ((120, 152), "down", "stream stopped"),
    "cam-d": ((50, 80), "clock problem", "dated elsewhere"),
}


def collected(since: dt.datetime = T0) -> tl.Timeline:
    return tl.collect(since=since, until=at(200), now=at(300))


# --- pure decisions --------------------------------------------------------------------------------------


def seg(index: int, start: int, end: int, state: str = "complete") -> Segment:
    return Segment(index, start, end, state, 100, f"/m/{index}.ts")


def test_spans_closer_than_a_pixel_merge_and_other_states_keep_their_own():
    segments = [seg(0, 0, 10), seg(1, 10, 20), seg(2, 25, 30), seg(3, 30, 31, "failed"), seg(4, 31, 40)]
    spans = merge_spans(segments, pixel_ms=6)
    assert [(s.start, s.end, s.state, s.segments) for s in spans] == [
        (0, 30, "complete", 3),
        (30, 31, "failed", 1),
        (31, 40, "complete", 1),
    ]
    assert spans[0].size_bytes == 300 and spans[0].first_path == "/m/0.ts" and spans[0].last_path == "/m/2.ts"
    # A pixel narrower than the 5 ms hole keeps the spans apart.
    assert len(merge_spans(segments[:3], pixel_ms=5)) == 2


def test_a_hole_after_a_crash_is_down_and_the_restart_time_is_named():
    hole = explain_hole(
        100,
        200,
        segments=[seg(0, 0, 100), seg(1, 200, 300)],
        health=[HealthPiece(0, 300, "healthy", None)],
        system=[SystemEvent(190, "restored", False)],
        zone=dt.UTC,
    )
    assert hole.reason == "down" and "crashed" in hole.detail


def test_unhealthy_explains_a_hole_only_while_it_lasts():
    health = [HealthPiece(0, 50, "healthy", None), HealthPiece(50, 90, "unhealthy", "no frames")]
    health.append(HealthPiece(90, 500, "healthy", None))
    common = {"segments": [], "system": [], "zone": dt.UTC}
    assert explain_hole(60, 80, health=health, **common).reason == "unhealthy"
    assert "no frames" in explain_hole(60, 80, health=health, **common).detail
    assert explain_hole(100, 200, health=health, **common).reason == "unknown"


def test_a_stopped_stream_is_down_and_the_first_reason_wins_but_all_are_told():
    hole = explain_hole(
        100,
        200,
        segments=[seg(0, 0, 100), seg(1, 100, 110, "failed"), seg(2, 200, 300)],
        health=[HealthPiece(0, 300, "failed", "camera unplugged")],
        system=[],
        statuses=[StatusChange(105, "stopped", "operator")],
        zone=dt.UTC,
    )
    assert hole.reason == "down"
    assert "unhealthy: failed" in hole.detail and "file missing: 1.ts failed" in hole.detail


def test_segments_numbered_inside_a_hole_but_dated_elsewhere_are_a_clock_problem():
    hole = explain_hole(
        100,
        200,
        segments=[seg(0, 0, 100), seg(1, 5, 15), seg(2, 200, 300)],
        health=[],
        system=[],
        zone=dt.UTC,
    )
    assert hole.reason == "clock problem" and "numbered between 0 and 2" in hole.detail


def test_ticks_in_one_pixel_keep_the_most_severe_and_count_the_rest():
    ticks = [
        tl.Tick(1, "a", "info", "x", 1),
        tl.Tick(2, "b", "error", "y", 1),
        tl.Tick(50, "c", "info", "z", 1),
    ]
    merged = tl.merge_ticks(ticks, pixel_ms=10)
    assert [(t.type, t.count) for t in merged] == [("b", 2), ("c", 1)]


def test_bad_arguments_are_refused_naming_the_field(db):
    with pytest.raises(ValidationError, match="until"):
        tl.collect(since=at(10), until=at(0))
    with pytest.raises(ValidationError, match="width"):
        tl.collect(since=at(0), until=at(10), width=10)
    with pytest.raises(ValidationError, match="out"):
        tl.render(since=at(0), until=at(10), out="picture.gif")


# --- what collect() reads --------------------------------------------------------------------------------


def test_every_hole_has_the_reason_the_data_shows(db):
    night()
    found = collected(since=at(-1))
    assert [lane.name for lane in found.lanes] == ["cam-a", "cam-b", "cam-c", "cam-d"]
    for lane in found.lanes:
        (window, reason, words) = EXPECTED[lane.name]
        assert [((h.start - T0_MS) // 1000, (h.end - T0_MS) // 1000) for h in lane.holes] == [window]
        assert lane.holes[0].reason == reason, lane.holes[0]
        assert words in lane.holes[0].detail
    assert [m.kind for m in found.markers] == ["crash"]


def test_collect_leaves_the_cycle_collector_as_it_found_it(db, monkeypatch):
    """collect() pauses the collector while it builds (a week's objects are walked again by each
    full collection), and gives it back on or off as it was, also when it fails."""
    night()
    seen: list[bool] = []
    real_lane = tl_reading._lane

    def lane(*args):
        seen.append(gc.isenabled())
        return real_lane(*args)

    monkeypatch.setattr(tl_reading, "_lane", lane)
    assert gc.isenabled()
    tl.collect(since=at(-1), until=at(200), now=at(300))
    assert seen and not any(seen) and gc.isenabled()
    with pytest.raises(ValidationError, match="width"):
        tl.collect(since=at(0), until=at(10), width=10)
    assert gc.isenabled()
    gc.disable()
    try:
        tl.collect(since=at(-1), until=at(200), now=at(300))
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_wide_window_merges_segments_into_few_spans_but_keeps_every_hole(db):
    night()
    coarse = tl.collect(since=at(0), until=at(200), now=at(300), width=400)  # about 0.9 s a pixel
    fine = tl.collect(since=at(0), until=at(200), now=at(300), width=20_000)
    a_coarse, a_fine = coarse.lanes[0], fine.lanes[0]
    assert len(a_coarse.spans) == 2 and a_coarse.spans[0].segments == 10
    assert sum(s.segments for s in a_fine.spans) == 14
    assert len(a_coarse.holes) == len(a_fine.holes) == 1


def test_only_the_streams_asked_for_and_fit_shrinks_the_window(db):
    night()
    found = tl.collect(["cam-c", "cam-a"], since=at(-3600), until=at(3600), now=at(300), fit=True)
    assert [lane.name for lane in found.lanes] == ["cam-c", "cam-a"]
    assert at(-20) <= from_millis(found.since) <= at(0)
    assert at(200) <= from_millis(found.until) <= at(230)


def test_long_windows_read_spans_from_the_index_and_find_the_same_holes(db, monkeypatch):
    night()
    full = collected(since=at(-1))
    monkeypatch.setattr(tl_reading, "DETAIL_SEGMENTS", 0)  # as if the window held millions of segments
    light = collected(since=at(-1))
    assert [lane.holes for lane in light.lanes] == [lane.holes for lane in full.lanes]
    shape = [[(s.start, s.end, s.state, s.segments) for s in lane.spans] for lane in full.lanes]
    assert [[(s.start, s.end, s.state, s.segments) for s in lane.spans] for lane in light.lanes] == shape
    assert {s.first_path for lane in light.lanes for s in lane.spans} == {""}  # no table read


def test_segment_states_are_the_recordings_read_from_the_index(db):
    streams = night()
    live = streams["a"].begin_segment("/media/cam-a/live.ts", started_at=at(200))
    live.checkpoint(10, at=at(250))
    for stream in streams.values():
        expected = [
            (
                to_millis(r.started_at),
                to_millis(r.ended_at) if r.ended_at else to_millis(at(300)),
                str(r.state),
            )
            for r in recordings(stream, at(0), at(400))
        ]
        assert segment_states(stream, at(0), at(400), now=at(300)) == expected
    assert segment_states(streams["a"], at(0), at(400), now=at(220))[-1] == (
        to_millis(at(200)),
        to_millis(at(250)),  # the checkpoint is later than now
        "recording",
    )


def test_gap_reasons_are_the_streams_and_the_systems_events_in_each_hole(db):
    cam = Stream.register("cam-r", "rtsp://10.0.0.5/r", recording=True)
    other = Stream.register("cam-o", "rtsp://10.0.0.6/o", recording=True)
    for start, end in ((0, 10), (20, 30), (30.3, 40), (41, 50)):
        record(cam, start, end)
    cam.record_health(HealthState.UNHEALTHY, reason="no frames", at=at(15))
    other.record_health(HealthState.UNHEALTHY, reason="not mine", at=at(15))
    Event.record("motion", at=at(15))  # a system event, but not a reason type
    Event.record(EventType.RESTORED, data={"clean_shutdown": False}, message="back", at=at(19.9))
    cam.set_status(StreamStatus.STARTING, reason="again", at=at(40.8))  # in the last hole's lead
    found = gaps(cam, at(0), at(50), tolerance=dt.timedelta(milliseconds=200), now=at(60))
    assert [(g.start, g.end) for g in found] == [(at(10), at(20)), (at(30), at(30.3)), (at(40), at(41))]
    assert [[r.message for r in g.reasons] for g in found] == [
        ["cam-r: unknown -> unhealthy (no frames)", "back"],
        [],
        ["cam-r: stopped -> starting (again)"],
    ]


# --- the pictures ----------------------------------------------------------------------------------------


def _groups(svg: bytes) -> dict[str, str]:
    root = ElementTree.fromstring(svg)
    groups = {}
    for group in root.iter(f"{SVG}g"):
        title = group.find(f"{SVG}title")
        groups[group.get("id", "")] = title.text if title is not None else ""
    return groups


def test_svg_has_one_lane_per_stream_and_a_hole_with_its_reason_where_the_data_has_a_gap(db, tmp_path):
    night()
    out = tl.render(since=at(-1), until=at(200), now=at(300), out=tmp_path / "night.svg")
    groups = _groups(out.read_bytes())
    lanes = sorted(k for k in groups if re.fullmatch(r"lane-\d+", k))
    assert lanes == ["lane-0", "lane-1", "lane-2", "lane-3"]
    assert [groups[k].split(":")[0] for k in lanes] == ["cam-a", "cam-b", "cam-c", "cam-d"]
    holes = {k: v for k, v in groups.items() if k.startswith("hole-")}
    assert sorted(holes) == ["hole-0-0", "hole-1-0", "hole-2-0", "hole-3-0"]
    for k, (_window, reason, words) in zip(sorted(holes), EXPECTED.values(), strict=True):
        assert f"{reason}: " in holes[k] and words in holes[k], holes[k]
    assert "crash" in groups["marker-0"]
    assert "legend" in groups


def test_svg_of_a_stream_without_holes_has_none(db, tmp_path):
    stream = Stream.register("steady", "rtsp://10.0.0.9/s", recording=True)
    record(stream, 0, 200)
    groups = _groups(tl.render(since=at(0), until=at(200), now=at(300), format="svg"))
    assert [k for k in groups if k.startswith("hole-")] == []
    assert "lane-0" in groups and "0 hole(s)" in groups["lane-0"]


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_png_sizes_are_sane(db, tmp_path):
    night()
    four = tl.render(since=at(0), until=at(200), now=at(300), out=tmp_path / "n.png").read_bytes()
    width, height = _png_size(four)
    assert width == tl.DEFAULT_WIDTH and 300 <= height <= 1200
    assert 5_000 < len(four) < 2_000_000
    one = tl.render(["cam-a"], at(0), at(200), now=at(300), width=800, format="png")
    assert _png_size(one)[0] == 800 and _png_size(one)[1] < height


def test_png_pixels_show_the_spans_and_each_hole_in_its_reasons_colour(db):
    night()
    found = collected(since=at(-1))
    lane_px = tl_drawing._lane_px(len(found.lanes))
    span = (tl_drawing.SPAN_LO, tl_drawing.SPAN_HI)
    image = tl_drawing._raster(found, lane_px, span, (0.22, 0.40), (-0.46, -0.30))
    assert image.shape == (4 * lane_px, tl.DEFAULT_WIDTH - tl_shapes.LABEL_PX - tl_shapes.RIGHT_PX, 4)
    columns = image.shape[1]

    def pixels(lane: int, seconds: float) -> set[tuple[int, ...]]:
        column = int((to_millis(at(seconds)) - found.since) / (found.until - found.since) * columns)
        middle = round((lane + 0.5 + tl_drawing.SPAN_MIDDLE) * lane_px)
        return {tuple(int(v) for v in image[row, column]) for row in range(middle - 3, middle + 3)}

    def rgba(name: str) -> tuple[int, ...]:
        return tuple(round(255 * v) for v in matplotlib.colors.to_rgba(name))

    for lane, (window, reason, _words) in enumerate(EXPECTED.values()):
        inside = pixels(lane, sum(window) / 2)
        assert rgba(tl.HOLE_COLOURS[reason]) in inside and rgba("white") in inside, (lane, inside)
    assert pixels(0, 50) == {rgba(tl.SPAN_COLOURS["complete"])}


def test_each_column_of_the_raster_shows_the_last_item_painted_over_it():
    # _owners answers for every column at once what painting the items in
    # turn would leave: in time order (binary search) and out of it (a loop).
    numpy = pytest.importorskip("numpy")
    rng = random.Random(3)
    for case in range(200):
        count, columns = rng.randrange(0, 30), rng.randrange(1, 40)
        c0 = sorted(rng.randrange(0, columns + 1) for _ in range(count))
        widths = [rng.randrange(0, 6) for _ in range(count)]
        c1 = [min(columns, a + w) for a, w in zip(c0, widths, strict=True)]
        if case % 2:
            c1 = list(numpy.maximum.accumulate(c1)) if c1 else c1  # both bounds in order
        if case % 5 == 0:
            order = list(range(count))
            rng.shuffle(order)
            c0, c1 = [c0[k] for k in order], [c1[k] for k in order]
        painted = [-1] * columns
        for k, (a, b) in enumerate(zip(c0, c1, strict=True)):
            painted[a:b] = [k] * len(painted[a:b])
        starts, ends = numpy.asarray(c0, dtype=numpy.int64), numpy.asarray(c1, dtype=numpy.int64)
        found = tl_drawing._owners(starts, ends, columns)
        assert found.tolist() == painted, (c0, c1)


def test_render_without_out_returns_the_figure(db):
    night()
    figure = tl.render(since=at(0), until=at(200), now=at(300))
    assert isinstance(figure, matplotlib.figure.Figure)
    assert figure.get_size_inches()[0] * figure.dpi == tl.DEFAULT_WIDTH


def test_many_lanes_stay_a_picture():
    # 300 streams, no database: lanes shrink to about 10 px.
    lanes = tuple(
        tl.Lane(
            i, f"cam-{i:03d}", 0, 1000, (tl.Span(0, 400, "complete", 4, 40, "/a", "/b"),), (), (), (), 400
        )
        for i in range(300)
    )
    png = tl.to_bytes(tl.Timeline(0, 1000, 1.0, 1200, lanes, ()), "png")
    width, height = _png_size(png)
    assert width == 1200 and 300 * 10 <= height <= 300 * 10 + tl_shapes.HEADER_PX + tl_shapes.FOOTER_PX


# --- the HTML page in a real browser ------------------------------------------------------------------


def _browser(profile: Path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    # CI sets STREAM_STATE_REQUIRE_BROWSER: there a missing browser fails instead of skipping.
    missing = pytest.fail if os.environ.get("STREAM_STATE_REQUIRE_BROWSER") else pytest.skip
    if chromium is None or driver is None:
        missing("no headless browser: install Debian's chromium and chromium-driver (.ci/run does)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing("selenium is not installed (extra [test])")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1700,1000",
        f"--user-data-dir={profile}",  # a fresh profile: nothing from an earlier run
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def test_html_loads_without_console_errors_and_the_hover_over_a_hole_tells_its_reason(
    db, tmp_path, backend, monkeypatch
):
    if backend.name != "sqlite":
        pytest.skip("the page does not depend on the backend: one browser run is enough")
    night()
    page = tl.render(since=at(0), until=at(200), now=at(300), out=tmp_path / "night.html")
    text = page.read_text()
    # Self-contained: nothing to load, no address but the SVG namespaces.
    assert re.findall(r'(?:src|href)\s*=\s*"(?!#|data:)', text) == []
    assert re.findall(r"https?://(?!www\.w3\.org/)", text) == []
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    user_data = tmp_path / "chromium-profile"
    browser = _browser(user_data)
    try:
        browser.get(page.as_uri())
        assert browser.title.startswith("Recording timeline")
        tip = browser.find_element(By.ID, "tip")
        assert not tip.is_displayed()
        for hole, (_window, reason, words) in zip(
            ("hole-0-0", "hole-1-0", "hole-2-0", "hole-3-0"), EXPECTED.values(), strict=True
        ):
            element = browser.find_element(By.ID, hole)
            ActionChains(browser).move_to_element(element).perform()
            assert tip.is_displayed()
            assert "HOLE" in tip.text and f"{reason}: " in tip.text and words in tip.text, tip.text
        # Over a span: the segments, their size and their paths.
        lane = browser.find_element(By.ID, "lane-1")
        ActionChains(browser).move_to_element_with_offset(lane, -300, 0).perform()
        assert "segment" in tip.text and "/media/cam-b/" in tip.text, tip.text
        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == []

        # A page too big for SVG shows a PNG; the hover works from the data all the same.
        monkeypatch.setattr(tl_output, "HTML_SVG_ELEMENTS", 0)
        big = tl.render(since=at(-1), until=at(200), now=at(300), out=tmp_path / "big.html")
        assert 'src="data:image/png;base64,' in big.read_text() and "hole-0-0" not in big.read_text()
        browser.get(big.as_uri())
        image = browser.find_element(By.CSS_SELECTOR, "#figure img")
        layout = browser.execute_script(
            "const d = JSON.parse(document.getElementById('timeline-data').textContent);"
            "const box = arguments[0].getBoundingClientRect();"
            "return [d.since, d.until, d.plotX, d.lanes[0].rows, d.width, box.width, box.height];",
            image,
        )
        since_ms, until_ms, (x0, x1), (top, bottom), width, shown_w, shown_h = layout
        scale = shown_w / width
        hole_ms = to_millis(at(130))  # inside cam-a's unhealthy hole
        fx = x0 + (hole_ms - since_ms) / (until_ms - since_ms) * (x1 - x0)
        fy = (top + bottom) / 2 + (tl_drawing.SPAN_MIDDLE * (bottom - top))
        ActionChains(browser).move_to_element_with_offset(
            image, round(fx * scale - shown_w / 2), round(fy * scale - shown_h / 2)
        ).perform()
        tip = browser.find_element(By.ID, "tip")
        assert "HOLE" in tip.text and "unhealthy: " in tip.text and "no frames for 5 s" in tip.text, tip.text
        assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        browser.quit()
        shutil.rmtree(user_data, ignore_errors=True)


# --- the command line ------------------------------------------------------------------------------------


def _cli(backend, db, *args: str):
    url = db.database if backend.name == "sqlite" else None
    if url is None:
        pytest.skip("the CLI is tested on the SQLite file")
    return CliRunner().invoke(cli, ["--db", f"sqlite:///{url}", *args])


def test_cli_timeline_writes_the_file_and_says_what_it_found(db, backend, tmp_path):
    night()
    out = tmp_path / "night.svg"
    result = _cli(
        backend,
        db,
        "timeline",
        "--since",
        at(0).isoformat(),
        "--until",
        at(200).isoformat(),
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {out}: 4 stream(s)" in result.output
    assert "1 clock problem, 1 down, 1 file missing, 1 unhealthy" in result.output
    assert "hole-3-0" in out.read_text()
    one = _cli(
        backend, db, "timeline", "cam-a", "--since", at(0).isoformat(), "--out", str(tmp_path / "a.png")
    )
    assert one.exit_code == 0 and "1 stream(s)" in one.output


def test_cli_timeline_without_matplotlib_says_what_to_install(db, backend, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    result = _cli(backend, db, "timeline", "--out", str(tmp_path / "x.svg"))
    assert result.exit_code == 1
    assert "pip install 'stream_state[plot]'" in result.output
    assert not (tmp_path / "x.svg").exists()


def test_cli_usage_by_day_draws_stacked_bars(db, backend, tmp_path):
    night()
    out = tmp_path / "usage.svg"
    result = _cli(backend, db, "usage", "--by", "day", "--out", str(out))
    assert result.exit_code == 0, result.output
    titles = [v for k, v in _groups(out.read_bytes()).items() if k.startswith("usage-")]
    assert sorted(titles) == ["1970-01-01 (no volume): 2.9 KiB", "2026-11-20 disk1: 65.4 KiB"]
    by_state = _cli(backend, db, "usage", "--by", "day", "--stack", "state", "--out", str(tmp_path / "s.png"))
    assert by_state.exit_code == 0 and _png_size((tmp_path / "s.png").read_bytes())[0] == 1200
    wrong = _cli(backend, db, "usage", "--by", "stream", "--out", str(tmp_path / "u.png"))
    assert wrong.exit_code == 2 and "--by day" in wrong.output


def test_cli_timeline_refuses_an_unknown_format(db, backend, tmp_path):
    night()
    result = _cli(backend, db, "timeline", "--out", str(tmp_path / "x.gif"))
    assert result.exit_code != 0 and ".svg" in result.output


def test_an_out_that_cannot_be_written_is_refused_before_anything_is_drawn(db, backend, tmp_path):
    night()
    missing = tmp_path / "no-such-dir" / "night.png"
    for call in (
        lambda: tl.render(since=at(0), until=at(200), out=missing),
        lambda: tl.usage_chart(out=missing),
    ):
        with pytest.raises(ValidationError, match="does not exist") as info:
            call()
        assert info.value.field == "out"
    with pytest.raises(ValidationError, match="is a directory"):
        tl.render(since=at(0), until=at(200), out=tmp_path, format="png")
    result = _cli(backend, db, "timeline", "--since", at(0).isoformat(), "--out", str(missing))
    assert result.exit_code == 1 and "does not exist" in result.output and "unexpected" not in result.output
    assert not missing.parent.exists()


def test_readme_timeline_image_exists():
    image = Path(__file__).resolve().parent.parent / "docs" / "demo-timeline.png"
    if not image.exists():
        pytest.fail(f"{image} is missing: make it with the command the README gives")
    width, _height = _png_size(image.read_bytes())
    assert width == tl.DEFAULT_WIDTH


def test_the_health_band_is_whole_when_the_lane_has_more_events_than_ticks(db, monkeypatch):
    night()
    full = collected(since=at(-1))
    assert any(piece.health == "unhealthy" for lane in full.lanes for piece in lane.health)
    # Events cut at the tick limit: the band comes from health_transitions, not the cut events.
    monkeypatch.setattr(tl_reading, "MAX_TICKS_PER_LANE", 1)
    cut = collected(since=at(-1))
    assert [lane.health for lane in cut.lanes] == [lane.health for lane in full.lanes]


# --- a lane's events against a plain reading of the event table ---------------------------------------


def busy_lane() -> tuple[Stream, list[Event]]:
    """One stream with a few hundred events in 110 s: many per tick column, ties in time and severity.

    Health and status changes (with their data), clock events (and a type
    that only looks like one to a case-blind LIKE), events without a
    message, changes before the window, and another stream's and the
    system's events at the same times (which the lane must not show).
    """
    rng = random.Random(17)
    cam = Stream.register("cam-busy", "rtsp://10.0.0.9/busy", recording=True)
    other = Stream.register("cam-other", "rtsp://10.0.0.10/other", recording=True)
    healths = [h.value for h in HealthState]
    statuses = ["starting", "running", "stopping", "stopped"]
    kinds = ["motion", "motion", "note", "segment_failed", "storage_warning", "clock_stepped", "CLOCK_RESET"]
    written = []

    def write(stream: Stream | None, seconds: float) -> None:
        kind = rng.choice([*kinds, EventType.HEALTH_CHANGED.value, EventType.STATUS_CHANGED.value])
        data = None
        if kind == EventType.HEALTH_CHANGED.value:
            data = {"new": rng.choice(healths), "reason": rng.choice([None, "fps low", "no frames"])}
        elif kind == EventType.STATUS_CHANGED.value:
            data = {"new": rng.choice(statuses), "reason": rng.choice([None, "operator"])}
        event = Event.record(
            kind,
            stream,
            severity=rng.choice(list(Severity)),
            message=rng.choice([None, f"{kind} at {seconds:.2f} s"]),
            data=data,
            at=at(seconds),
        )
        if stream is cam:
            written.append(event)

    Event.record(EventType.HEALTH_CHANGED, cam, data={"new": "degraded", "reason": "before"}, at=at(-30))
    Event.record(EventType.STATUS_CHANGED, cam, data={"new": "running"}, at=at(-20))
    for _ in range(420):
        # On a 50 ms grid: events of one ms are common, and so are ties in severity.
        seconds = rng.randrange(-100, 2400) * 0.05
        write(cam, seconds)
        if rng.random() < 0.2:
            write(rng.choice([other, None]), seconds)
    return cam, written


def plain_lane_events(
    stream: Stream, start: int, end: int, pixel_ms: float, tick_severity: str
) -> tuple[list[HealthPiece], list[StatusChange], list[tuple[int, str]], list[tl.Tick]]:
    """What a lane shows of its events, read the plain way: models, sorted and filtered in Python.

    Ticks, status changes and clock events from the newest
    ``MAX_TICKS_PER_LANE`` events of [start, end); the health band from the
    last change before ``start`` and every change inside.
    """

    def ms(event: Event) -> int:
        return to_millis(event.ts)

    def order(event: Event) -> tuple[int, int]:
        return ms(event), event.id

    mine = sorted(Event.select().where(Event.stream == stream.id), key=order)
    window = [e for e in mine if start <= ms(e) < end]
    kept = window[-tl_reading.MAX_TICKS_PER_LANE :]
    health_changes = [e for e in mine if e.type == EventType.HEALTH_CHANGED.value]
    before = [e for e in health_changes if ms(e) < start]
    state = str(before[-1].data.get("new") or "unknown") if before else "unknown"
    reason = before[-1].data.get("reason") if before else None
    band, since = [], start
    for change in (e for e in health_changes if start <= ms(e) < end):
        if ms(change) > since:
            band.append(HealthPiece(since, ms(change), state, reason))
        since = max(since, ms(change))
        state, reason = str(change.data.get("new") or "unknown"), change.data.get("reason")
    if end > since:
        band.append(HealthPiece(since, end, state, reason))
    statuses = [
        StatusChange(ms(e), e.data.get("new"), e.data.get("reason"))
        for e in kept
        if e.type == EventType.STATUS_CHANGED.value
    ]
    clocks = [(ms(e), e.message or e.type) for e in kept if "clock" in e.type]
    rank = {severity.value: n for n, severity in enumerate(Severity)}
    columns: dict[int, list[Event]] = {}
    for e in kept:
        if e.type != EventType.HEALTH_CHANGED.value and rank[e.severity.value] >= rank[tick_severity]:
            columns.setdefault(int(ms(e) // (pixel_ms * tl_shapes.TICK_PX)), []).append(e)
    ticks = []
    for key in sorted(columns):
        top = max(rank[e.severity.value] for e in columns[key])
        shown = next(e for e in columns[key] if rank[e.severity.value] == top)  # the first of the most severe
        message = shown.message or shown.type
        ticks.append(tl.Tick(ms(shown), shown.type, shown.severity.value, message, len(columns[key])))
    return band, statuses, clocks, ticks


def test_a_lanes_events_are_what_a_plain_reading_of_the_event_table_shows(db, monkeypatch):
    cam, written = busy_lane()
    start, end = T0_MS, T0_MS + 110_000
    inside = [e for e in written if start <= to_millis(e.ts) < end]
    newest_first = sorted(inside, key=lambda e: (to_millis(e.ts), e.id), reverse=True)
    # A cut that falls between two events of the same ms (only the newer id is kept).
    cut = next(k for k in range(40, len(newest_first)) if newest_first[k - 1].ts == newest_first[k].ts)
    compared = 0
    for limit in (tl_reading.MAX_TICKS_PER_LANE, cut):
        monkeypatch.setattr(tl_reading, "MAX_TICKS_PER_LANE", limit)
        for pixel_ms in (100.0, 97.3):
            for severity in ("debug", "info", "warning", "error"):
                read = tl_reading._lane_events(cam, start, end, pixel_ms, severity)
                band, statuses, clocks, ticks = plain_lane_events(cam, start, end, pixel_ms, severity)
                assert read.health == band
                assert read.statuses == statuses
                assert read.clock_events == clocks
                assert read.ticks == ticks, (limit, pixel_ms, severity)
                compared += len(ticks)
                # What the data must hold for the comparison to mean something.
                assert any(t.count > 1 for t in ticks) and statuses and clocks and len(band) > 3
    assert compared > 1000 and cut < len(newest_first)
    assert {e.type for e in written} >= {"CLOCK_RESET", "clock_stepped"}

"""Drawing a collected timeline with matplotlib (the optional extra ``[plot]``)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
from typing import Any

from ..cli_output import format_duration, format_size
from ..errors import StreamStateError
from .shapes import DPI, FOOTER_PX, HEADER_PX, HOLE_REASONS, LABEL_PX, RIGHT_PX, Timeline
from .zones import clock_text, local_zone, zone_label

INSTALL_HINT = "pip install 'stream_state[plot]'"

# Lane geometry, in lanes: lane i is centred on y = i (down the picture);
# spans and holes take this part of it.
SPAN_LO, SPAN_HI = -0.28, 0.18
SPAN_MIDDLE = (SPAN_LO + SPAN_HI) / 2

# Display states of a span: the segment states, with "open" for a segment
# still being written and "archived" for one whose file went to an archive.
SPAN_COLOURS = {
    "complete": "#2b83ba",
    "open": "#66c2a5",
    "interrupted": "#fdae61",
    "failed": "#d7191c",
    "archived": "#5e3c99",
    "recovered": "#abdda4",
    "missing": "#969696",
    "deleting": "#bdbdbd",
    "archiving": "#9e9ac8",
}
HOLE_COLOURS = {
    "down": "#252525",
    "unhealthy": "#e7298a",
    "clock problem": "#7570b3",
    "file missing": "#d95f02",
    "unknown": "#bdbdbd",
}
HEALTH_COLOURS = {
    "healthy": "#a6d96a",
    "degraded": "#fee08b",
    "unhealthy": "#f46d43",
    "failed": "#a50026",
    "unknown": "#e0e0e0",
}
SEVERITY_COLOURS = {
    "debug": "#bdbdbd",
    "info": "#737373",
    "warning": "#ff7f00",
    "error": "#e31a1c",
    "critical": "#000000",
}
MARKER_COLOURS = {"crash": "#e31a1c", "restart": "#1f78b4", "shutdown": "#33a02c"}
MARKER_LABELS = {"crash": "restart after a crash", "restart": "recorder start", "shutdown": "clean stop"}
MAX_MARKER_LABELS = 12
# Up to this many holes each is an artist of its own (an SVG group with its
# reason as <title>); beyond, one hatched collection per reason.
MAX_HOLE_ARTISTS = 2_000
HATCH_PX = 6  # period of a hole's stripes in a PNG


class PlotUnavailable(StreamStateError):
    """Drawing needs matplotlib, which comes with the extra ``[plot]``."""

    def __init__(self) -> None:
        super().__init__(f"drawing a timeline or chart needs matplotlib: {INSTALL_HINT}")


def require_plot() -> None:
    """Raise ``PlotUnavailable`` (saying what to install) unless matplotlib can be imported."""
    load_matplotlib()


def load_matplotlib() -> Any:
    try:
        import matplotlib
        import matplotlib.dates
        import matplotlib.figure
    except ImportError as exc:
        raise PlotUnavailable() from exc
    return matplotlib


def _lane_px(lanes: int) -> int:
    return max(10, min(44, 900 // max(lanes, 1)))


@dataclasses.dataclass
class Drawn:
    """A figure and what the SVG and HTML outputs need to know about its artists."""

    figure: Any
    titles: dict[str, str]  # gid -> text for a <title>
    lane_rows: list[tuple[float, float]]  # each lane's top and bottom in figure pixels from the top
    plot_x: tuple[float, float]  # the axes' left and right in figure pixels


def draw(timeline: Timeline, *, title: str | None = None) -> Any:
    """The matplotlib Figure of a timeline (see ``render`` for a file)."""
    return draw_timeline(timeline, title=title).figure


def draw_timeline(timeline: Timeline, *, title: str | None = None, elements: bool = True) -> Drawn:
    mpl = load_matplotlib()
    import numpy as np
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle

    zone = local_zone()
    lanes = timeline.lanes
    n = max(len(lanes), 1)
    lane_px = _lane_px(n)
    height_px = HEADER_PX + FOOTER_PX + n * lane_px
    width_px = timeline.width
    figure = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI)
    left = LABEL_PX / width_px
    right = 1 - RIGHT_PX / width_px
    bottom = FOOTER_PX / height_px
    top = 1 - HEADER_PX / height_px
    ax = figure.add_axes((left, bottom, right - left, top - bottom))
    epoch = mpl.dates.date2num(dt.datetime(1970, 1, 1, tzinfo=dt.UTC))

    def x(ms: float) -> float:
        return epoch + ms / 86_400_000

    min_w = timeline.pixel_ms / 86_400_000  # a pixel in axis units
    titles: dict[str, str] = {}
    font = 9 if lane_px >= 16 else max(4, lane_px - 4)

    # Lane geometry in axis units: lane i is centred on y = i, top lane first.
    span_lo, span_hi = SPAN_LO, SPAN_HI
    band_lo, band_hi = 0.22, 0.40
    tick_lo, tick_hi = -0.46, -0.30
    markers_lines = []
    x_lo, x_hi = x(timeline.since), x(timeline.until)
    # The artists are few and big (a collection per lane for its spans, one
    # for all health bands, one for all ticks, one for the stripes), and
    # none updates the data limits: that is what keeps 1,000 lanes fast.
    stripes = [
        [(x_lo, i - 0.5), (x_hi, i - 0.5), (x_hi, i + 0.5), (x_lo, i + 0.5)] for i in range(1, len(lanes), 2)
    ]
    ax.add_collection(
        PolyCollection(stripes, facecolors="#f4f4f4", edgecolors="none", zorder=0), autolim=False
    )
    # A group per hole is for SVG and HTML (its <title>, the hover); in a
    # PNG one collection per reason draws the same pixels much faster.
    separate_holes = elements and sum(len(lane.holes) for lane in lanes) <= MAX_HOLE_ARTISTS
    bands, band_colours = [], []
    tick_x, tick_y, tick_colours = [], [], []
    hole_boxes: dict[str, list] = {}
    for i, lane in enumerate(lanes):
        gid = f"lane-{i}"
        # A group per lane (its <title> names the stream) where the output
        # keeps groups; one collection for every lane in a PNG.
        if elements:
            boxes: list[Any] = []
            colours: list[str] = []
            for span in lane.spans:
                x0, x1 = x(span.start), x(span.end)
                x1 = max(x1, x0 + min_w)
                boxes.append([(x0, i + span_lo), (x1, i + span_lo), (x1, i + span_hi), (x0, i + span_hi)])
                colours.append(SPAN_COLOURS.get(span.state, "#737373"))
            spans = PolyCollection(boxes, facecolors=colours, edgecolors="none", linewidths=0, gid=gid)
            ax.add_collection(spans, autolim=False)
        titles[gid] = (
            f"{lane.name}: {sum(s.segments for s in lane.spans)} segment(s), "
            f"{format_size(sum(s.size_bytes for s in lane.spans))}, "
            f"{format_duration(lane.recorded_ms / 1000)} recorded, "
            f"{len(lane.holes)} hole(s)"
        )
        for piece in lane.health if elements else ():
            x0, x1 = x(piece.start), max(x(piece.end), x(piece.start) + min_w)
            bands.append([(x0, i + band_lo), (x1, i + band_lo), (x1, i + band_hi), (x0, i + band_hi)])
            band_colours.append(HEALTH_COLOURS.get(piece.health, "#e0e0e0"))
        for k, hole in enumerate(lane.holes):
            x0 = x(hole.start)
            w = max(x(hole.end) - x0, min_w)
            if not elements:
                continue  # painted with the spans
            if not separate_holes:
                box = [(x0, i + span_lo), (x0 + w, i + span_lo), (x0 + w, i + span_hi), (x0, i + span_hi)]
                hole_boxes.setdefault(hole.reason, []).append(box)
                continue
            gid = f"hole-{i}-{k}"
            # add_artist, not add_patch: no data-limit update per hole.
            ax.add_artist(
                Rectangle(
                    (x0, i + span_lo),
                    w,
                    span_hi - span_lo,
                    facecolor="white",
                    edgecolor=HOLE_COLOURS[hole.reason],
                    hatch="////",
                    linewidth=0.6,
                    gid=gid,
                )
            )
            titles[gid] = (
                f"{lane.name}: hole {clock_text(hole.start, zone)} - {clock_text(hole.end, zone)} "
                f"({format_duration((hole.end - hole.start) / 1000)}): {hole.detail}"
            )
        for tick in lane.ticks if elements else ():
            tick_x.append(x(tick.at))
            tick_y.append(i + (tick_lo + tick_hi) / 2)
            tick_colours.append(SEVERITY_COLOURS.get(tick.severity, "#737373"))
    if not elements:
        # A PNG: spans and health bands painted into an image of exactly the
        # axes' pixels (a few hundred thousand rectangles cost seconds as
        # paths, a tenth of that as array slices).
        image = _raster_image()(
            ax,
            extent=(x_lo, x_hi, n - 0.5, -0.5),
            origin="upper",
            interpolation="none",
            zorder=1,
            gid="spans",
        )
        image.set_data(_raster(timeline, lane_px, (span_lo, span_hi), (band_lo, band_hi), (tick_lo, tick_hi)))
        ax.add_image(image)
    for reason, boxes in hole_boxes.items():
        gid = f"holes-{reason.replace(' ', '-')}"
        ax.add_collection(
            PolyCollection(
                boxes,
                facecolors="white",
                edgecolors=HOLE_COLOURS[reason],
                hatch="////",
                linewidths=0.6,
                gid=gid,
            ),
            autolim=False,
        )
        titles[gid] = f"{len(boxes)} hole(s): {reason} (the HTML page tells each one's reason)"
    if bands:
        ax.add_collection(
            PolyCollection(bands, facecolors=band_colours, edgecolors="none", gid="health"), autolim=False
        )
    if tick_x:
        # One marker path stamped at every tick: far cheaper than a line each.
        tick_pt = (tick_hi - tick_lo) * lane_px * 72 / DPI
        ax.scatter(
            np.asarray(tick_x),
            np.asarray(tick_y),
            s=tick_pt**2,
            marker="|",
            c=tick_colours,
            linewidths=1.2,
            gid="ticks",
            zorder=3,
        )
    for k, marker in enumerate(timeline.markers):
        gid = f"marker-{k}"
        colour = MARKER_COLOURS[marker.kind]
        ax.axvline(x(marker.at), color=colour, linestyle="--", linewidth=1.0, gid=gid)
        titles[gid] = marker.message
        markers_lines.append(marker)
    # Name a few markers above the lanes, stepping labels that would overlap.
    if 0 < len(timeline.markers) <= MAX_MARKER_LABELS:
        plot_px = width_px - LABEL_PX - RIGHT_PX
        last_px: dict[int, float] = {}
        for marker in sorted(timeline.markers, key=lambda m: m.at):
            px = (marker.at - timeline.since) / (timeline.until - timeline.since) * plot_px
            row = next((r for r in range(3) if px - last_px.get(r, -1e9) > 170), 0)
            last_px[row] = px
            ax.annotate(
                MARKER_LABELS[marker.kind],
                xy=(x(marker.at), 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, 24 + 10 * row),
                textcoords="offset points",
                fontsize=7,
                color=MARKER_COLOURS[marker.kind],
                annotation_clip=False,
            )

    ax.set_xlim(x(timeline.since), x(timeline.until))
    ax.set_ylim(n - 0.5, -0.5)
    # The lanes' names where y tick labels would be (right-aligned, the
    # default pad left of the axes), as plain texts: a thousand ticks cost
    # matplotlib a second and a half of copied tick properties.
    ax.set_yticks([])
    name_at, va, ha = ax.get_yaxis_text1_transform(mpl.rcParams["ytick.major.pad"])
    for i, lane in enumerate(lanes):
        ax.text(0, i, lane.name, transform=name_at, va=va, ha=ha, fontsize=font, clip_on=False)
    locator = mpl.dates.AutoDateLocator(tz=zone, minticks=4, maxticks=12)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mpl.dates.ConciseDateFormatter(locator, tz=zone))
    ax.tick_params(axis="x", labeltop=True, top=True, labelsize=8)
    ax.grid(axis="x", color="#d9d9d9", linewidth=0.5)
    ax.set_axisbelow(True)
    zone_text = zone_label(zone, timeline.until)
    ax.set_xlabel(f"local time, {zone_text}", fontsize=9)
    heading = title or (
        f"Recording timeline, {len(lanes)} stream(s), "
        f"{clock_text(timeline.since, zone, date=True)[:19]} "
        f"to {clock_text(timeline.until, zone, date=True)[:19]}"
    )
    figure.suptitle(heading, x=left, y=1 - 12 / height_px, ha="left", va="top", fontsize=11)
    for side in ("right", "left"):
        ax.spines[side].set_visible(False)

    used_spans = {s.state for lane in lanes for s in lane.spans} | {"complete", "interrupted", "failed"}
    used_holes = {h.reason for lane in lanes for h in lane.holes}
    handles: list[Any] = [
        Patch(facecolor=SPAN_COLOURS[s], label=f"segment {s}") for s in SPAN_COLOURS if s in used_spans
    ]
    handles += [
        Patch(facecolor="white", edgecolor=HOLE_COLOURS[r], hatch="////", label=f"hole: {r}")
        for r in HOLE_REASONS
        if r in used_holes or r in ("down", "unhealthy")
    ]
    handles += [Patch(facecolor=HEALTH_COLOURS[h], label=f"health {h}") for h in HEALTH_COLOURS]
    from matplotlib.lines import Line2D

    handles += [
        Line2D([], [], color=SEVERITY_COLOURS[s], label=f"event {s}") for s in ("info", "warning", "error")
    ]
    kinds = {m.kind for m in markers_lines}
    handles += [
        Line2D(
            [],
            [],
            color=MARKER_COLOURS[k],
            linestyle="--",
            label=MARKER_LABELS[k],
        )
        for k in ("crash", "restart", "shutdown")
        if k in kinds
    ]
    legend = figure.legend(
        handles=handles,
        loc="lower left",
        bbox_to_anchor=(left, 4 / height_px),
        ncol=min(6, len(handles)),
        fontsize=8,
        frameon=False,
    )
    legend.set_gid("legend")

    # Where the lanes are, for the HTML hover: figure pixels from the top.
    lane_rows = []
    for i in range(len(lanes)):
        y_top = ax.transData.transform((0, i - 0.5))[1]
        y_bottom = ax.transData.transform((0, i + 0.5))[1]
        lane_rows.append((height_px - y_top, height_px - y_bottom))
    x_left = ax.transData.transform((x(timeline.since), 0))[0]
    x_right = ax.transData.transform((x(timeline.until), 0))[0]
    return Drawn(figure, titles, lane_rows, (x_left, x_right))


def _raster(
    timeline: Timeline,
    lane_px: int,
    span: tuple[float, float],
    band: tuple[float, float],
    tick: tuple[float, float],
) -> Any:
    """RGBA pixels of the lanes' spans, holes, health bands, ticks: lane_px rows a lane, a pixel a column.

    Each band of a lane (ticks, spans, health) is one row of colours
    repeated over its pixel rows: a column shows the last item painted over
    it (``_owners``), as if each were painted in turn; only holes, whose
    hatch runs across rows, are painted one by one.
    """
    import numpy as np
    from matplotlib.colors import to_rgba

    columns = timeline.width - LABEL_PX - RIGHT_PX
    lanes = max(len(timeline.lanes), 1)
    image = np.zeros((lanes * lane_px, columns, 4), dtype=np.uint8)
    scale = columns / (timeline.until - timeline.since)
    since = timeline.since
    # Index 0 is transparent: a column no item reaches.
    names: dict[str, int] = {}
    palette: list[tuple[int, ...]] = [(0, 0, 0, 0)]

    def colour(name: str) -> int:
        if name not in names:
            names[name] = len(palette)
            palette.append(tuple(round(255 * c) for c in to_rgba(name)))
        return names[name]

    def rows(i: int, part: tuple[float, float]) -> slice:
        return slice(round((i + 0.5 + part[0]) * lane_px), max(round((i + 0.5 + part[1]) * lane_px), 1))

    def columns_of(starts: list[int], ends: list[int]) -> tuple[Any, Any]:
        """Each item's [first, last + 1) columns: at least one, clipped to the plot (empty outside it)."""
        x0 = (np.asarray(starts, dtype=np.int64) - since) * scale
        x1 = (np.asarray(ends, dtype=np.int64) - since) * scale
        c0 = np.clip(np.floor(x0), 0, columns).astype(np.int64)
        # At least a pixel: an item left of the plot still shows in its first column.
        return c0, np.minimum(columns, np.maximum(c0 + 1, np.ceil(x1).astype(np.int64)))

    def paint_band(target: slice, c0: Any, c1: Any, shades: list[int]) -> None:
        if len(shades):
            owner = _owners(c0, c1, columns)
            shade = np.asarray([0, *shades], dtype=np.intp)[owner + 1]
            image[target] = np.asarray(palette, dtype=np.uint8)[shade][np.newaxis]

    # Palette indices by name, looked up once per item below (a million ticks).
    health_shade = {name: colour(value) for name, value in HEALTH_COLOURS.items()}
    span_shade = {name: colour(value) for name, value in SPAN_COLOURS.items()}
    tick_shade = {name: colour(value) for name, value in SEVERITY_COLOURS.items()}
    unknown_health, unknown_span, unknown_tick = colour("#e0e0e0"), colour("#737373"), colour("#737373")
    for i, lane in enumerate(timeline.lanes):
        span_rows, band_rows, tick_rows = rows(i, span), rows(i, band), rows(i, tick)
        health = lane.health
        c0, c1 = columns_of([p.start for p in health], [p.end for p in health])
        paint_band(band_rows, c0, c1, [health_shade.get(p.health, unknown_health) for p in health])
        spans = lane.spans
        c0, c1 = columns_of([s.start for s in spans], [s.end for s in spans])
        paint_band(span_rows, c0, c1, [span_shade.get(s.state, unknown_span) for s in spans])
        for hole in lane.holes:
            h0 = max(0, int((hole.start - since) * scale))
            h1 = min(columns, max(h0 + 1, int(-(-(hole.end - since) * scale // 1))))
            if h0 >= columns or h1 <= 0:
                continue
            block = image[span_rows, h0:h1]
            block[:] = palette[colour("white")]
            # A hole's hatch: white with diagonal stripes of its reason's colour.
            diagonal = np.add.outer(np.arange(span_rows.start, span_rows.stop), np.arange(h0, h1)) % HATCH_PX
            edge_colour = palette[colour(HOLE_COLOURS[hole.reason])]
            block[diagonal < 2] = edge_colour
            if h1 - h0 > 2:  # an outline, as the vector drawing has
                for edge in (block[0], block[-1], block[:, 0], block[:, -1]):
                    edge[:] = edge_colour
        ticks = lane.ticks
        if ticks:
            # int() of the position: toward zero, as a column index.
            x = (np.asarray([t.at for t in ticks], dtype=np.int64) - since) * scale
            at = np.trunc(x).astype(np.int64)
            inside = (at >= 0) & (at < columns)
            t0 = np.where(inside, at, np.where(at < 0, 0, columns))
            t1 = np.where(inside, at + 1, t0)
            shades = [tick_shade.get(t.severity, unknown_tick) for t in ticks]
            owner = _owners(t0, t1, columns)
            present = owner >= 0
            shade = np.asarray([0, *shades], dtype=np.intp)[owner + 1]
            image[tick_rows, present] = np.asarray(palette, dtype=np.uint8)[shade[present]]
    return image


@functools.cache
def _raster_image() -> Any:
    """An AxesImage for ``_raster``'s pixels, taken as they are.

    matplotlib checks an image for NaNs by building a masked copy of it
    (for a uint8 array, where no NaN can be) and resamples it through
    float copies: 3 s of the 9 s of a 1,000-lane PNG. Should matplotlib stop
    calling these hooks, it only gets slower, not wrong.
    """
    import numpy as np
    from matplotlib.image import AxesImage
    from matplotlib.transforms import IdentityTransform

    class RasterImage(AxesImage):
        @staticmethod
        def _normalize_image_array(A: Any) -> Any:
            return A

        def make_image(self, renderer: Any, magnification: float = 1.0, unsampled: bool = False) -> Any:
            # The pixels are the plot's own, one for one (the extent is the
            # axes' limits, the array the axes' size): drawn as they are,
            # not resampled through float copies of 16 million pixels.
            pixels: Any = self.get_array()
            box = self.axes.bbox
            if (
                not unsampled
                and magnification == 1.0
                and tuple(self.get_extent()) == (*self.axes.get_xlim(), *self.axes.get_ylim())
                and (box.x0, box.y0, box.width, box.height)
                == (round(box.x0), round(box.y0), pixels.shape[1], pixels.shape[0])
            ):
                # Rows bottom up, as the renderer counts them.
                return np.ascontiguousarray(pixels[::-1]), box.x0, box.y0, IdentityTransform()
            return super().make_image(renderer, magnification, unsampled)

    return RasterImage


def _owners(c0: Any, c1: Any, columns: int) -> Any:
    """For each column, the last item (by index) whose [c0, c1) covers it, or -1.

    Items in time order (the usual case: spans, health pieces and ticks are
    read by start) have both bounds non-decreasing; then the last item
    starting at or before a column is the only one that can be the last to
    cover it, and a binary search answers for every column at once.
    """
    import numpy as np

    owner = np.full(columns, -1, dtype=np.int64)
    if not len(c0):
        return owner
    if bool(np.all(c0[1:] >= c0[:-1])) and bool(np.all(c1[1:] >= c1[:-1])):
        every = np.arange(columns)
        last = np.searchsorted(c0, every, side="right") - 1
        covered = (last >= 0) & (c1[np.maximum(last, 0)] > every)
        owner[covered] = last[covered]
        return owner
    for k in range(len(c0)):
        owner[c0[k] : c1[k]] = k
    return owner

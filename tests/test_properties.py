"""Bad input: every public write method driven with generated arguments (hypothesis).

Each argument is drawn valid or invalid (wrong types, empty and huge strings,
control characters and SQL fragments, naive and far-out datetimes, negative
and huge sizes, NaN, unknown streams), and the test knows which. For every
call:

* nothing but a ``StreamStateError`` comes out;
* a call with an invalid argument raises ``ValidationError`` naming that
  argument (``.field`` is it, or a key path under it such as
  ``config['fps']`` or ``samples[3].value``, and the message shows it); a
  call naming a stream that does not exist raises ``NotFound`` naming it;
* a refused call leaves every table exactly as it was (a full dump before
  and after);
* a call with only valid arguments succeeds, and the strings it was given
  read back unchanged (events store them with credentials masked, as
  designed).

A state machine then calls the methods in every order (completing a failed
segment, deleting an open one, writing to a removed stream, ...) against a
model of what each call must do.

Examples per test: STREAM_STATE_PROPERTY_EXAMPLES (default 30). The number
of cases tried is printed in the terminal summary.

The tests at the end pin, case by case, the bugs these tests found: lone
surrogates in text, NUL in JSON, wrong stream types and out-of-range stream
ids, huge integers, ``record_many`` of a non-iterable, bad archive
destinations and storage names, stream names that left the archive root,
jsonb numbers read back as ints, JSON nested the full 64 levels, reasons
too long for their event.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import re
import string
import zoneinfo
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from stream_state import (
    AlreadyExists,
    Event,
    HealthState,
    InvalidTransition,
    MetricSample,
    MetricSeries,
    NotFound,
    Recording,
    SegmentState,
    Severity,
    Stream,
    StreamRemoved,
    StreamStateError,
    StreamStatus,
    ValidationError,
)
from stream_state.models.metric import Sample, canonical_labels, series_key
from stream_state.models.stream import REASON_MAX_LENGTH
from stream_state.redact import redact_data, redact_text, redact_uri
from stream_state.states import EventType
from stream_state.timeutil import MAX_MILLIS, from_millis, to_millis
from stream_state.transitions import REPORTABLE_HEALTH, STATUS_TRANSITIONS
from stream_state.validate import EVENT_JSON_HEADROOM, MAX_JSON_DEPTH, MAX_STREAM_ID, normalise_path

from .conftest import CALL_PASSED
from .dbdump import dump_tables

EXAMPLES = int(os.environ.get("STREAM_STATE_PROPERTY_EXAMPLES", "30"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # one database per test, shared by its examples
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)

UTC = dt.UTC
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
LATEST = from_millis(MAX_MILLIS)  # 9999-12-31T23:59:59.999Z
# Segments in these tests start here, so "before the segment started" is a
# time that is valid on its own.
T0 = dt.datetime(2001, 1, 1, tzinfo=UTC)


# --- what was tried ---------------------------------------------------------------------


@dataclass
class Tally:
    examples: int = 0
    calls: int = 0
    outcomes: Counter = field(default_factory=Counter)

    def line(self, name: str) -> str:
        shown = ", ".join(f"{count} {what}" for what, count in self.outcomes.most_common())
        return f"{name}: {self.examples} examples, {self.calls} calls ({shown})"


class _Figures:
    tallies: dict[str, Tally] = {}

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.tallies:
            return
        terminalreporter.section("property-based tests: cases tried")
        for name, tally in self.tallies.items():
            terminalreporter.write_line(tally.line(name))
        calls = sum(t.calls for t in self.tallies.values())
        examples = sum(t.examples for t in self.tallies.values())
        refused = sum(
            n for t in self.tallies.values() for what, n in t.outcomes.items() if what != "accepted"
        )
        terminalreporter.write_line(
            f"total: {examples} examples, {calls} calls, {refused} refused with a StreamStateError "
            "naming the argument and the database unchanged, 0 other exceptions"
        )


@pytest.fixture(autouse=True, scope="module")
def _figures(request):
    manager = request.config.pluginmanager
    if not manager.has_plugin("stream-state-property-figures"):
        manager.register(_Figures(), "stream-state-property-figures")
    yield


# A test whose generators drift to (almost) only invalid input would still
# pass, testing nothing but the refusals: every test must have at least this
# share of its calls accepted. Over 8 runs of 30 examples on SQLite the
# lowest share seen was 20% (register), most tests accept 40-90% (the
# valid-only examples, half of them, must all be accepted); 10% leaves room
# for chance and none for drift.
MIN_ACCEPTED_SHARE = 0.1


@pytest.fixture
def tally(request) -> Iterator[Tally]:
    found = _Figures.tallies.setdefault(request.node.name, Tally())
    calls, accepted = found.calls, found.outcomes["accepted"]
    yield found
    if not request.node.stash.get(CALL_PASSED, False):
        return  # the failure says what went wrong; the tally would add noise
    calls, accepted = found.calls - calls, found.outcomes["accepted"] - accepted
    least = max(1, int(calls * MIN_ACCEPTED_SHARE))
    assert accepted >= least, (
        f"{request.node.name}: only {accepted} of {calls} calls accepted, fewer than {least} "
        f"({MIN_ACCEPTED_SHARE:.0%}): the generated arguments are almost all invalid"
    )


_tokens = itertools.count(1)


def token() -> int:
    """A number no other example of this run has used: unique names and paths."""
    return next(_tokens)


# --- arguments that know whether they are valid -------------------------------------


@dataclass(frozen=True)
class Arg:
    value: Any
    tag: str = "ok"  # "ok", "bad" (must be refused), "missing" (names something that does not exist)

    def __repr__(self) -> str:
        try:
            shown = repr(self.value)
        except ValueError:  # holds an int of more digits than repr will print
            shown = f"<{type(self.value).__name__} holding a huge int>"
        return f"{self.tag}:{shown[:120] + '...' if len(shown) > 120 else shown}"

    def _repr_pretty_(self, printer, cycle) -> None:  # how hypothesis shows a falsifying example
        printer.text(repr(self))


class _Omitted:
    def __repr__(self) -> str:
        return "<omitted>"


OMIT = _Omitted()  # the argument is not passed at all
FILL = "<fill to the maximum length>"


def ok(strategy: st.SearchStrategy) -> st.SearchStrategy[Arg]:
    return strategy.map(lambda value: Arg(value, "ok"))


def bad(strategy: st.SearchStrategy) -> st.SearchStrategy[Arg]:
    return strategy.map(lambda value: Arg(value, "bad"))


def either(valid: st.SearchStrategy, invalid: st.SearchStrategy) -> st.SearchStrategy[Arg]:
    """Invalid one time in four (when two tossed coins both say so)."""
    strategy = st.tuples(st.booleans(), st.booleans()).flatmap(
        lambda coins: bad(invalid) if all(coins) else ok(valid)
    )
    return with_valid_side(strategy, ok(valid))


def with_valid_side(
    strategy: st.SearchStrategy[Arg], valid: st.SearchStrategy[Arg]
) -> st.SearchStrategy[Arg]:
    """Remember the valid half of ``strategy``, which ``Draw`` uses in its valid-only examples."""
    strategy.valid_side = valid  # type: ignore[attr-defined]
    return strategy


class Draw:
    """Draws arguments for one example; in one example of two, valid ones only.

    With several arguments each invalid one time in four, few calls would
    have all of them valid; those are the calls that write, and whose stored
    strings are compared with what was given. The valid-only examples draw
    from the valid half of each argument's strategy: filtering the whole
    strategy made hypothesis give up on many of them, and a test could then
    run with (almost) no accepted call, which ``tally`` now refuses.
    """

    def __init__(self, data: st.DataObject):
        self.data = data
        self.valid_only = data.draw(st.booleans(), label="valid only")

    def scenario(self, strategy: st.SearchStrategy[str], accepting: str, label: str) -> str:
        """The situation the call is made in (a removed stream, a deleted segment...).

        A valid-only example takes the one in which the call must succeed, so
        that every test has its share of accepted calls whatever hypothesis
        favours; the other examples draw from all of them.
        """
        return accepting if self.valid_only else self.data.draw(strategy, label=label)

    def __call__(self, strategy: st.SearchStrategy[Arg], label: str) -> Arg:
        if self.valid_only:
            valid = getattr(strategy, "valid_side", None)
            strategy = valid if valid is not None else strategy.filter(lambda arg: arg.tag == "ok")
        return self.data.draw(strategy, label=label)


def _root(field_name: str) -> str:
    return re.split(r"[\[./]", field_name, maxsplit=1)[0]


def attempt(tally: Tally, call, args: dict[str, Arg], *, expect: type[StreamStateError] | None = None):
    """Call with ``args`` and check the contract; return the result or the error raised.

    ``expect``: the error a call with only valid arguments must raise (a call
    in the wrong order), or None when it must succeed.
    """
    invalid = sorted(name for name, arg in args.items() if arg.tag == "bad")
    missing = {name: arg.value for name, arg in args.items() if arg.tag == "missing"}
    kwargs = {name: arg.value for name, arg in args.items() if arg.value is not OMIT}
    note(f"call {getattr(call, '__qualname__', call)} with {args}")
    before = dump_tables()
    tally.calls += 1
    try:
        result = call(**kwargs)
    except StreamStateError as exc:
        tally.outcomes[type(exc).__name__] += 1
        assert dump_tables() == before, f"refused with {exc!r}, but the database changed"
        if invalid:
            assert isinstance(exc, ValidationError), f"invalid {invalid}, but {type(exc).__name__}: {exc}"
            assert _root(exc.field) in invalid, f"names {exc.field!r}; the invalid argument(s): {invalid}"
            assert exc.field in str(exc)
        elif missing:
            assert type(exc) is NotFound, f"{missing} do not exist, but {exc!r}"
            assert exc.kind == "stream" and exc.key in list(missing.values()), exc
            assert repr(exc.key) in str(exc)
        else:
            assert expect is not None, f"valid arguments refused: {exc!r}"
            assert isinstance(exc, expect), f"expected {expect.__name__}, got {exc!r}"
        return exc
    tally.outcomes["accepted"] += 1
    assert not invalid, f"accepted invalid {invalid}: {[args[name] for name in invalid]}"
    assert not missing, f"accepted unknown {missing}"
    assert expect is None, f"expected {expect.__name__}, but it returned {result!r}"
    return result


def same_json(stored: Any, given: Any) -> bool:
    """Equal as JSON: strings literally, bools as bools, numbers by value.

    PostgreSQL's jsonb keeps numbers as decimals, so a float written as
    ``1e+16`` reads back as the int ``10000000000000000``: equal in value.
    """
    if isinstance(stored, bool) or isinstance(given, bool):
        return type(stored) is type(given) and stored == given
    if isinstance(stored, (int, float)) and isinstance(given, (int, float)):
        return stored == given or float(stored) == float(given)
    if isinstance(stored, list) and isinstance(given, (list, tuple)):
        return len(stored) == len(given) and all(map(same_json, stored, given))
    if isinstance(stored, dict) and isinstance(given, dict):
        return stored.keys() == given.keys() and all(same_json(stored[k], given[k]) for k in given)
    return type(stored) is type(given) and stored == given


def millis(moment: dt.datetime) -> dt.datetime:
    """``moment`` as stored: UTC, milliseconds."""
    return from_millis(to_millis(moment))


# --- strategies ---------------------------------------------------------------------------

# Unicode format controls (bidi overrides, zero-width) count as control characters too.
CONTROL = "".join(map(chr, range(32))) + "\x7f" + "\u202e\u200b\u2066\ufeff\u00ad"


def huge_int() -> int:
    """An int of more digits than int.__repr__ will print (sys.get_int_max_str_digits)."""
    return 10**5000


HUGE = huge_int()
# Built when drawn: hypothesis shows st.just(HUGE) by repr(HUGE), which raises.
HUGE_INTS = st.builds(huge_int)
# What valid text may hold. Lone surrogates ("Cs": what os.fsdecode makes of
# bytes that are not UTF-8) cannot be stored, so they only appear in bad text.
PLAIN = st.characters(exclude_categories=("Cs", "Cf"), exclude_characters=CONTROL)
ANY_BUT_NUL = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
SURROGATES = "\udcff\ud800\udfff"
SQL_FRAGMENTS = (
    "'; DROP TABLE stream; --",
    '"; DROP TABLE recording; --',
    "' OR '1'='1",
    "Robert'); DELETE FROM event; --",
    "%s",
    "%(name)s",
    "?",
    "$1",
    ":name",
    "\\",
    "\\'",
    "' || (SELECT 1) || '",
    "NULL",
    "/* */",
    "$$;",
    "`id`",
    "é",
    "🎥",
    "\u202e",
    "\ufeff",
    "\uff43\uff41\uff4d",  # fullwidth "cam"
)


FORMAT_CHARACTERS = {"\u202e", "\ufeff", "\u200b", "\u2066", "\u00ad"}


def texts(alphabet: st.SearchStrategy[str], max_length: int) -> st.SearchStrategy[str]:
    """Non-empty text up to ``max_length``, mixing SQL fragments, and now and then exactly that long."""
    # Identifiers (PLAIN text) refuse format characters such as U+202E (issue 13); free text keeps them.
    fragments = [f for f in SQL_FRAGMENTS if alphabet is not PLAIN or not FORMAT_CHARACTERS & set(f)]
    piece = st.one_of(st.sampled_from(fragments), st.text(alphabet, min_size=1, max_size=12))
    mixed = st.lists(piece, min_size=1, max_size=5).map("".join).filter(lambda t: len(t) <= max_length)
    return st.one_of(mixed, mixed, alphabet.map(lambda c: c * max_length))


class NoOffset(dt.tzinfo):
    """A time zone that does not know its offset: the datetime is naive."""

    def utcoffset(self, moment: dt.datetime | None) -> None:
        return None

    def __repr__(self) -> str:
        return "NoOffset()"


JUNK = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.binary(max_size=8),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.integers(), st.integers(), max_size=2),
    st.sets(st.integers(), max_size=2),
    st.builds(object),
    st.decimals(allow_nan=True),
    st.complex_numbers(max_magnitude=10),
    st.dates(),
    st.timedeltas(),
)
NOT_TEXT = st.one_of(JUNK, st.datetimes())


def too_long(max_length: int) -> st.SearchStrategy[str]:
    return st.tuples(st.sampled_from(["x", "é", "🎥"]), st.sampled_from([1, 7, 1_000_000])).map(
        lambda t: t[0] * (max_length + t[1])
    )


def with_one_of(characters: str, alphabet: st.SearchStrategy[str] = PLAIN) -> st.SearchStrategy[str]:
    short = st.text(alphabet, max_size=8)
    return st.builds(lambda a, c, b: a + c + b, short, st.sampled_from(characters), short)


def bad_text(max_length: int, *, control: bool = False, required: bool = True) -> st.SearchStrategy:
    options = [NOT_TEXT, st.just(""), too_long(max_length), with_one_of("\x00"), with_one_of(SURROGATES)]
    if not control:
        options.append(with_one_of(CONTROL))
    if required:
        options.append(st.none())
    return st.one_of(*options)


def optional_text(max_length: int) -> st.SearchStrategy[Arg]:
    """``reason``, ``message``, ``storage``: None or text in which control characters are fine."""
    valid = st.one_of(st.just(OMIT), st.none(), texts(ANY_BUT_NUL, max_length))
    return either(valid, bad_text(max_length, control=True, required=False))


# Time zones: UTC, odd fixed offsets, and real zones (DST, half hours, +14).
ZONES = st.one_of(
    st.just(UTC),
    st.integers(-14 * 60 + 1, 14 * 60 - 1).map(lambda m: dt.timezone(dt.timedelta(minutes=m))),
    st.sampled_from(["America/St_Johns", "Asia/Kathmandu", "Pacific/Kiritimati", "Europe/Berlin"]).map(
        zoneinfo.ZoneInfo
    ),
)


def aware(earliest: dt.datetime, latest: dt.datetime = LATEST) -> st.SearchStrategy[dt.datetime]:
    """Aware datetimes whose instant lies within [earliest, latest], the bounds included."""
    day = dt.timedelta(days=1)
    inner = st.datetimes(
        min_value=(earliest + day).replace(tzinfo=None),
        max_value=(latest - day).replace(tzinfo=None),
        timezones=ZONES,
    )
    return st.one_of(inner, inner, st.sampled_from([earliest, latest]))


NAIVE = st.datetimes()
BEFORE_1970 = st.datetimes(max_value=dt.datetime(1969, 12, 30), timezones=ZONES)
AFTER_9999 = st.datetimes(
    min_value=dt.datetime(9999, 12, 31, 12),
    timezones=st.integers(-14 * 60 + 1, -13 * 60).map(lambda m: dt.timezone(dt.timedelta(minutes=m))),
)
NOT_A_DATETIME = st.one_of(
    st.dates(),
    st.times(),
    st.integers(0, 2**40),
    st.floats(),
    st.datetimes(timezones=ZONES).map(dt.datetime.isoformat),
    st.just("now"),
    st.timedeltas(),
    st.datetimes().map(lambda d: d.replace(tzinfo=NoOffset())),
)
BAD_TIME = st.one_of(NAIVE, BEFORE_1970, AFTER_9999, NOT_A_DATETIME)


def time_arg(earliest: dt.datetime = EPOCH, *, before_is_bad: bool = False) -> st.SearchStrategy[Arg]:
    """An optional time: omitted, None (now) or aware in range; bad otherwise."""
    invalid = BAD_TIME
    if before_is_bad:  # valid on its own, but before the segment started
        invalid = st.one_of(
            invalid,
            st.datetimes(
                min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(2000, 12, 30), timezones=st.just(UTC)
            ),
        )
    return either(st.one_of(st.just(OMIT), st.none(), aware(earliest)), invalid)


# JSON text holds no NUL (PostgreSQL's jsonb cannot) and no lone surrogate.
JSON_TEXT = st.one_of(
    st.text(ANY_BUT_NUL.filter(lambda c: c != "\x00"), max_size=20), st.sampled_from(SQL_FRAGMENTS)
)
JSON_KEYS = st.one_of(JSON_TEXT, st.sampled_from(["password", "api_key", "uri", ""]))
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    JSON_TEXT,
    st.just("rtsp://admin:secret@10.0.0.1/s"),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(JSON_KEYS, children, max_size=4),
    ),
    max_leaves=12,
)
JSON_OBJECTS = st.dictionaries(JSON_KEYS, JSON_VALUES, max_size=5)


def nested(depth: int) -> dict:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


NOT_JSON = st.one_of(
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 2**63, -(2**63) - 1, 10**30]),
    HUGE_INTS,
    st.sets(st.integers(), min_size=1, max_size=2),
    st.binary(min_size=1, max_size=4),
    st.datetimes(),
    st.builds(object),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.complex_numbers(max_magnitude=10),
)
NON_STR_KEYS = st.one_of(st.integers(), st.none(), st.tuples(st.integers()), st.floats(allow_nan=False))


def _with(container: dict, key: Any, value: Any) -> dict:
    copy = dict(container)
    copy[key] = value
    return copy


def bad_json_inside(depth: int = MAX_JSON_DEPTH) -> st.SearchStrategy[dict]:
    """JSON objects with something wrong somewhere inside, or nested deeper than ``depth``."""
    return st.one_of(
        st.builds(_with, JSON_OBJECTS, JSON_KEYS, NOT_JSON),
        st.builds(_with, JSON_OBJECTS, JSON_KEYS, with_one_of("\x00" + SURROGATES, ANY_BUT_NUL)),
        st.builds(_with, JSON_OBJECTS, with_one_of("\x00" + SURROGATES, ANY_BUT_NUL), JSON_SCALARS),
        st.builds(lambda obj, k, v: _with(obj, k, [1, {"deep": v}]), JSON_OBJECTS, JSON_KEYS, NOT_JSON),
        st.builds(_with, JSON_OBJECTS, NON_STR_KEYS, JSON_SCALARS),
        st.just(nested(depth + 1)),
    )


BAD_JSON_OBJECT = st.one_of(
    bad_json_inside(),
    st.lists(st.integers(), max_size=2),
    st.text(max_size=5),
    st.integers(),
    st.binary(max_size=4),
    st.sets(st.integers(), max_size=2),
)


def json_object_arg(*, optional: bool = True) -> st.SearchStrategy[Arg]:
    valid = st.one_of(JSON_OBJECTS, st.just(nested(64)))
    if optional:
        valid = st.one_of(st.just(OMIT), st.none(), valid)
    return either(valid, BAD_JSON_OBJECT)


def json_data_arg(depth: int = MAX_JSON_DEPTH) -> st.SearchStrategy[Arg]:
    """Any JSON value (or omitted, or None) nested at most ``depth`` levels; bad otherwise."""
    valid = st.one_of(st.just(OMIT), st.none(), JSON_VALUES, JSON_OBJECTS, st.just(nested(depth)))
    invalid = st.one_of(bad_json_inside(depth), NOT_JSON, st.lists(NOT_JSON, min_size=1, max_size=2))
    return either(valid, invalid)


SIZES = st.one_of(st.integers(0, 2**63 - 1), st.sampled_from([0, 1, 2**63 - 1]))
BAD_SIZES = st.one_of(
    st.integers(max_value=-1),
    st.integers(min_value=2**63, max_value=2**200),
    HUGE_INTS,
    st.booleans(),
    st.floats(),
    st.decimals(allow_nan=True),
    st.text(string.digits, min_size=1, max_size=4),
    st.complex_numbers(max_magnitude=10),
)
NUMBERS = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**1023), 2**1023))
BAD_NUMBERS = st.one_of(
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 2**1024, -(10**400)]),
    HUGE_INTS,
    st.booleans(),
    st.none(),
    st.text(string.digits, min_size=1, max_size=4),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.complex_numbers(max_magnitude=10),
    st.lists(st.floats(), max_size=2),
)

LABEL_KEYS = st.text(PLAIN.filter(lambda c: c not in '"\\'), min_size=1, max_size=100)
LABEL_VALUES = st.one_of(texts(PLAIN, 1000), st.integers(-(2**64) + 1, 2**64 - 1))
LABELS = st.dictionaries(LABEL_KEYS, LABEL_VALUES, max_size=4)
BAD_LABELS = st.one_of(
    st.builds(_with, LABELS, st.sampled_from(['a"b', "a\\b", "", "tab\there"]), st.just("v")),
    st.builds(
        _with,
        LABELS,
        LABEL_KEYS,
        st.one_of(
            st.just(""),
            st.floats(),
            st.booleans(),
            st.none(),
            st.lists(st.integers(), max_size=1),
            too_long(1000),
            with_one_of(CONTROL + SURROGATES),
            st.sampled_from([2**64, -(2**70)]),
            HUGE_INTS,
        ),
    ),
    st.builds(_with, LABELS, st.integers(), st.just("v")),
    st.just({f"k{i}": "v" for i in range(65)}),
    st.lists(st.text(max_size=3), max_size=2),
    st.text(max_size=3),
    st.integers(),
)

STATUS_VALUES = st.one_of(
    st.sampled_from(list(StreamStatus)), st.sampled_from([s.value for s in StreamStatus])
)
BAD_STATUS = st.one_of(
    st.sampled_from(["RUNNING", "paused", "", "running ", HealthState.HEALTHY, SegmentState.RECORDING]), JUNK
)
HEALTH_VALUES = st.one_of(
    st.sampled_from(sorted(REPORTABLE_HEALTH)), st.sampled_from([h.value for h in REPORTABLE_HEALTH])
)
BAD_HEALTH = st.one_of(
    st.sampled_from(["unknown", HealthState.UNKNOWN, "HEALTHY", "ok", StreamStatus.RUNNING]), JUNK
)
SEVERITIES = st.one_of(
    st.just(OMIT), st.sampled_from(list(Severity)), st.sampled_from([s.value for s in Severity])
)
BAD_SEVERITIES = st.one_of(st.sampled_from(["fatal", "INFO", "", HealthState.FAILED]), JUNK)
BOOL_FLAG = st.one_of(st.just(OMIT), st.booleans())
BAD_FLAG = st.one_of(
    st.sampled_from([0, 1, "true", "yes", 1.0]), st.none(), JUNK.filter(lambda v: not isinstance(v, bool))
)

GOOD_URIS = st.one_of(
    st.sampled_from(
        [
            "rtsp://10.0.0.5:554/stream1",
            "rtsps://user:p'ass;--@cam.example/live",
            "srt://relay.example:9000?streamid=cam1&passphrase=s3cret",
            "srt://:9000?mode=listener",
            "udp://239.0.0.1:5000",
            "udp://:5000",
            "file:///var/media/loop.mp4",
            "file:/var/media/l'oop.mp4",
            "http://cämera.local/mjpeg",
            "rtsp://[::1]:8554/s",
        ]
    ),
    st.builds(
        lambda user, password, host, path: (
            f"rtsp://{user}:{password}@10.0.{host // 256}.{host % 256}:554/{path}"
        ),
        st.text(string.ascii_letters + "-._~", min_size=1, max_size=8),
        # Passwords hold what RFC 3986 forbids in userinfo, too (issue 13): cameras accept them.
        st.text(string.ascii_letters + string.digits + "'!$&()*+,;=%-#?/@:", min_size=1, max_size=12),
        st.integers(0, 65535),
        st.text(string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@%/", max_size=40),
    ),
)
BAD_URIS = st.one_of(
    NOT_TEXT,
    st.none(),
    st.sampled_from(
        [
            "",
            "cam-1",
            "rtsp://",
            "rtsp:/relative",
            "http://cam:99999/",
            "rtsp://[::1/s",
            "rtsp://cam/with space",
            "rtsp://cam/\x00",
            "rtsp://cam/\n",
            "rtsp://cam/\udcff",
            "file:",
            "file:/",
            "1rtsp://cam/s",
            "rtsp://cam/" + "a" * 4000,
            "'; DROP TABLE stream; --",
        ]
    ),
)


def name_arg(max_length: int = 200) -> st.SearchStrategy[Arg]:
    """A stream name: ok ones are suffixes (the test puts a unique prefix in front)."""
    suffix = st.one_of(texts(PLAIN, max_length - 12).map(str.rstrip).filter(bool), st.just(FILL))
    spaced = st.builds(
        lambda ws, t, lead: ws + t if lead else t + ws,
        st.sampled_from([" ", "\u3000", "\xa0", "\u2003"]),
        texts(PLAIN, 20),
        st.booleans(),
    )
    return either(suffix, st.one_of(bad_text(max_length), spaced))


def prefixed(arg: Arg, prefix: str, max_length: int) -> Arg:
    if arg.tag != "ok":
        return arg
    suffix = arg.value
    if suffix == FILL:
        suffix = "ü" * (max_length - len(prefix))
    return Arg(prefix + suffix, "ok")


def fresh_stream(name: str | None = None, **kwargs: Any) -> Stream:
    return Stream.register(name or f"s{token()}", "rtsp://viewer:pw@10.0.0.1/s", **kwargs)


def last_event(stream: Stream, kind: str) -> Event | None:
    return (
        Event.select()
        .where((Event.stream == stream.id) & (Event.type == kind))
        .order_by(Event.id.desc())
        .first()
    )


# --- the stream's methods -------------------------------------------------------------------


@SETTINGS
@given(data=st.data())
def test_register(db, tally, data):
    tally.examples += 1
    draw = Draw(data)
    number = token()
    existing = data.draw(st.booleans(), label="existing")
    args = {
        "name": prefixed(draw(name_arg(), label="name"), f"n{number}-", 200),
        "uri": draw(either(GOOD_URIS, BAD_URIS), label="uri"),
        "config": draw(json_object_arg(), label="config"),
        "enabled": draw(either(BOOL_FLAG, BAD_FLAG), label="enabled"),
        "recording": draw(either(BOOL_FLAG, BAD_FLAG), label="recording"),
    }
    # An unknown desired-state flag (hypothesis draws 0 far more often than one time in ten).
    if not draw.valid_only and data.draw(st.integers(0, 9), label="typo") == 0:
        args[data.draw(st.sampled_from(["recordng", "enable", "desired_recording", "status"]))] = Arg(
            True, "bad"
        )
    old = None
    if existing and args["name"].tag == "ok":
        old = Stream.register(args["name"].value, "rtsp://old/s", {"old": 1}, enabled=False, recording=True)
    result = attempt(tally, Stream.register, args)
    if isinstance(result, StreamStateError):
        return
    stored = Stream.by_name(args["name"].value)
    assert stored.id == result.id and (old is None or stored.id == old.id)
    assert stored.name == args["name"].value
    assert stored.uri == args["uri"].value
    config = args["config"].value
    if config not in (OMIT, None):
        assert same_json(stored.config, config)
    else:
        assert stored.config == ({} if old is None else {"old": 1})
    defaults = {"enabled": True, "recording": False} if old is None else {"enabled": False, "recording": True}
    for flag, default in defaults.items():
        given_flag = args[flag].value
        assert getattr(stored, f"desired_{flag}") == (default if given_flag is OMIT else given_flag)
    if old is None:
        registered = last_event(stored, EventType.STREAM_REGISTERED)
        assert registered is not None and registered.data["uri"] == redact_uri(args["uri"].value)


@SETTINGS
@given(data=st.data())
def test_update_config(db, tally, data):
    tally.examples += 1
    draw = Draw(data)
    stream = fresh_stream(config={"fps": 15})
    removed = draw.scenario(st.sampled_from(["live"] * 7 + ["removed"]), "live", "stream") == "removed"
    if removed:
        stream.remove()
    args = {"config": draw(json_object_arg(optional=False), label="config")}
    result = attempt(tally, stream.update_config, args, expect=StreamRemoved if removed else None)
    if not isinstance(result, StreamStateError):
        assert same_json(Stream.get_by_id(stream.id).config, args["config"].value)


@SETTINGS
@given(data=st.data())
def test_set_desired(db, tally, data):
    tally.examples += 1
    draw = Draw(data)
    stream = fresh_stream()
    flag = st.one_of(st.just(OMIT), st.none(), st.booleans())
    args = {
        "enabled": draw(either(flag, BAD_FLAG.filter(lambda v: v is not None)), label="enabled"),
        "recording": draw(either(flag, BAD_FLAG.filter(lambda v: v is not None)), label="recording"),
    }
    given_flags = {name: arg.value for name, arg in args.items() if arg.value not in (OMIT, None)}
    if not given_flags and all(arg.tag == "ok" for arg in args.values()):
        args["enabled"] = Arg(args["enabled"].value, "bad")  # neither given: refused, naming both
    result = attempt(tally, stream.set_desired, args)
    if isinstance(result, StreamStateError):
        return
    stored = Stream.get_by_id(stream.id)
    expected = {"enabled": True, "recording": False, **given_flags}
    assert (stored.desired_enabled, stored.desired_recording) == (expected["enabled"], expected["recording"])
    assert result == (expected != {"enabled": True, "recording": False})


# The path from stopped to each status, through allowed moves.
_WAY_TO = {
    StreamStatus.STOPPED: [],
    StreamStatus.STARTING: ["starting"],
    StreamStatus.RUNNING: ["starting", "running"],
    StreamStatus.STOPPING: ["starting", "stopping"],
    StreamStatus.ERROR: ["error"],
}


@SETTINGS
@given(data=st.data())
def test_set_status(db, tally, data):
    tally.examples += 1
    draw = Draw(data)
    stream = fresh_stream()
    current = data.draw(st.sampled_from(list(StreamStatus)), label="current")
    for step in _WAY_TO[current]:
        stream.set_status(step)
    args = {
        "status": draw(either(STATUS_VALUES, BAD_STATUS), label="status"),
        "reason": draw(optional_text(REASON_MAX_LENGTH), label="reason"),
        "at": draw(time_arg(), label="at"),
    }
    expect = None
    if args["status"].tag == "ok":
        requested = StreamStatus(args["status"].value)
        if requested != current and requested not in STATUS_TRANSITIONS[current]:
            expect = InvalidTransition
    result = attempt(tally, stream.set_status, args, expect=expect)
    if isinstance(result, InvalidTransition):
        assert str(current) in str(result) and str(requested) in str(result), "names both statuses"
    if isinstance(result, StreamStateError):
        return
    stored = Stream.get_by_id(stream.id)
    assert stored.status == requested
    assert result == (requested != current)
    if result:
        event = last_event(stream, EventType.STATUS_CHANGED)
        reason = args["reason"].value
        reason = None if reason is OMIT else reason
        assert event.data == {
            "old": str(current),
            "new": str(requested),
            "reason": redact_text(reason) if reason else reason,
        }
        if args["at"].value not in (OMIT, None):
            assert stored.status_changed_at == millis(args["at"].value) == event.ts


@SETTINGS
@given(data=st.data())
def test_record_health(db, tally, data):
    tally.examples += 1
    draw = Draw(data)
    stream = fresh_stream()
    current = data.draw(st.sampled_from([None, *sorted(REPORTABLE_HEALTH)]), label="current")
    if current is not None:
        stream.record_health(current)
    args = {
        "state": draw(either(HEALTH_VALUES, BAD_HEALTH), label="state"),
        "reason": draw(optional_text(REASON_MAX_LENGTH), label="reason"),
        "data": draw(json_data_arg(), label="data"),
        "at": draw(time_arg(), label="at"),
    }
    result = attempt(tally, stream.record_health, args)
    if isinstance(result, StreamStateError):
        return
    requested = HealthState(args["state"].value)
    stored = Stream.get_by_id(stream.id)
    assert stored.health == requested
    assert result == (requested != (current or HealthState.UNKNOWN))
    at = args["at"].value
    if at not in (OMIT, None):
        assert stored.last_seen_at == millis(at)
    if result:
        event = last_event(stream, EventType.HEALTH_CHANGED)
        reason = None if args["reason"].value is OMIT else args["reason"].value
        detail = None if args["data"].value is OMIT else args["data"].value
        old = str(current or HealthState.UNKNOWN)
        expected = redact_data({"old": old, "new": str(requested), "reason": reason, "detail": detail})
        assert same_json(event.data, expected)


@SETTINGS
@given(data=st.data())
def test_begin_segment(db, tally, data, tmp_path):
    tally.examples += 1
    draw = Draw(data)
    stream = fresh_stream()
    state = draw.scenario(st.sampled_from(["live", "live", "live", "removed", "path taken"]), "live", "state")
    prefix = f"{tmp_path}/{token()}/"
    path = prefixed(
        draw(either(st.one_of(texts(PLAIN, 200), st.just(FILL)), bad_text(4096)), label="path"),
        prefix,
        4096,
    )
    as_path = data.draw(st.booleans(), label="as Path") and path.tag == "ok"
    if as_path:
        path = Arg(Path(path.value), "ok")
    args = {
        "path": path,
        "started_at": draw(time_arg(), label="started_at"),
        "storage": draw(optional_text(1000), label="storage"),
        "metadata": draw(json_object_arg(), label="metadata"),
    }
    expect = None
    if state == "removed":
        stream.remove()
        expect = StreamRemoved
    elif state == "path taken" and path.tag == "ok":
        fresh_stream().begin_segment(path.value)
        expect = AlreadyExists
    index = Stream.get_by_id(stream.id).next_segment_index
    result = attempt(tally, stream.begin_segment, args, expect=expect)
    # Stored in its one spelling (no "//", "/./", "x/..", trailing "/"): check compares by it.
    spelled = normalise_path(os.fspath(path.value)) if path.tag == "ok" else None
    if isinstance(result, AlreadyExists):
        assert result.field == "path" and repr(spelled) in str(result)
    if isinstance(result, StreamStateError):
        return
    row = Recording.get_by_id(result.id)
    assert row.path == spelled
    assert row.stream_id == stream.id and row.segment_index == index and row.state == SegmentState.RECORDING
    assert Stream.get_by_id(stream.id).next_segment_index == index + 1
    storage = args["storage"].value
    assert row.storage == (None if storage is OMIT else storage)
    metadata = args["metadata"].value
    assert same_json(row.metadata, None if metadata is OMIT else metadata)
    started = args["started_at"].value
    if started not in (OMIT, None):
        assert row.started_at == millis(started)


# --- a segment's methods ---------------------------------------------------------------------


def segment_in(state: str, tmp_path: Path, size: int | None = None) -> Recording:
    """A segment started at T0 and brought to ``state``: open, complete, failed or deleted."""
    stream = fresh_stream()
    path = tmp_path / f"seg-{token()}.mp4"
    if size is not None:
        path.write_bytes(b"\0" * size)
    segment = stream.begin_segment(path, started_at=T0, storage="disk0", metadata={"codec": "h264"})
    if state in ("complete", "deleted"):
        segment.complete_segment(ended_at=T0 + dt.timedelta(hours=1), size_bytes=5)
    elif state == "failed":
        segment.fail("gave up", at=T0 + dt.timedelta(minutes=1))
    if state == "deleted":
        Recording.get_by_id(segment.id).delete_file()
    return segment


SEGMENT_STATES = st.sampled_from(["open", "open", "open", "complete", "failed", "deleted"])


@SETTINGS
@given(data=st.data())
def test_checkpoint(db, tally, data, tmp_path):
    tally.examples += 1
    draw = Draw(data)
    state = draw.scenario(SEGMENT_STATES, "open", "state")
    segment = segment_in(state, tmp_path)
    args = {
        "size_bytes": draw(either(SIZES, st.one_of(BAD_SIZES, st.none())), label="size_bytes"),
        "at": draw(time_arg(T0, before_is_bad=True), label="at"),
    }
    expect = {"open": None, "deleted": NotFound}.get(state, InvalidTransition)
    result = attempt(tally, segment.checkpoint, args, expect=expect)
    if isinstance(result, StreamStateError):
        return
    row = Recording.get_by_id(segment.id)
    assert row.size_bytes == args["size_bytes"].value
    if args["at"].value not in (OMIT, None):
        assert row.checkpoint_at == millis(args["at"].value)


@SETTINGS
@given(data=st.data())
def test_complete_segment(db, tally, data, tmp_path):
    tally.examples += 1
    draw = Draw(data)
    state = draw.scenario(SEGMENT_STATES, "open", "state")
    # No file and no size is refused: not in a valid-only example.
    on_disk = data.draw(st.sampled_from([0, 4096] if draw.valid_only else [None, 0, 4096]), label="file size")
    segment = segment_in(state, tmp_path, size=on_disk)
    if state == "deleted":
        on_disk = None  # deleted with its row
    size = draw(either(st.one_of(st.just(OMIT), st.none(), SIZES), BAD_SIZES), label="size_bytes")
    if size.value in (OMIT, None) and on_disk is None:
        size = Arg(size.value, "bad")  # not given, and no file to measure
    args = {
        "ended_at": draw(time_arg(T0, before_is_bad=True), label="ended_at"),
        "size_bytes": size,
        "metadata": draw(json_object_arg(), label="metadata"),
    }
    expect = {"open": None, "deleted": NotFound}.get(state, InvalidTransition)
    metadata = args["metadata"].value
    if (
        state == "complete"  # completing again with the same values is harmless
        and all(arg.tag == "ok" for arg in args.values())
        and args["ended_at"].value not in (OMIT, None)
        and millis(args["ended_at"].value) == T0 + dt.timedelta(hours=1)
        and (on_disk if size.value in (OMIT, None) else size.value) == 5
        and all(same_json(v, {"codec": "h264"}.get(k)) for k, v in (metadata or {}).items())
    ):
        expect = None
    result = attempt(tally, segment.complete_segment, args, expect=expect)
    if isinstance(result, StreamStateError):
        return
    row = Recording.get_by_id(segment.id)
    assert row.state == SegmentState.COMPLETE
    assert row.size_bytes == (on_disk if size.value in (OMIT, None) else size.value)
    ended = args["ended_at"].value
    if ended not in (OMIT, None):
        assert row.ended_at == millis(ended)
    assert same_json(row.metadata, {"codec": "h264", **(metadata if metadata not in (OMIT, None) else {})})


@SETTINGS
@given(data=st.data())
def test_fail(db, tally, data, tmp_path):
    tally.examples += 1
    draw = Draw(data)
    state = draw.scenario(SEGMENT_STATES, "open", "state")
    segment = segment_in(state, tmp_path)
    args = {
        "reason": draw(either(texts(ANY_BUT_NUL, 2000), bad_text(2000, control=True)), label="reason"),
        # Before the start is fine: the end is clamped to the start.
        "at": draw(time_arg(), label="at"),
    }
    expect = {"open": None, "failed": None, "deleted": NotFound}.get(state, InvalidTransition)
    events = Event.select().count()
    result = attempt(tally, segment.fail, args, expect=expect)
    if isinstance(result, StreamStateError):
        return
    row = Recording.get_by_id(segment.id)
    assert row.state == SegmentState.FAILED
    if state == "failed":
        assert Event.select().count() == events, "failing a failed segment again writes nothing"
        return
    at = args["at"].value
    if at not in (OMIT, None):
        assert row.ended_at == max(millis(at), T0)
    event = Event.select().where(Event.type == EventType.SEGMENT_FAILED).order_by(Event.id.desc()).first()
    reason = args["reason"].value
    assert event.message == redact_text(f"segment {segment.path} failed: {reason}")
    assert event.data["reason"] == redact_text(reason) and event.data["recording_id"] == segment.id


@SETTINGS
@given(data=st.data())
def test_archive(db, tally, data, tmp_path, monkeypatch):
    tally.examples += 1
    draw = Draw(data)
    monkeypatch.chdir(tmp_path)  # should "" ever be taken for a directory, it is this one
    state = draw.scenario(
        st.sampled_from(["complete", "complete", "open", "failed", "deleted", "destination taken"]),
        "complete",
        "state",
    )
    segment = segment_in("complete" if state == "destination taken" else state, tmp_path, size=10)
    root = tmp_path / f"archive-{token()}"
    a_file = tmp_path / f"file-{token()}"
    a_file.write_bytes(b"")
    bad_roots = st.sampled_from(
        [123, os.fsencode(root), f"{root}\x00", f"{root}\udcff", "", str(a_file / "archive"), ["x"]]
    )
    args = {
        "dest_root": draw(either(st.sampled_from([None, str(root), root]), bad_roots), label="dest_root"),
        "storage": draw(optional_text(1000), label="storage"),
    }
    dest_root = args["dest_root"].value
    storage = args["storage"].value
    stream_name = Stream.get_by_id(segment.stream_id).name
    original = Path(segment.path)
    dest = Path(root, stream_name, original.name)
    expect = {"open": InvalidTransition, "failed": InvalidTransition, "deleted": NotFound}.get(state)
    if state == "destination taken":
        if dest_root is None or args["dest_root"].tag == "bad":
            expect = None
        else:
            dest.parent.mkdir(parents=True)
            dest.write_bytes(b"someone else's")
            expect = AlreadyExists
    result = attempt(tally, segment.archive, args, expect=expect)
    if isinstance(result, StreamStateError):
        assert state == "deleted" or original.exists(), "a refused archive leaves the file alone"
        return
    row = Recording.get_by_id(segment.id)
    assert row.archived and row.state == SegmentState.COMPLETE and not (row.metadata or {}).get("archive")
    if dest_root is None:
        assert row.path == str(original) and row.storage == "disk0"
    else:
        assert row.path == str(dest) and dest.exists() and not original.exists()
        assert row.storage == (storage if storage not in (OMIT, None) else "disk0")


# --- events and metrics ---------------------------------------------------------------------


def stream_arg(stream: Stream) -> st.SearchStrategy[Arg]:
    """A stream: the Stream, its id, None; an id nobody has; or not a stream id at all."""
    unknown = st.one_of(st.integers(10**6, MAX_STREAM_ID), st.just(MAX_STREAM_ID))
    valid = st.one_of(st.just(OMIT), st.none(), st.just(stream), st.just(stream.id))
    wrong = st.one_of(
        st.booleans(),
        st.floats(),
        st.text(max_size=3),
        st.lists(st.integers(), max_size=1),
        st.builds(Stream),
        st.integers(max_value=0),  # ids start at 1
        st.integers(min_value=MAX_STREAM_ID + 1, max_value=2**70),  # beyond PostgreSQL's SERIAL
        HUGE_INTS,
    )
    return with_valid_side(
        st.one_of(ok(valid), ok(valid), unknown.map(lambda v: Arg(v, "missing")), bad(wrong)), ok(valid)
    )


@SETTINGS
@given(data=st.data())
def test_event_record(db, tally, data):
    tally.examples += 1
    draw = Draw(data)
    stream = fresh_stream()
    args = {
        "type": draw(either(texts(PLAIN, 100), bad_text(100)), label="type"),
        "stream": draw(stream_arg(stream), label="stream"),
        "severity": draw(either(SEVERITIES, BAD_SEVERITIES), label="severity"),
        "message": draw(optional_text(10_000), label="message"),
        # An event's own data may nest a little deeper than a caller's config.
        "data": draw(json_data_arg(MAX_JSON_DEPTH + EVENT_JSON_HEADROOM), label="data"),
        "at": draw(time_arg(), label="at"),
    }
    result = attempt(tally, Event.record, args)
    if isinstance(result, StreamStateError):
        return
    row = Event.get_by_id(result.id)
    assert row.type == args["type"].value
    assert row.stream_id == (stream.id if args["stream"].value not in (OMIT, None) else None)
    severity = args["severity"].value
    assert row.severity == (Severity.INFO if severity is OMIT else Severity(severity))
    message = args["message"].value
    assert row.message == (redact_text(message) if message not in (OMIT, None) else None)
    payload = args["data"].value
    assert same_json(row.data, redact_data(payload) if payload is not OMIT else None)
    if args["at"].value not in (OMIT, None):
        assert row.ts == millis(args["at"].value)


def labels_arg() -> st.SearchStrategy[Arg]:
    return either(st.one_of(st.just(OMIT), st.none(), LABELS), BAD_LABELS)


@SETTINGS
@given(data=st.data())
def test_metric_sample_record(db, tally, data):
    tally.examples += 1
    draw = Draw(data)
    stream = fresh_stream()
    args = {
        "name": prefixed(draw(either(texts(PLAIN, 190), bad_text(200)), label="name"), f"m{token()}", 200),
        "value": draw(either(NUMBERS, BAD_NUMBERS), label="value"),
        "stream": draw(stream_arg(stream), label="stream"),
        "labels": draw(labels_arg(), label="labels"),
        "at": draw(time_arg(), label="at"),
    }
    result = attempt(tally, MetricSample.record, args)
    if isinstance(result, StreamStateError):
        return
    stream_id = stream.id if args["stream"].value not in (OMIT, None) else None
    labels = args["labels"].value
    labels = None if labels is OMIT else labels
    series = MetricSeries.get(MetricSeries.key == series_key(args["name"].value, stream_id, labels))
    assert series.name == args["name"].value and series.labels == canonical_labels(labels)
    stored = MetricSample.get((MetricSample.series == series.id) & (MetricSample.ts == result.ts))
    assert stored.value == float(args["value"].value)
    if args["at"].value not in (OMIT, None):
        assert result.ts == millis(args["at"].value)


@dataclass
class DrawnSample:
    item: Any
    bad: bool
    missing: int | None
    key: str | None  # the series key of a valid sample
    ts: int | None  # None: "now"
    value: float | None


def draw_sample(data, draw: Draw, stream: Stream, names: list[str], label: str) -> DrawnSample:
    forms = ["tuple", "tuple", "dict", "Sample"] + ([] if draw.valid_only else ["junk"])
    form = data.draw(st.sampled_from(forms), label=f"{label} form")
    if form == "junk":
        item = data.draw(
            st.one_of(
                st.integers(),
                st.none(),
                st.text(max_size=4),
                st.tuples(st.text(max_size=2)),
                st.tuples(*[st.integers()] * 6),
                st.just({"name": "x", "value": 1.0, "unit": "s"}),
                st.just({"value": 1.0}),
                st.just({"name": "x"}),
            ),
            label=label,
        )
        return DrawnSample(item, True, None, None, None, None)
    name = draw(either(st.sampled_from(names), bad_text(200)), label=f"{label} name")
    value = draw(either(NUMBERS, BAD_NUMBERS), label=f"{label} value")
    where = draw(stream_arg(stream), label=f"{label} stream")
    labels = draw(
        either(
            st.one_of(st.none(), st.sampled_from([{"a": "1"}, {"a": 1}, {"b": "x", "a": "y"}])), BAD_LABELS
        ),
        label=f"{label} labels",
    )
    at = draw(time_arg(), label=f"{label} at")
    parts = {"name": name, "value": value, "stream": where, "labels": labels, "at": at}
    values = {k: a.value for k, a in parts.items()}
    if form == "tuple":
        fields = [values["name"], values["value"], values["stream"], values["labels"], values["at"]]
        while fields and fields[-1] is OMIT and len(fields) > 2:
            fields.pop()
        item = tuple(None if f is OMIT else f for f in fields)
    elif form == "dict":
        item = {k: v for k, v in values.items() if v is not OMIT}
    else:
        item = Sample(
            *[None if values[k] is OMIT else values[k] for k in ("name", "value", "stream", "labels", "at")]
        )
    is_bad = any(a.tag == "bad" for a in parts.values())
    missing = where.value if where.tag == "missing" else None
    key = ts = number = None
    if not is_bad:
        stream_id = stream.id if values["stream"] not in (OMIT, None) else None
        key = series_key(values["name"], stream_id, None if values["labels"] is OMIT else values["labels"])
        ts = None if values["at"] in (OMIT, None) else to_millis(values["at"])
        number = float(values["value"])
    return DrawnSample(item, is_bad, missing, key, ts, number)


@SETTINGS
@given(data=st.data())
def test_metric_sample_record_many(db, tally, data):
    tally.examples += 1
    draw = Draw(data)
    stream = fresh_stream()
    number = token()
    names = [f"m{number}-fps", f"m{number}-'; DROP TABLE metric_sample; --"]
    if not draw.valid_only and data.draw(st.integers(0, 9), label="not a list") == 0:
        whole = data.draw(
            st.sampled_from(["fps", b"fps", {"name": "fps", "value": 1.0}, Sample("fps", 1.0), 5, None, 1.5])
        )
        attempt(tally, MetricSample.record_many, {"samples": Arg(whole, "bad")})
        return
    drawn = [
        draw_sample(data, draw, stream, names, f"samples[{i}]") for i in range(data.draw(st.integers(0, 6)))
    ]
    first_bad = next((i for i, d in enumerate(drawn) if d.bad), None)
    missing = [d.missing for d in drawn if d.missing is not None]
    items = [d.item for d in drawn]
    if data.draw(st.booleans(), label="as generator"):
        samples: Any = (item for item in items)
    else:
        samples = items
    if first_bad is not None:
        tally.calls += 1
        before = dump_tables()
        with pytest.raises(ValidationError) as info:
            MetricSample.record_many(samples)
        tally.outcomes["ValidationError"] += 1
        assert info.value.field.startswith(f"samples[{first_bad}]"), (info.value.field, first_bad)
        assert info.value.field in str(info.value)
        assert dump_tables() == before
        return
    tag = "missing" if missing else "ok"
    arg = Arg(samples, tag)
    if missing:
        # Any of the unknown streams may be the one named.
        before = dump_tables()
        tally.calls += 1
        with pytest.raises(NotFound) as info:
            MetricSample.record_many(samples)
        tally.outcomes["NotFound"] += 1
        assert info.value.key in missing and repr(info.value.key) in str(info.value)
        assert dump_tables() == before
        return
    result = attempt(tally, MetricSample.record_many, {"samples": arg})
    assert result == len(items)
    expected: dict[str, dict[int | None, float]] = {}
    for d in drawn:
        expected.setdefault(d.key, {})[d.ts] = d.value  # the last one for a millisecond wins
    for key, by_ts in expected.items():
        series = MetricSeries.get(MetricSeries.key == key)
        stored = {s.ts: s.value for s in MetricSample.for_series(series)}
        if None in by_ts:  # the samples without a time share one "now"
            now = [ts for ts in stored if to_millis(ts) not in by_ts]
            assert len(now) == 1
            by_ts[to_millis(now[0])] = by_ts.pop(None)
        assert {to_millis(ts): value for ts, value in stored.items()} == by_ts


# --- calls in every order --------------------------------------------------------------------


@dataclass
class StreamModel:
    stream: Stream
    removed: bool = False
    status: StreamStatus = StreamStatus.STOPPED
    health: HealthState = HealthState.UNKNOWN


@dataclass
class SegmentModel:
    segment: Recording
    owner: StreamModel
    state: str = "recording"  # recording, complete, failed, deleted
    ended: int | None = None
    size: int | None = None
    archived: bool = False


class Lifecycle(RuleBasedStateMachine):
    """Every write method, in any order, against a model of what it must do."""

    media: Path
    tally: Tally

    streams = Bundle("streams")
    segments = Bundle("segments")

    def __init__(self) -> None:
        super().__init__()
        self.models: list[StreamModel] = []
        self.segment_models: list[SegmentModel] = []
        self.tally.examples += 1

    def call(self, fn, expect=None, **kwargs):
        return attempt(self.tally, fn, {k: Arg(v) for k, v in kwargs.items()}, expect=expect)

    @rule(target=streams)
    def register(self):
        model = StreamModel(fresh_stream())
        self.models.append(model)
        return model

    @rule(target=streams, old=streams)
    def register_a_removed_name_again(self, old):
        if not old.removed or any(m.stream.name == old.stream.name and not m.removed for m in self.models):
            return multiple()
        model = StreamModel(self.call(Stream.register, name=old.stream.name, uri="rtsp://10.0.0.2/s"))
        assert model.stream.id != old.stream.id, "a removed stream's name makes a new stream"
        self.models.append(model)
        return model

    @rule(target=segments, owner=streams)
    def begin_segment(self, owner):
        path = self.media / f"m-{token()}.mp4"
        result = self.call(
            owner.stream.begin_segment,
            StreamRemoved if owner.removed else None,
            path=path,
            started_at=T0,
        )
        if owner.removed:
            return multiple()
        model = SegmentModel(result, owner)
        self.segment_models.append(model)
        return model

    @rule(seg=segments, size=st.integers(0, 10**6), minutes=st.integers(0, 3))
    def checkpoint(self, seg, size, minutes):
        expect = {"recording": None, "deleted": NotFound}.get(seg.state, InvalidTransition)
        self.call(seg.segment.checkpoint, expect, size_bytes=size, at=T0 + dt.timedelta(minutes=minutes))

    @rule(seg=segments, size=st.integers(0, 3), minutes=st.integers(0, 2))
    def complete_segment(self, seg, size, minutes):
        ended = to_millis(T0 + dt.timedelta(minutes=minutes))
        if seg.state == "recording" or (seg.state == "complete" and (seg.ended, seg.size) == (ended, size)):
            expect = None
        else:
            expect = NotFound if seg.state == "deleted" else InvalidTransition
        self.call(seg.segment.complete_segment, expect, ended_at=from_millis(ended), size_bytes=size)
        if expect is None:
            seg.state, seg.ended, seg.size = "complete", ended, size

    @rule(seg=segments, reason=texts(ANY_BUT_NUL, 50))
    def fail(self, seg, reason):
        expect = {"recording": None, "failed": None, "deleted": NotFound}.get(seg.state, InvalidTransition)
        self.call(seg.segment.fail, expect, reason=reason)
        if expect is None:
            seg.state = "failed"

    @rule(seg=segments)
    def delete_file(self, seg):
        expect = InvalidTransition if seg.state == "recording" else None
        freed = self.call(seg.segment.delete_file, expect)
        if expect is None:
            assert freed == 0  # there never was a file
            seg.state = "deleted"

    @rule(seg=segments)
    def archive(self, seg):
        expect = {"complete": None, "deleted": NotFound}.get(seg.state, InvalidTransition)
        self.call(seg.segment.archive, expect)
        if expect is None:
            seg.archived = True

    @rule(owner=streams)
    def remove(self, owner):
        open_segments = any(s.owner is owner and s.state == "recording" for s in self.segment_models)
        result = self.call(
            owner.stream.remove, InvalidTransition if open_segments and not owner.removed else None
        )
        if not open_segments or owner.removed:
            assert result is (not owner.removed)
            owner.removed = True

    @rule(owner=streams, status=st.sampled_from(list(StreamStatus)))
    def set_status(self, owner, status):
        if owner.removed:
            expect = StreamRemoved
        elif status != owner.status and status not in STATUS_TRANSITIONS[owner.status]:
            expect = InvalidTransition
        else:
            expect = None
        result = self.call(owner.stream.set_status, expect, status=status)
        if expect is None:
            assert result is (status != owner.status)
            owner.status = status

    @rule(owner=streams, state=st.sampled_from(sorted(REPORTABLE_HEALTH)))
    def record_health(self, owner, state):
        result = self.call(owner.stream.record_health, StreamRemoved if owner.removed else None, state=state)
        if not owner.removed:
            assert result is (state != owner.health)
            owner.health = state

    @rule(owner=streams, fps=st.integers(1, 3))
    def update_config(self, owner, fps):
        self.call(owner.stream.update_config, StreamRemoved if owner.removed else None, config={"fps": fps})

    @rule(owner=streams, enabled=st.booleans())
    def set_desired(self, owner, enabled):
        self.call(owner.stream.set_desired, StreamRemoved if owner.removed else None, enabled=enabled)

    @rule(owner=streams)
    def write_event_and_sample(self, owner):
        # History of a removed stream stays writable (samples buffered when it was removed).
        self.call(Event.record, type="note", stream=owner.stream)
        self.call(MetricSample.record, name="fps", value=1.0, stream=owner.stream)

    @invariant()
    def the_database_agrees_with_the_model(self):
        for model in self.models:
            row = Stream.get_by_id(model.stream.id)
            assert (row.removed_at is not None, row.status, row.health) == (
                model.removed,
                model.status,
                model.health,
            )
        for seg in self.segment_models:
            row = Recording.get_or_none(Recording.id == seg.segment.id)
            if seg.state == "deleted":
                assert row is None
                continue
            assert row is not None and str(row.state) == seg.state and row.archived == seg.archived
            if seg.state == "complete":
                assert (to_millis(row.ended_at), row.size_bytes) == (seg.ended, seg.size)


def test_calls_in_any_order(db, tally, tmp_path):
    class Bound(Lifecycle):
        media = tmp_path

    Bound.tally = tally
    run_state_machine_as_test(
        Bound,
        settings=settings(SETTINGS, max_examples=max(EXAMPLES // 2, 5), stateful_step_count=25),
    )


# --- the bugs these tests found, pinned case by case -------------------------------------
#
# One test per bug (fixed in 14b0934), checking every case of it and listing
# the ones that fail.


def _refused_naming(call, argument: str) -> None:
    """The call must raise a StreamStateError naming ``argument`` and change nothing."""
    before = dump_tables()
    with pytest.raises(StreamStateError) as info:
        call()
    error = info.value
    assert argument in str(error), f"the message names {argument!r}: {error}"
    if isinstance(error, ValidationError):
        assert _root(error.field) == argument, error.field
    assert dump_tables() == before, "the database changed"


def _every_case(tmp_path: Path, cases: dict[str, tuple[str | None, Any]], *, completed: bool = False) -> None:
    """Run each case on a fresh stream, segment and directory; fail listing those that fail.

    The segment is open, or with ``completed`` complete (with a 10-byte file).

    A case is (argument, call): the call must be refused naming the argument,
    or, with argument None, simply succeed.
    """
    failures = []
    for number, (name, (argument, call)) in enumerate(cases.items()):
        media = tmp_path / f"case-{number}"
        media.mkdir()
        stream = fresh_stream()
        segment = stream.begin_segment(media / "open.mp4", started_at=T0)
        if completed:
            Path(segment.path).write_bytes(b"0123456789")
            segment.complete_segment(ended_at=T0, size_bytes=10)
        try:
            if argument is None:
                call(stream, segment, media)
            else:
                _refused_naming(lambda c=call, s=stream, g=segment, m=media: c(s, g, m), argument)
        except (Exception, pytest.fail.Exception) as exc:
            failures.append(f"{name}: {type(exc).__module__}.{type(exc).__name__}: {str(exc)[:300]}")
    assert not failures, f"{len(failures)} of {len(cases)} cases fail:\n" + "\n".join(failures)


def _name() -> str:
    return f"x{token()}"


SURROGATE = "cam-\udcff"  # what os.fsdecode() makes of a file name that is not UTF-8


def test_lone_surrogates_are_refused_naming_the_argument(db, tmp_path):
    _every_case(
        tmp_path,
        {
            "register name": ("name", lambda s, g, m: Stream.register(SURROGATE, "rtsp://h/s")),
            "register uri": ("uri", lambda s, g, m: Stream.register(_name(), "rtsp://h/\udcff")),
            "register config": (
                "config",
                lambda s, g, m: Stream.register(_name(), "rtsp://h/s", {"k": SURROGATE}),
            ),
            "update_config": ("config", lambda s, g, m: s.update_config({SURROGATE: 1})),
            "begin_segment path": ("path", lambda s, g, m: s.begin_segment(m / SURROGATE)),
            "begin_segment storage": (
                "storage",
                lambda s, g, m: s.begin_segment(m / "a.mp4", storage=SURROGATE),
            ),
            "begin_segment metadata": (
                "metadata",
                lambda s, g, m: s.begin_segment(m / "b.mp4", metadata={"k": SURROGATE}),
            ),
            "set_status reason": ("reason", lambda s, g, m: s.set_status("starting", reason=SURROGATE)),
            "record_health reason": ("reason", lambda s, g, m: s.record_health("degraded", reason=SURROGATE)),
            "record_health data": (
                "data",
                lambda s, g, m: s.record_health("degraded", data={"k": SURROGATE}),
            ),
            "fail reason": ("reason", lambda s, g, m: g.fail(SURROGATE)),
            "complete_segment metadata": (
                "metadata",
                lambda s, g, m: g.complete_segment(size_bytes=1, metadata={"k": SURROGATE}),
            ),
            "Event.record type": ("type", lambda s, g, m: Event.record(SURROGATE)),
            "Event.record message": ("message", lambda s, g, m: Event.record("note", message=SURROGATE)),
            "Event.record data": ("data", lambda s, g, m: Event.record("note", data={"k": SURROGATE})),
            "MetricSample.record name": ("name", lambda s, g, m: MetricSample.record(SURROGATE, 1.0)),
            "MetricSample.record labels": (
                "labels",
                lambda s, g, m: MetricSample.record("fps", 1.0, labels={"k": SURROGATE}),
            ),
        },
    )


def test_nul_in_json_is_refused_on_both_backends(db, tmp_path):
    _every_case(
        tmp_path,
        {
            "register config": (
                "config",
                lambda s, g, m: Stream.register(_name(), "rtsp://h/s", {"k": "a\x00b"}),
            ),
            "register config key": (
                "config",
                lambda s, g, m: Stream.register(_name(), "rtsp://h/s", {"a\x00": 1}),
            ),
            "update_config": ("config", lambda s, g, m: s.update_config({"k": ["\x00"]})),
            "begin_segment metadata": (
                "metadata",
                lambda s, g, m: s.begin_segment(m / "a.mp4", metadata={"k": "\x00"}),
            ),
            "complete_segment metadata": (
                "metadata",
                lambda s, g, m: g.complete_segment(size_bytes=1, metadata={"k": "\x00"}),
            ),
            "record_health data": ("data", lambda s, g, m: s.record_health("degraded", data={"k": "\x00"})),
            "Event.record data": ("data", lambda s, g, m: Event.record("note", data={"k": "\x00"})),
        },
    )


def test_event_record_refuses_a_stream_of_the_wrong_type(db, tmp_path):
    fresh_stream()  # stream 1 exists: 1.5 and True must not land on it
    unsaved = Stream(name="never-saved", uri="rtsp://h/s")
    _every_case(
        tmp_path,
        {
            f"stream={value!r}": ("stream", lambda s, g, m, v=value: Event.record("note", stream=v))
            for value in ("abc", 1.5, True, [1], unsaved, 0, -1, 2**40, 2**70)
        },
    )


def test_a_metric_stream_id_beyond_64_bits_is_refused(db, tmp_path):
    _every_case(
        tmp_path,
        {
            "record": ("stream", lambda s, g, m: MetricSample.record("fps", 1.0, stream=2**70)),
        },
    )


def test_huge_integers_are_refused_naming_the_argument(db, tmp_path):
    _every_case(
        tmp_path,
        {
            "checkpoint size_bytes": ("size_bytes", lambda s, g, m: g.checkpoint(HUGE)),
            "complete_segment size_bytes": (
                "size_bytes",
                lambda s, g, m: g.complete_segment(size_bytes=HUGE),
            ),
            "MetricSample.record value": ("value", lambda s, g, m: MetricSample.record("fps", HUGE)),
            "MetricSample.record labels": (
                "labels",
                lambda s, g, m: MetricSample.record("fps", 1.0, labels={"k": HUGE}),
            ),
            "Event.record data": ("data", lambda s, g, m: Event.record("note", data={"n": HUGE})),
            "register config": (
                "config",
                lambda s, g, m: Stream.register(_name(), "rtsp://h/s", {"n": HUGE}),
            ),
        },
    )


def test_record_many_refuses_a_non_iterable(db, tmp_path):
    _every_case(
        tmp_path,
        {
            f"samples={value!r}": ("samples", lambda s, g, m, v=value: MetricSample.record_many(v))
            for value in (5, None, 1.5)
        },
    )


def _archive_and_keep_the_file(segment: Recording, **kwargs: Any) -> None:
    try:
        segment.archive(**kwargs)
    finally:
        assert Path(segment.path).exists(), "the file stays where it was"


def test_archive_refuses_a_bad_destination_and_changes_nothing(db, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # "" moves the file into the current directory
    a_file = tmp_path / "a-file"
    a_file.write_bytes(b"")
    destinations = {
        "int": 123,
        "bytes": os.fsencode(tmp_path / "archive"),
        "NUL": f"{tmp_path}/arch\x00ive",
        "surrogate": f"{tmp_path}/arch\udcffive",
        "empty (the current directory)": "",
        "under a regular file": str(a_file / "archive"),
    }
    _every_case(
        tmp_path,
        {
            name: ("dest_root", lambda s, g, m, d=dest: _archive_and_keep_the_file(g, dest_root=d))
            for name, dest in destinations.items()
        },
        completed=True,
    )


def test_archive_refuses_a_bad_storage(db, tmp_path):
    _every_case(
        tmp_path,
        {
            f"storage={value!r}": (
                "storage",
                lambda s, g, m, v=value: _archive_and_keep_the_file(g, dest_root=m / "archive", storage=v),
            )
            for value in (7, ["disk1"], "", "a\x00b")
        },
        completed=True,
    )


def _archived_under_the_root(stream_name: str, media: Path) -> None:
    stream = fresh_stream(stream_name)
    path = media / f"seg-{token()}.mp4"
    path.write_bytes(b"x")
    segment = stream.begin_segment(path, started_at=T0)
    segment.complete_segment(ended_at=T0, size_bytes=1)
    root = media / "archive" / "root"
    segment.archive(root)
    archived = Path(Recording.get_by_id(segment.id).path).resolve()
    assert archived.is_relative_to(root.resolve()), f"archived to {archived}, outside {root}"


def test_archive_keeps_files_under_the_destination_root(db, tmp_path):
    _every_case(
        tmp_path,
        {
            "a/b": (None, lambda s, g, m: _archived_under_the_root("a/b", m)),
            "../../escaped": (None, lambda s, g, m: _archived_under_the_root("../../escaped", m)),
            "absolute": (None, lambda s, g, m: _archived_under_the_root(str(m / "elsewhere"), m)),
        },
    )


def _no_change(stream: Stream, call) -> None:
    before = dump_tables()
    assert call(stream) is False
    assert dump_tables() == before


def test_an_unchanged_config_with_a_large_float_is_no_change(db, tmp_path):
    _every_case(
        tmp_path,
        {
            "update_config": (
                None,
                lambda s, g, m: _no_change(
                    fresh_stream(config={"max": 1e16}), lambda t: t.update_config({"max": 1e16})
                ),
            ),
        },
    )


def _accepted(call) -> None:
    result = call()
    assert result is True or isinstance(result, Stream), result


def test_json_nested_the_full_64_levels_is_accepted(db, tmp_path):
    _every_case(
        tmp_path,
        {
            "register (a change)": (
                None,
                lambda s, g, m: _accepted(lambda: Stream.register(s.name, s.uri, nested(64))),
            ),
            "update_config": (None, lambda s, g, m: _accepted(lambda: s.update_config(nested(64)))),
            "record_health": (
                None,
                lambda s, g, m: _accepted(lambda: s.record_health("degraded", data=nested(64))),
            ),
        },
    )


def test_a_reason_of_the_full_allowed_length_is_accepted(db, tmp_path):
    _every_case(
        tmp_path,
        {
            "set_status": (
                None,
                lambda s, g, m: _accepted(lambda: s.set_status("starting", reason="r" * REASON_MAX_LENGTH)),
            ),
            "record_health": (
                None,
                lambda s, g, m: _accepted(
                    lambda: s.record_health("degraded", reason="r" * REASON_MAX_LENGTH)
                ),
            ),
            "set_status, one more": (
                "reason",
                lambda s, g, m: s.set_status("starting", reason="r" * (REASON_MAX_LENGTH + 1)),
            ),
            "record_health, one more": (
                "reason",
                lambda s, g, m: s.record_health("degraded", reason="r" * (REASON_MAX_LENGTH + 1)),
            ),
        },
    )

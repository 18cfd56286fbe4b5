"""The CLI's table renderer, duration format, progress counter and jobs-file reader."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta, timezone

import pytest

from broker._jobfile import JobFileError, batches, parse_line, spec_from
from broker._output import Progress, clip, duration, fields, table, when


def test_table_pads_columns_and_right_aligns_numbers() -> None:
    text = table(["ID", "KIND", "N"], [["1", "a", "10"], ["200", "longer", "5"]], right=["ID", "N"])
    assert text.splitlines() == [
        " ID  KIND     N",
        "  1  a       10",
        "200  longer   5",
    ]


def test_table_with_no_rows_is_its_header() -> None:
    assert table(["A", "B"], []) == "A  B"


def test_fields_align_values() -> None:
    assert fields([("id", "1"), ("state", "queued")]) == "id     1\nstate  queued"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (0.25, "250ms"),
        (42.9, "42s"),
        (185, "3m05s"),
        (7800, "2h10m"),
        (4 * 86400 + 3 * 3600 + 5, "4d03h"),
        (-2.5, "-2s"),
    ],
)
def test_duration(seconds: float | None, text: str) -> None:
    assert duration(seconds) == text


def test_when_is_utc_to_the_second() -> None:
    t = datetime(2030, 1, 1, 9, 0, 30, 999, tzinfo=timezone(timedelta(hours=2)))
    assert when(t) == "2030-01-01 07:00:30Z"
    assert when(None) == "-"


def test_clip_flattens_and_shortens() -> None:
    assert clip("a\n  b") == "a b"
    assert clip("x" * 10, 5) == "xxxx…"
    assert clip(None) == "-"


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_writes_only_to_a_terminal() -> None:
    tty = FakeTerminal()
    shown = Progress(tty, total_bytes=200)
    shown.update(5000, 100)
    shown.close()
    assert tty.getvalue().startswith("\renqueued 5,000 jobs (50%), ")
    assert tty.getvalue().endswith("\n")
    pipe = io.StringIO()
    hidden = Progress(pipe, total_bytes=None)
    hidden.update(1, 1)
    hidden.close()
    assert pipe.getvalue() == ""


def test_progress_shows_the_rate_and_the_time_left() -> None:
    progress = Progress(FakeTerminal(), total_bytes=1000)
    assert progress.line(2000, 250, 2.0) == "enqueued 2,000 jobs (25%), 1,000 jobs/s, ETA 6s"
    assert progress.line(8000, 1000, 8.0) == "enqueued 8,000 jobs (100%), 1,000 jobs/s"
    assert Progress(FakeTerminal(), None).line(500, 10, 0.5) == "enqueued 500 jobs, 1,000 jobs/s"


def test_parse_line_reads_every_field() -> None:
    spec = parse_line(
        b'{"kind": "k", "args": {"a": 1}, "queue": "q", "priority": 2,'
        b' "run_at": "2030-01-01T09:00:00+02:00", "max_attempts": 3, "timeout": 4.5,'
        b' "idempotency_key": "i", "subject_key": "s", "tags": ["t"]}',
        "f",
        1,
    )
    assert (spec.kind, dict(spec.args), spec.queue, spec.priority) == ("k", {"a": 1}, "q", 2)
    assert spec.run_at == datetime(2030, 1, 1, 7, tzinfo=UTC)
    assert (spec.max_attempts, spec.timeout, spec.idempotency_key) == (3, 4.5, "i")
    assert (spec.subject_key, list(spec.tags)) == ("s", ["t"])


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("{", "not valid JSON"),
        ('{"kind": "a b"}', "kind: Expected letters, digits, _ . : - only"),
        ('{"kind": "k", "delay": -1}', "delay: Expected `float` >= 0"),
        ('{"kind": "k", "tags": "t"}', "tags: Expected `array`, got `str`"),
        ('{"kind": "k", "extra": 1}', "unknown field `extra`"),
    ],
)
def test_parse_line_says_why(line: str, why: str) -> None:
    with pytest.raises(JobFileError) as caught:
        parse_line(line, "jobs.jsonl", 7)
    assert str(caught.value).startswith("jobs.jsonl line 7: ")
    assert why in caught.value.why


def test_batches_skip_blank_lines_and_report_the_last_line() -> None:
    lines = ['{"kind": "a"}', "", '{"kind": "b"}', '{"kind": "c"}', "  "]
    got = [([s.kind for s in batch], last) for batch, last in batches(lines, "f", size=2)]
    assert got == [(["a", "b"], 3), (["c"], 5)]


def test_batches_fail_before_yielding_the_bad_lines_batch() -> None:
    seen: list[int] = []
    with pytest.raises(JobFileError) as caught:
        for batch, _ in batches(['{"kind": "a"}', '{"kind": "b"}', "{"], "f", size=2):
            seen.append(len(batch))
    assert seen == [2] and caught.value.line == 3


def test_spec_from_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"^priority: Expected `int`"):
        spec_from({"kind": "k", "priority": "high"})


def test_cli_state_names_are_the_schemas() -> None:
    from broker.cli._jobs import STATES
    from broker.schema import JOB_STATES

    assert STATES == JOB_STATES

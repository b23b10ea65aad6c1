"""`up --logs`: each child's new log lines on the console, prefixed with its name; half lines wait for their end."""

from __future__ import annotations

import io
from pathlib import Path

from clio_stream.devstack.log_tail import LogFollower


def test_new_lines_are_prefixed_and_old_ones_skipped(tmp_path: Path) -> None:
    a, b = tmp_path / "consumer-0.log", tmp_path / "qdrant.log"
    a.write_text("before start\n")
    out = io.StringIO()
    follower = LogFollower([("consumer-0", a), ("qdrant", b)], out)
    with open(a, "a") as fh:
        fh.write("stored 16 points\nhalf a li")
    b.write_text("ready\n")
    assert follower.poll_once() == 2
    with open(a, "a") as fh:
        fh.write("ne\n")
    follower.poll_once()
    assert out.getvalue().splitlines() == ["[consumer-0] stored 16 points", "[qdrant    ] ready",
                                           "[consumer-0] half a line"]
    a.write_text("restarted\n")  # replaced by a shorter file: followed from its start
    follower.poll_once()
    assert out.getvalue().splitlines()[-1] == "[consumer-0] restarted"

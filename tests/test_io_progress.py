import io
import logging

import pytest

from coder.io.progress import Progress, announce, duration


def test_plain_log_lines_when_not_a_terminal(caplog):
    caplog.set_level(logging.INFO, logger="coder.io.progress")
    progress = Progress(total=10, every_s=0.0)  # pytest's stderr is not a terminal
    progress.update(4)
    progress.close()
    assert progress.done == 4
    assert "4/10 notes (" in caplog.text and "notes/s" in caplog.text and "left)" in caplog.text


def test_a_line_names_its_work_and_unit(caplog):
    caplog.set_level(logging.INFO, logger="coder.io.progress")
    progress = Progress(total=300, every_s=0.0, unit="term", label="dense search term vectors")
    progress.update(100)
    assert "dense search term vectors: 100/300 terms (" in caplog.text and "terms/s" in caplog.text


def test_lines_come_at_most_every_every_s(caplog):
    caplog.set_level(logging.INFO, logger="coder.io.progress")
    progress = Progress(total=10, every_s=3600.0)
    for _ in range(10):
        progress.update(1)
    assert progress.done == 10 and caplog.text == ""


@pytest.mark.parametrize("level", [None, logging.WARNING], ids=["quiet", "logger-off"])
def test_quiet_or_a_logger_off_shows_nothing(caplog, level):
    caplog.set_level(level or logging.INFO, logger="coder.io.progress")
    progress = Progress(total=10, quiet=level is None, every_s=0.0)
    progress.update(10)
    assert caplog.text == ""


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_with_rate_and_time_left(caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="coder.io.progress")
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    progress = Progress(total=10, every_s=0.0)
    progress.update(5)
    progress.close()
    assert "5/10" in terminal.getvalue() and "note/s" in terminal.getvalue() and "<" in terminal.getvalue()
    assert caplog.text == ""  # the bar, not lines


def test_a_preparation_is_announced_with_its_duration(caplog):
    caplog.set_level(logging.INFO, logger="coder.io.progress")
    announce("the term vectors", seconds=170, cores=2)
    assert "preparing the term vectors (one time, about 3 min on 2 cores)…" in caplog.text


@pytest.mark.parametrize(("seconds", "words"), [(0.2, "1 s"), (40, "40 s"), (170, "3 min"), (9000, "2.5 h"),
                                                (float("inf"), "an unknown time")],
                         ids=["instant", "seconds", "minutes", "hours", "unknown"])
def test_duration_in_words(seconds, words):
    assert duration(seconds) == words

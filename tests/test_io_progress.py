import logging

from coder.io.progress import Progress


def test_plain_log_lines_when_not_a_terminal(caplog):
    caplog.set_level(logging.INFO, logger="coder.io.progress")
    progress = Progress(total=10, every_s=0.0)  # pytest's stderr is not a terminal
    progress.update(4)
    progress.close()
    assert progress.done == 4
    assert "4/10 notes (" in caplog.text and "notes/s" in caplog.text


def test_quiet_logs_nothing(caplog):
    caplog.set_level(logging.INFO, logger="coder.io.progress")
    progress = Progress(total=10, quiet=True, every_s=0.0)
    progress.update(10)
    assert caplog.text == ""

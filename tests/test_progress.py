"""Progress output: a bar on a terminal, a few plain lines in a log."""

import io
import re

from selfcorrect.progress import PlainProgress, progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_plain_lines_not_redraws():
    log = io.StringIO()  # not a terminal
    bar = progress(80, "SCoRe", stream=log, every_s=3600)
    assert isinstance(bar, PlainProgress)
    for step in range(12):
        bar.update(1)
        bar.set_postfix(stage=1, acc1="0.55", loss=0.123456)
    assert log.getvalue() == ""  # nothing before every_s has passed...
    bar.close()
    bar.close()  # ...one line at the end, however often close is called
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 1
    assert re.fullmatch(r"SCoRe 12/80 \(15%\) [0-9.e+-]+ s/it ETA [0-9:]+ stage=1 acc1=0.55 loss=0.1235", lines[0])


def test_a_line_every_interval():
    log = io.StringIO()
    bar = progress(3, "eval", stream=log, every_s=0)
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert [line.split(" (")[0] for line in log.getvalue().splitlines()] == ["eval 1/3", "eval 2/3", "eval 3/3", "eval 3/3"]


def test_resumed_run_counts_from_initial():
    log = io.StringIO()
    bar = progress(10, "SCoRe", initial=4, stream=log, every_s=3600)
    bar.close()  # no step in this run: no rate to report
    assert log.getvalue() == "SCoRe 4/10 (40%)\n"


def test_disabled_writes_nothing_anywhere(capsys):
    log = io.StringIO()
    bar = progress(5, "sft", enabled=False, stream=log, every_s=0)
    bar.update(5)
    bar.set_postfix(loss=1.0)
    bar.close()
    assert log.getvalue() == "" and capsys.readouterr() == ("", "")


def test_a_terminal_gets_a_tqdm_bar():
    from tqdm.auto import tqdm

    screen = Terminal()
    bar = progress(4, "SCoRe", stream=screen)
    assert isinstance(bar, tqdm)
    bar.update(2)
    bar.set_postfix(stage=2)
    bar.close()
    assert "SCoRe" in screen.getvalue() and "\r" in screen.getvalue()

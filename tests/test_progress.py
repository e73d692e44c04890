"""Progress output: plain lines (no carriage returns) into a log file, a tqdm bar on a terminal, nothing when quiet."""
import io

from ood.progress import Progress, progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_file_gets_one_line_per_step_and_no_carriage_returns():
    log = io.StringIO()
    with Progress(total=5, desc="extract", unit="img", file=log, interval=0) as bar:
        for _ in range(5):
            bar.update()
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 1 + 4 + 1  # the start, steps 1-4 (the last step is the closing line), the end
    assert [line.split()[1] for line in lines] == ["0/5", "1/5", "2/5", "3/5", "4/5", "5/5"]
    assert lines[-1].startswith("extract: 5/5 img (100%)")


def test_lines_are_rate_limited():
    log = io.StringIO()
    bar = Progress(total=1000, file=log, interval=3600)
    for _ in range(1000):
        bar.update()
    bar.close()
    bar.close()  # closing twice writes nothing more
    assert [line.split()[0] for line in log.getvalue().splitlines()] == ["0/1000", "1000/1000"]


def test_a_resumed_run_counts_from_its_start_and_shows_a_postfix():
    log = io.StringIO()
    bar = Progress(total=10, initial=6, file=log, interval=3600)
    bar.set_postfix_str("loss=0.5")
    bar.update(4)
    bar.close()
    assert log.getvalue().splitlines()[-1].startswith("10/10 it (100%)") and "loss=0.5" in log.getvalue()


def test_quiet_prints_nothing_and_a_terminal_gets_a_bar():
    log = io.StringIO()
    assert list(progress(range(3), file=log, quiet=True)) == [0, 1, 2] and log.getvalue() == ""
    term = Terminal()
    assert list(progress(range(3), desc="bar", file=term)) == [0, 1, 2]
    assert "\r" in term.getvalue() and "3/3" in term.getvalue()  # tqdm redraws in place

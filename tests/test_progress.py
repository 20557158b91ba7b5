"""Progress off a terminal: plain lines at most every few seconds, then one summary line."""

from __future__ import annotations

import io

import pytest

from prefkit.progress import PlainProgress, progress_bar
from test_rm_train import keyword_pairs, make_tiny_bert, quick_config


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert-progress"))


def test_plain_progress_prints_a_line_per_interval_and_a_summary() -> None:
    """188 steps, one simulated second each, a line every 10 s: 18 lines and the summary."""
    now = [0.0]
    stream = io.StringIO()
    bar = PlainProgress(
        total=188,
        description="training",
        unit="step",
        interval=10,
        stream=stream,
        clock=lambda: now[0],
    )
    with bar:
        for _ in range(188):
            now[0] += 1.0
            bar.update(1)
            bar.set_postfix(loss="0.5")
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert len(lines) == 18 + 1
    assert lines[0] == "training: 10/188 step (5%) 1 step/s ETA 178 s loss=0.5"
    assert lines[-1] == "training: 188/188 step 1 step/s in 188.0 s loss=0.5"


def test_plain_progress_takes_a_postfix_string_as_tqdm_does() -> None:
    """``prefkit generate`` shows tokens/s with tqdm's set_postfix_str(text, refresh=False)."""
    now = [0.0]
    stream = io.StringIO()
    with PlainProgress(
        total=4, description="generate", unit="seq", stream=stream, clock=lambda: now[0]
    ) as bar:
        now[0] += 2.0
        bar.update(4)
        bar.set_postfix_str("12 tok/s", refresh=False)
    assert stream.getvalue().splitlines()[-1] == "generate: 4/4 seq 2 seq/s in 2.0 s 12 tok/s"


def test_bars_off_a_terminal_are_plain(capsys) -> None:
    with progress_bar(total=3, description="scoring", unit="item") as bar:
        bar.update(3)
    assert "\r" not in capsys.readouterr().err
    with progress_bar(total=3, description="scoring", unit="item", enabled=False) as bar:
        bar.update(3)
    assert capsys.readouterr().err == ""


def test_training_off_a_terminal_writes_no_carriage_returns(tiny_bert, tmp_path, capsys) -> None:
    """The loop's bar goes through prefkit.progress too: 60 steps give one summary line, not
    one carriage-return update per step."""
    from prefkit.rm.train import train_reward_model

    config = quick_config(tiny_bert, tmp_path, epochs=15, batch_size=4, progress=True)
    train_reward_model(keyword_pairs(16, seed=0), config, tmp_path / "rm", log=lambda _: None)
    err = capsys.readouterr().err
    assert "\r" not in err
    training_lines = [line for line in err.splitlines() if line.startswith("training:")]
    assert 1 <= len(training_lines) <= 3 and training_lines[-1].startswith("training: 60/60 step")

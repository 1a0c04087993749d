"""How the command line becomes a config: task options merge, and --help lists them."""

import pytest

from selfcorrect import tasks
from selfcorrect.cli import main, parse_args, resolve_config
from selfcorrect.config import Config


def resolved(argv):
    return resolve_config(parse_args(argv), Config())


def test_task_options_on_the_command_line_merge_into_the_yaml_ones(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("task:\n  options: {style: demo}\n")
    cfg = resolved(["train", "--config", str(path), "--task.options", "{digits: 1}"])
    assert cfg.task.options == {"style": "demo", "digits": 1}


def test_one_task_option_at_a_time(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("task:\n  options: {style: demo, ops: '+'}\n")
    cfg = resolved(["eval", "--config", str(path), "--task.options.digits", "1", "--task.options.ops=+-"])
    # strings, read by the task's own option checker ("1" -> 1 there)
    assert cfg.task.options == {"style": "demo", "ops": "+-", "digits": "1"}
    with pytest.raises(ValueError, match="--data does not apply"):  # arithmetic generates its problems
        resolved(["eval", "--config", str(path), "--data", "test.jsonl"])


def test_unknown_flags_are_still_refused(capsys):
    with pytest.raises(SystemExit):
        parse_args(["train", "--optim.lrr", "1"])
    assert "unrecognized arguments: --optim.lrr" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["train", "--task.options.digits"])
    assert "expected one argument" in capsys.readouterr().err


def test_a_bad_task_option_from_the_command_line_is_named(capsys):
    assert main(["eval", "--task.options.digits", "7", "--run.progress", "false"]) == 2
    assert "digits" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "eval", "demo"])
def test_help_lists_every_tasks_options(command, capsys):
    with pytest.raises(SystemExit):
        parse_args([command, "--help"])
    text = capsys.readouterr().out
    assert tasks.options_help() in text
    assert "--optim.lr" in text


def test_data_shortcut_sets_each_tasks_own_data_option_whatever_the_order():
    from selfcorrect.cli import build_parser, resolve_config
    from selfcorrect.config import Config

    for argv, key in ((["--data", "x.jsonl", "--task", "mbpp"], "data_path"),
                      (["--task", "humaneval", "--data", "x.jsonl"], "data_path"),
                      (["--data", "x.jsonl", "--task", "math500"], "test_path")):
        args = build_parser().parse_args(["eval", *argv])
        assert resolve_config(args, Config()).task.options == {key: "x.jsonl"}, argv

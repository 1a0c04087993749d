"""Commands read their data before they load a model: a bad path costs no model load."""

import pytest

from selfcorrect import models
from selfcorrect.cli import main


@pytest.fixture
def no_model_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the data was checked")

    monkeypatch.setattr(models, "resolve_model_path", refuse)


@pytest.mark.parametrize("command,split", [("eval", "test"), ("train", "train")])
def test_a_missing_data_file_is_reported_before_any_model_is_loaded(command, split, no_model_loading,
                                                                   tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    code = main([command, "--task", "custom", f"--task.options.{split}_path", str(missing),
                 "--output", str(tmp_path / "run"), "--run.progress", "false"])
    assert code == 2
    assert "nope.jsonl" in capsys.readouterr().err


def test_an_empty_evaluation_is_reported_before_any_model_is_loaded(no_model_loading, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code = main(["eval", "--task", "custom", "--data", str(empty), "--run.progress", "false"])
    assert code == 2
    assert "split 'test': no problems to evaluate" in capsys.readouterr().err

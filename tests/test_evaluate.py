import json

import numpy as np
import pytest
import torch

from selfcorrect.cli import main
from selfcorrect.config import Config
from selfcorrect.evaluate import evaluate, evaluate_config
from selfcorrect.models import Reference, load_policy, load_tokenizer, resolve_model_path
from tiny import EchoTask


def test_evaluate_three_attempts_records_and_identity(saved_tiny):
    tok = load_tokenizer(str(saved_tiny))
    model = load_policy(str(saved_tiny), torch.device("cpu"), torch.float32)
    task = EchoTask(6)
    result = evaluate(model, tok, task, task.load("test"), attempts=3, max_new_tokens=6, batch_size=4,
                      bootstrap=200, progress=False)
    m = result.metrics
    assert m["n"] == 6 and len(result.records) == 6
    assert all(len(r["attempts"]) == 3 for r in result.records)
    assert m["acc_t2"] == pytest.approx(m["acc_t1"] + m["delta_i_to_c"] - m["delta_c_to_i"])
    for key in ("acc_t1", "acc_t2", "acc_t3", "delta", "delta_t1_t3"):
        assert key in m
    lo, hi = result.intervals["acc_t1"]
    assert lo <= m["acc_t1"] <= hi
    # the verdicts in the records are the ones the metrics were computed from
    first = np.array([r["attempts"][0]["reward"] for r in result.records])
    assert first.mean() == pytest.approx(m["acc_t1"])


def test_cli_eval_on_a_local_model_folder_writes_records(saved_tiny, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["eval", "--model", str(saved_tiny), "--task", "custom", "--output", str(out),
                 "--task.options", json.dumps({"test_path": str(_echo_file(tmp_path)), "scorer": "exact"}),
                 "--rollout.max_new_tokens", "4", "--eval.bootstrap", "50", "--run.progress", "false"])
    assert code == 0
    text = capsys.readouterr().out
    assert "| Approach | Acc@t1 | Acc@t2 |" in text
    records = list((out / "eval").glob("*/records.jsonl"))
    assert len(records) == 1 and len(records[0].read_text().splitlines()) == 3


def test_a_second_eval_into_the_same_folder_is_refused_unless_overwrite(saved_tiny, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["eval", "--model", str(saved_tiny), "--task", "custom", "--output", str(out),
            "--task.options", json.dumps({"test_path": str(_echo_file(tmp_path)), "scorer": "exact"}),
            "--rollout.max_new_tokens", "4", "--eval.bootstrap", "0", "--run.progress", "false"]
    assert main(args) == 0
    [folder] = (out / "eval").iterdir()
    (folder / "scaling.json").write_text("{}")  # as an earlier run with --eval.scaling leaves it
    first = (folder / "records.jsonl").read_text()
    capsys.readouterr()
    assert main(args + ["--limit", "2"]) == 2
    assert "already holds an evaluation" in capsys.readouterr().err
    assert (folder / "records.jsonl").read_text() == first
    assert main(args + ["--limit", "2", "--run.overwrite", "true"]) == 0
    assert len((folder / "records.jsonl").read_text().splitlines()) == 2
    assert not (folder / "scaling.json").exists()  # the folder is replaced whole: nothing stale mixed in


def test_evaluation_progress_in_a_log_is_one_plain_line(saved_tiny, capsys):
    tok = load_tokenizer(str(saved_tiny))
    model = load_policy(str(saved_tiny), torch.device("cpu"), torch.float32)
    task = EchoTask(6)
    capsys.readouterr()  # transformers' own loading bar
    evaluate(model, tok, task, task.load("test"), max_new_tokens=2, batch_size=2, bootstrap=0, desc="eval tiny")
    err = capsys.readouterr().err  # captured: not a terminal
    assert "\r" not in err and err.startswith("eval tiny 6/6 (100%)") and err.count("\n") == 1


def test_evaluate_config_is_the_library_entry_point(saved_tiny, tmp_path):
    """Loads cfg.model itself, writes the eval folder, and leaves a task passed in open."""
    cfg = Config()
    cfg.model.name, cfg.run.output_dir, cfg.run.progress = str(saved_tiny), str(tmp_path), False
    cfg.rollout.max_new_tokens, cfg.eval.bootstrap, cfg.eval.limit = 4, 0, 5

    class Task(EchoTask):
        closed = False

        def close(self):
            self.closed = True

    task = Task(8)
    result = evaluate_config(cfg, task=task, name="tiny/model")
    assert result.metrics["n"] == 5 and not task.closed
    assert result.folder == tmp_path / "eval" / "tiny_model"
    assert sorted(p.name for p in result.folder.iterdir()) == ["config.yaml", "metrics.json", "records.jsonl"]
    assert json.loads((result.folder / "metrics.json").read_text())["metrics"] == result.metrics


def _echo_file(tmp_path):
    path = tmp_path / "echo.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": "a"}) + "\n" for q in ("x", "yy", "zzz")))
    return path


def test_missing_model_path_is_a_clear_error(capsys):
    assert main(["eval", "--model", "./no/such/model", "--run.progress", "false"]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        resolve_model_path("/definitely/not/here")


def test_a_model_folder_under_home_loads_from_its_tilde_path(monkeypatch, tmp_path, saved_tiny):
    import shutil

    from selfcorrect import models
    from selfcorrect.config import ModelConfig

    shutil.copytree(saved_tiny, tmp_path / "tiny")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_model_path("~/tiny") == str(tmp_path / "tiny")
    model, _ = models.load(ModelConfig(name="~/tiny", device="cpu", dtype="float32"), progress=False)
    assert model.config.vocab_size > 0


def test_lora_reference_is_the_base_model(saved_tiny):
    from peft import LoraConfig, get_peft_model

    base = load_policy(str(saved_tiny), torch.device("cpu"), torch.float32)
    x = torch.tensor([[3, 4, 5, 6]])
    expected = base(x).logits.detach().clone()
    model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules="all-linear", init_lora_weights=False))
    assert not torch.allclose(model(x).logits, expected, atol=1e-5)  # the adapter changes the policy...
    with Reference(model, uses_lora=True).active() as ref:
        assert torch.allclose(ref(x).logits, expected, atol=1e-6)  # ...and the reference is the base

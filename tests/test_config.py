from pathlib import Path

import pytest

from selfcorrect import config as C
from selfcorrect.cli import build_parser, main, resolve_config
from selfcorrect.demo import demo_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_yaml_unknown_key_and_bad_value_are_rejected_by_name(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ValueError, match=r"unknown config key 'optim.lrr'"):
        C.load_yaml(bad)
    bad.write_text("optim:\n  lr: fast\n")
    with pytest.raises(ValueError, match=r"'optim.lr': expected float"):
        C.load_yaml(bad)
    bad.write_text("algo:\n  kl_estimator: k9\n")
    with pytest.raises(ValueError, match=r"'algo.kl_estimator': 'k9' is not one of"):
        C.load_yaml(bad)
    bad.write_text("nosuch:\n  x: 1\n")
    with pytest.raises(ValueError, match="unknown config section 'nosuch'"):
        C.load_yaml(bad)


def test_cross_field_validation_names_the_key():
    cfg = C.Config()
    cfg.rollout.samples_per_problem = 1
    with pytest.raises(ValueError, match="rollout.samples_per_problem"):
        cfg.validate()


def test_cli_overrides_apply_after_yaml():
    args = build_parser().parse_args(["train", "--config", str(CONFIGS / "demo.yaml"), "--optim.lr", "0.5",
                                      "--model.lora", "true", "--task", "custom", "--limit", "7"])
    cfg = resolve_config(args, C.Config())
    assert cfg.optim.lr == 0.5 and cfg.model.lora is True and cfg.task.name == "custom"
    assert cfg.eval.limit == 7
    assert cfg.algo.stage1_steps == 40  # from the YAML


def test_cli_reports_bad_values_without_traceback(capsys):
    assert main(["eval", "--eval.attempts", "zero"]) == 2
    assert "eval.attempts" in capsys.readouterr().err


def test_every_option_has_help(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = capsys.readouterr().out
    for key, field in C.iter_fields():
        assert f"--{key}" in text
        assert field.metadata["help"]


def test_demo_yaml_matches_the_embedded_demo_recipe():
    assert C.to_dict(C.load_yaml(CONFIGS / "demo.yaml")) == C.to_dict(demo_config())


def test_shipped_configs_load():
    for path in CONFIGS.glob("*.yaml"):
        C.load_yaml(path).validate()


def test_task_options_merge_across_sources(tmp_path):
    from selfcorrect.config import load_yaml, set_value

    path = tmp_path / "c.yaml"
    path.write_text("task:\n  options: {style: demo, digits: 2}\n")
    cfg = load_yaml(path)
    set_value(cfg, "task.options", {"digits": 1, "ops": "+"})
    assert cfg.task.options == {"style": "demo", "digits": 1, "ops": "+"}

from pathlib import Path

import pytest
import yaml

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


def test_a_key_repeated_in_a_yaml_mapping_is_refused_with_its_line(tmp_path):
    bad = tmp_path / "twice.yaml"
    bad.write_text("rollout: {max_new_tokens: 48}\neval: {limit: 2}\nrollout: {batch_size: 8}\n")
    with pytest.raises(ValueError, match=r"twice.yaml:3: key 'rollout' appears twice"):
        C.load_yaml(bad)
    bad.write_text("eval:\n  limit: 2\n  limit: 200\n")
    with pytest.raises(ValueError, match=r"twice.yaml:3: key 'limit' appears twice"):
        C.load_yaml(bad)
    bad.write_text("base: &b {limit: 2}\neval:\n  <<: *b\n  bootstrap: 0\n")  # merge keys still work
    assert C.read_yaml(bad, "config file")["eval"] == {"limit": 2, "bootstrap": 0}


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_a_seed_numpy_and_torch_cannot_take_is_refused_up_front(seed):
    cfg = C.Config()
    cfg.run.seed = seed
    with pytest.raises(ValueError, match=r"run.seed must be in \[0, 2\*\*32\)"):
        cfg.validate()


def test_output_dir_expands_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = C.Config()
    cfg.run.output_dir = "~/runs/x"
    assert cfg.validate().run.output_dir == str(tmp_path / "runs" / "x")


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


def test_demo_settings_are_the_ones_the_readme_reports():
    """The README's demo table was measured with these settings; --quick shrinks only a few."""
    cfg = demo_config()
    assert (cfg.model.name, cfg.task.name, cfg.task.options) == ("demo", "arithmetic", {"style": "demo"})
    assert (cfg.algo.stage1_steps, cfg.algo.stage2_steps, cfg.algo.alpha, cfg.algo.beta1, cfg.algo.beta2) == \
        (40, 40, 10.0, 0.01, 0.1)
    assert (cfg.rollout.samples_per_problem, cfg.rollout.temperature, cfg.rollout.max_new_tokens) == (4, 1.0, 48)
    assert (cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.problems_per_step) == (1e-4, 5, 64)
    assert cfg.run.output_dir == "runs/demo" and cfg.run.overwrite is True
    quick = C.to_dict(demo_config(quick=True))
    changed = {f"{s}.{k}" for s, values in C.to_dict(cfg).items() for k, v in values.items() if quick[s][k] != v}
    assert changed == {"algo.stage1_steps", "algo.stage2_steps", "optim.problems_per_step", "eval.limit",
                       "eval.bootstrap", "run.output_dir"}


def test_the_demo_recipe_ships_with_the_package_and_configs_shows_the_same_file():
    from importlib.resources import files

    packaged = files("selfcorrect") / "recipes" / "demo.yaml"
    assert C.to_dict(C.from_dict(yaml.safe_load(packaged.read_text()))) == C.to_dict(demo_config())
    assert (CONFIGS / "demo.yaml").read_text() == packaged.read_text()
    assert 'selfcorrect = ["recipes/*.yaml"]' in (CONFIGS.parent / "pyproject.toml").read_text()


def test_shipped_configs_load():
    from selfcorrect.compare import load_comparison

    for path in CONFIGS.glob("*.yaml"):
        if path.name.startswith("compare-"):  # a comparison file: its own format
            load_comparison(path)
        else:
            C.load_yaml(path).validate()


def test_task_options_merge_across_sources(tmp_path):
    from selfcorrect.config import load_yaml, set_value

    path = tmp_path / "c.yaml"
    path.write_text("task:\n  options: {style: demo, digits: 2}\n")
    cfg = load_yaml(path)
    set_value(cfg, "task.options", {"digits": 1, "ops": "+"})
    assert cfg.task.options == {"style": "demo", "digits": 1, "ops": "+"}


def test_exponent_floats_without_a_dot_are_floats(tmp_path):
    from selfcorrect.config import Config, load_yaml, parse_cli_value, set_value

    cfg = Config()
    set_value(cfg, "optim.lr", parse_cli_value("3e-4", "float"))
    assert cfg.optim.lr == 3e-4
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 5e-6\n")
    assert load_yaml(path).optim.lr == 5e-6
    with pytest.raises(ValueError, match="optim.lr"):
        set_value(cfg, "optim.lr", "fast")

"""`selfcorrect compare` input: mistakes in the comparison file are refused with one clear line
naming the file and the key, a re-run with other settings does not report a finished run's old
numbers, and `python -m selfcorrect.report` names a missing folder instead of a traceback."""

import json
from pathlib import Path

import pytest
import yaml

from selfcorrect.cli import main as cli_main
from selfcorrect.compare import (SETTINGS_FILE, check_reuse, load_comparison, method_config, run_comparison,
                                 unit_dir, unit_settings)
from selfcorrect.report.__main__ import main as report_main
from test_compare import write_comparison


def comparison_file(tmp_path: Path, **spec) -> Path:
    """A comparison file that needs no model until it runs (the default base is the demo model)."""
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "cmp"), "base": {"run": {"progress": False}},
                                    **spec}))
    return path


# ----------------------------------------------------------------------------- the file


@pytest.mark.parametrize("spec, needle", [
    ({"seeds": []}, "'seeds' must be a non-empty list of integers"),
    ({"seeds": 0}, "'seeds' must be a non-empty list of integers"),
    ({"seeds": "0,1"}, "'seeds' must be a non-empty list of integers"),
    ({"seeds": [0.5]}, "'seeds': 0.5 is not an integer"),
    ({"seeds": [-1]}, "'seeds': -1 is not an integer in [0, 2**32)"),
    ({"seeds": [2**32]}, "'seeds': 4294967296 is not an integer"),
    ({"seeds": [True]}, "'seeds': True is not an integer"),
    ({"seeds": [1, 1]}, "seed(s) [1] listed twice"),
    ({"methods": [["score"]]}, "each 'methods' item must be a method name or {name: overrides}"),
    ({"methods": [{"star": 5}]}, "method 'star': its overrides must be a mapping"),
    ({"methods": [{"star": {}, "score": {}}]}, "with one name"),
    ({"methods": "score"}, "'methods' must be a list of method names"),
    ({"methods": []}, "'methods' is empty"),
    ({"methods": ["score", "score"]}, "method 'score' listed twice"),
    ({"methods": {"scor": {}}}, "unknown method 'scor'"),
    ({"methods": ["score"], "scaling": ["scor"]}, "'scaling': unknown method(s) ['scor']; known: base, "),
    ({"methods": ["score"], "scaling": "score"}, "'scaling' must be a list of method names"),
    ({"overrides": {"eval": {"limt": 3}}}, "'overrides': unknown config key 'eval.limt'"),
    ({"quick": "yes"}, "'quick' must be true or false"),
    ({"output_dir": ["a"]}, "'output_dir' must be a folder path"),
])
def test_a_mistake_in_the_file_is_one_clear_error_naming_it(tmp_path, spec, needle):
    path = comparison_file(tmp_path, **spec)
    with pytest.raises(ValueError) as caught:
        load_comparison(path)
    message = str(caught.value)
    assert needle in message and str(path) in message and "\n" not in message, message


def test_seeds_from_the_command_line_are_checked_too(tmp_path):
    with pytest.raises(ValueError, match=r"--seeds: -1 is not an integer"):
        load_comparison(comparison_file(tmp_path), seeds=[-1])


def test_methods_as_a_mapping_keep_their_overrides(tmp_path):
    """The report reads `methods:` written as {name: overrides}; the runner takes that form too."""
    c = load_comparison(comparison_file(tmp_path, methods={"star": {"sft": {"lr": 0.1}}, "base": None}))
    assert sorted(c.methods) == ["base", "star"]
    assert method_config(c, "star", 0).sft.lr == 0.1


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("title: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"comparison file .*latin1\.yaml:1: not UTF-8 text"):
        load_comparison(path)


def test_the_cli_refuses_a_bad_file_in_one_line_before_writing(tmp_path, capsys):
    path = comparison_file(tmp_path, seeds=[])
    assert cli_main(["compare", "--config", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("selfcorrect compare: error: ") and "'seeds'" in lines[0]
    assert not (tmp_path / "cmp").exists()


# ----------------------------------------------------------------------------- re-runs with other settings


def with_base(path: str, **sections) -> None:
    """Change the base config of a comparison file in place: section -> {key: value}."""
    spec = yaml.safe_load(Path(path).read_text())
    for section, values in sections.items():
        spec["base"].setdefault(section, {}).update(values)
    Path(path).write_text(yaml.safe_dump(spec))


def test_a_rerun_with_other_settings_is_refused_and_an_identical_one_reuses(tmp_path, saved_tiny):
    path = write_comparison(tmp_path, saved_tiny, ["base"])
    c = load_comparison(path)
    run_comparison(c)
    summary, metrics = unit_dir(c, "base", 0) / "summary.json", unit_dir(c, "base", 0) / "eval" / "metrics.json"
    assert (unit_dir(c, "base", 0) / SETTINGS_FILE).is_file()
    stamp, compare_yaml = summary.stat().st_mtime_ns, (c.output_dir / "compare.yaml").read_text()

    run_comparison(load_comparison(path))  # the same settings: the finished run is reused (resume)
    assert summary.stat().st_mtime_ns == stamp

    with_base(path, eval={"limit": 3})
    with pytest.raises(ValueError) as caught:
        run_comparison(load_comparison(path))
    message = str(caught.value)
    assert f"{c.output_dir} holds a comparison run base/seed-0 made with other settings (eval.limit: 0 -> 3)" \
        in message and "--output" in message and "overwrite" in message, message
    # nothing rewritten: not the run, not compare.yaml (which would describe settings the numbers lack)
    assert summary.stat().st_mtime_ns == stamp
    assert (c.output_dir / "compare.yaml").read_text() == compare_yaml
    assert json.loads(metrics.read_text())["metrics"]["n"] == 6

    with_base(path, run={"overwrite": True})  # asked to start such runs over: the new numbers
    run_comparison(load_comparison(path))
    assert json.loads(metrics.read_text())["metrics"]["n"] == 3
    assert yaml.safe_load((unit_dir(c, "base", 0) / SETTINGS_FILE).read_text())["eval"]["limit"] == 3


@pytest.mark.parametrize("method, change, needle", [
    ("score", {"task": {"options": {"digits": 1, "ops": "+", "style": "chat", "n_test": 4}}}, "task.options"),
    ("score", {"task": {"name": "gsm8k"}}, "task.name: 'arithmetic' -> 'gsm8k'"),
    ("score", {"eval": {"limit": 3}}, "eval.limit: 0 -> 3"),
    ("score", {"optim": {"lr": 0.5}}, "optim.lr: 0.001 -> 0.5"),
    ("score", {"model": {"name": "another-model"}}, "model.name"),
    ("base", {"model": {"name": "another-model"}}, "model.name"),
    ("base", {"eval": {"limit": 3}}, "eval.limit"),
])
def test_every_setting_that_changes_the_numbers_is_caught(tmp_path, method, change, needle):
    path = recorded_unit(tmp_path, method)
    with_base(path, **change)
    with pytest.raises(ValueError, match="made with other settings") as caught:
        check_reuse(load_comparison(path))
    assert f"{method}/seed-0" in str(caught.value) and needle in str(caught.value), str(caught.value)


@pytest.mark.parametrize("method, change", [
    ("score", {"run": {"progress": True, "save_every": 5, "keep_checkpoints": 1}}),  # bookkeeping only
    ("base", {"optim": {"lr": 0.5}, "sft": {"lr": 0.5}, "algo": {"alpha": 1.0}}),  # base trains nothing
])
def test_settings_that_cannot_change_the_numbers_keep_the_run(tmp_path, method, change):
    path = recorded_unit(tmp_path, method)
    with_base(path, **change)
    assert check_reuse(load_comparison(path)) == []


@pytest.mark.parametrize("rule", [None, 1])
def test_a_run_made_on_another_arithmetic_split_rule_is_not_reused(tmp_path, rule):
    path = recorded_unit(tmp_path, "score")
    c = load_comparison(path)
    record = unit_dir(c, "score", 0) / SETTINGS_FILE
    settings = yaml.safe_load(record.read_text())
    assert settings["split_rule"] == 2  # arithmetic: commuted twins in one split
    if rule is None:
        del settings["split_rule"]  # recorded before the rule was (rule 1)
    else:
        settings["split_rule"] = rule
    record.write_text(yaml.safe_dump(settings))
    with pytest.raises(ValueError, match="split rule 1, and this selfcorrect splits by rule 2"):
        check_reuse(c)


def test_a_run_folder_without_a_record_of_its_settings_is_not_trusted(tmp_path):
    c = load_comparison(write_comparison(tmp_path, "demo", ["base"]))
    folder = unit_dir(c, "base", 0)
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"done": True}))  # as an older selfcorrect left it
    with pytest.raises(ValueError, match="no record of its settings"):
        check_reuse(c)


def recorded_unit(tmp_path: Path, method: str) -> str:
    """A comparison file whose unit `method`/seed-0 holds the record run_unit writes (not run: the
    check reads only the record)."""
    path = write_comparison(tmp_path, "demo", [method])
    c = load_comparison(path)
    folder = unit_dir(c, method, 0)
    folder.mkdir(parents=True)
    (folder / SETTINGS_FILE).write_text(yaml.safe_dump(unit_settings(c, method, 0)))
    (folder / "summary.json").write_text(json.dumps({"done": True}))
    assert check_reuse(c) == []
    return path


# ----------------------------------------------------------------------------- the report command


def test_the_report_of_a_missing_folder_is_one_line_not_a_traceback(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert report_main([str(missing)]) == 2
    err = capsys.readouterr().err
    expected = f"python -m selfcorrect.report: error: comparison folder {missing} does not exist"
    assert err.strip().splitlines() == [expected]


def test_adding_a_method_to_scaling_evaluates_its_finished_unit_again(tmp_path, saved_tiny):
    from selfcorrect.compare import unit_dir

    run_comparison(load_comparison(write_comparison(tmp_path, saved_tiny, ["score"])))
    c = load_comparison(write_comparison(tmp_path, saved_tiny, ["score"], scaling=["score"]))
    run_comparison(c)  # the unit's eval folder holds a finished evaluation: replaced, not refused
    assert (unit_dir(c, "score", 0) / "eval" / "scaling.json").exists()


def test_a_copy_of_the_packaged_comparison_loads_anywhere(tmp_path):
    """README: copy configs/compare-demo.yaml and edit it; its `base: demo.yaml` is the packaged recipe."""
    from pathlib import Path

    from selfcorrect.compare import load_comparison

    shipped = Path(__file__).resolve().parents[1] / "selfcorrect" / "recipes" / "compare-demo.yaml"
    copy = tmp_path / "my-compare.yaml"
    copy.write_text(shipped.read_text())
    assert load_comparison(copy).base.task.name == "arithmetic"

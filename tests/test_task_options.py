"""Task options: one name, one type, one meaning across tasks; declared once per task, and
the help text and docs/TASKS.md are derived from that declaration."""

import re
from pathlib import Path

import pytest

from selfcorrect.tasks import TASK_NAMES, build_task, options_help, options_table, task_options
from selfcorrect.tasks.options import Option, resolve

DOCS = Path(__file__).resolve().parents[1] / "docs" / "TASKS.md"
VERIFIER_TASKS = ("math", "math500", "gsm8k", "humaneval", "mbpp", "custom")
SHARED = {"timeout_s": "float > 0", "workers": "int >= 0", "memory_mb": "int > 0",
          "timeout_reward": "one of 0.0 or None"}


@pytest.mark.parametrize("name", VERIFIER_TASKS)
def test_every_verifier_task_takes_the_same_settings(name):
    specs = {spec.name: spec for spec in task_options(name)}
    assert {key: specs[key].type_text for key in SHARED} == SHARED
    assert (specs["timeout_s"].default, specs["workers"].default, specs["memory_mb"].default) == (10.0, 0, 2048)
    task = build_task(name, {"timeout_s": 5, "workers": 0, "memory_mb": 512, "timeout_reward": None})
    task.close()


def test_a_timeout_defaults_per_verifier_with_the_same_meaning():
    """A math or custom check that times out is the verifier's failure (excluded); a program
    that runs out of time is the model's (scored 0). Both can be set either way."""
    defaults = {name: {s.name: s.default for s in task_options(name)}["timeout_reward"] for name in VERIFIER_TASKS}
    assert defaults == {"math": None, "math500": None, "gsm8k": None, "humaneval": 0.0, "mbpp": 0.0, "custom": None}
    assert build_task("math", {"timeout_reward": 0}).timeout_reward == 0.0
    assert build_task("mbpp", {"timeout_reward": None}).timeout_reward is None
    with pytest.raises(ValueError, match="timeout_reward must be one of 0.0 or None, got 0.5"):
        build_task("custom", {"timeout_reward": 0.5})


@pytest.mark.parametrize("name,old,new", [("math", "max_memory_mb", "memory_mb"), ("gsm8k", "max_memory_mb", "memory_mb")])
def test_old_names_are_rejected_with_the_new_name(name, old, new):
    with pytest.raises(ValueError, match=f"option '{old}' was renamed; use '{new}'"):
        build_task(name, {old: 1024})


@pytest.mark.parametrize("name,options,message", [
    ("math", {"workers": None}, "option workers must be int >= 0, got None"),
    ("math", {"workers": -1}, "option workers must be >= 0, got -1"),
    ("mbpp", {"timeout_s": 0}, "option timeout_s must be > 0, got 0"),
    ("custom", {"memory_mb": 1.5}, "option memory_mb must be int > 0, got 1.5"),
    ("humaneval", {"workers": True}, "option workers must be int >= 0, got True"),
    ("mbpp", {"sandbox_tier": "docker"}, "option sandbox_tier must be one of auto, bwrap, rlimit"),
    ("humaneval", {"hf_id": "x"}, "unknown option 'hf_id'; options: data_path, timeout_s"),
    ("arithmetic", {"digits": 7}, "option digits must be one of 1, 2, 3, 4, got 7"),
])
def test_bad_values_are_one_line_errors_naming_task_and_option(name, options, message):
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        build_task(name, options)
    assert f"task {name!r}" in str(info.value) and "\n" not in str(info.value)


def test_command_line_strings_are_read_as_the_option_type():
    """--task.options.timeout_s 5 arrives as the string "5"."""
    task = build_task("math", {"timeout_s": "5", "workers": "2", "memory_mb": "512", "timeout_reward": "null"})
    assert (task.timeout_s, task.workers, task.memory_mb, task.timeout_reward) == (5.0, 2, 512, None)
    code = build_task("mbpp", {"fewshot_ids": "[2, 3, 4]", "require_strong_sandbox": "false", "timeout_reward": "0"})
    assert code.fewshot_ids == (2, 3, 4) and code.sandbox_config.require_strong is False and code.timeout_reward == 0.0
    assert build_task("arithmetic", {"digits": "1", "ops": "+-*"}).digits == 1
    with pytest.raises(ValueError, match="option timeout_s must be float > 0, got 'soon'"):
        build_task("custom", {"timeout_s": "soon"})


def test_resolve_fills_defaults_and_converts():
    specs = (Option("a", "float", 1.0, "x", positive=True), Option("b", "path", None, "y", nullable=True))
    assert resolve("t", specs, {}) == {"a": 1.0, "b": None}
    assert resolve("t", specs, {"a": 2, "b": Path("/x")}) == {"a": 2.0, "b": "/x"}
    with pytest.raises(ValueError, match="unknown kind"):
        Option("c", "complex", 0, "z")


def test_options_help_lists_every_option_of_every_task():
    text = options_help()
    for name in TASK_NAMES:
        block = text.split(f"\n{name}:\n", 1)[1].split("\n\n", 1)[0]
        for spec in task_options(name):
            assert re.search(rf"^  {spec.name} \({re.escape(spec.type_text)}, default ", block, re.M), (name, spec.name)


def test_docs_hold_the_generated_option_tables():
    """docs/TASKS.md has one table per task, exactly as options_table prints it (regenerate
    with `python -c "from selfcorrect.tasks import options_table; print(options_table('math'))"`)."""
    docs = DOCS.read_text()
    for name in TASK_NAMES:
        assert options_table(name) in docs, f"docs/TASKS.md: the options table of {name!r} is missing or stale"

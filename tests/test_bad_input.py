"""Bad input is refused clearly: a catalogue of cases, each run through the real CLI.

Every error case asserts exit code 2, ONE line on stderr `selfcorrect <command>: error: ...`
naming the culprit, no traceback, and nothing half-written in the run folder (no checkpoints/,
metrics.jsonl, final/, summary.json, eval/; for train the folder is not even created). Data and
options are checked before a model is loaded (`no_model_loading` proves it where the model is
not the culprit). A few inputs that look bad but are fine (a tokenizer without a pad token or a
chat template, a scorer that raises) must work, and are asserted to.

| case | message excerpt | exit |
|---|---|---|
| config: unknown section | `unknown config section 'modle'` | 2 |
| config: unknown key | `unknown config key 'rollout.temprature'` | 2 |
| config: unknown command-line option | `unrecognized arguments: --rollout.temprature 0.5 (see selfcorrect train --help)` | 2 |
| config: option without its value | `argument --task.options.seed: expected one argument` | 2 |
| config: string for an int | `config key 'algo.stage1_steps': expected int, got 'ten'` | 2 |
| config: negative steps | `algo.stage2_steps must be >= 0, got -3` | 2 |
| config: temperature 0 for training | `rollout.temperature must be > 0 for training` | 2 |
| config: rollout.samples_per_problem 1 | `rollout.samples_per_problem must be >= 2 (RLOO needs a baseline)` | 2 |
| config: self_refine with eval.attempts 3 | `eval.method=self_refine makes exactly two attempts` | 2 |
| config: algo.turn1 base with rollout.attempts 1 | `algo.turn1=base ... needs rollout.attempts >= 2` | 2 |
| config: ablation switch with method star | `algo.turn1 / algo.stage2 are ablations of SCoRe; algo.method='star' takes neither` | 2 |
| config: resume and overwrite | `run.resume and run.overwrite contradict each other` | 2 |
| config: bad eval.scaling_k | `eval.scaling_k must be comma-separated integers >= 1, got '1,x'` | 2 |
| config: unknown dtype | `dtype='float8' is not one of auto, ...` | 2 |
| config file: not a mapping | `FILE: config must be a mapping of sections (model:, task:, ...), got a list` | 2 |
| config file: a section not a mapping | `FILE: config section 'rollout' must be a mapping, got 3` | 2 |
| config file: invalid YAML | `config file FILE:3: not valid YAML: expected ',' or ']', ...` | 2 |
| config file: missing | `config file FILE does not exist` | 2 |
| config file: a directory | `config file DIR is a directory, not a YAML file` | 2 |
| split without a file | `custom task: no file for split 'validation'; the custom task has splits 'train' (task option train_path) and 'test' (task option test_path; --data sets it)` | 2 |
| data: missing file | `data file FILE does not exist` | 2 |
| data: missing train file (train) | `data file FILE does not exist` | 2 |
| data: empty file (a split with 0 problems) | `task 'custom' split 'test': no problems to evaluate or train on: FILE holds no rows` | 2 |
| data: not JSON | `FILE:3: not valid JSON (Expecting value)` | 2 |
| data: a line that is not an object | `FILE:2: expected a JSON object, got list` | 2 |
| data: missing field | `FILE:2: missing field 'answer' (fields present: [...])` | 2 |
| data: wrong field type | `FILE:2: field 'question' must be text, got list` | 2 |
| data: duplicate ids | `FILE:3: duplicate id 'a' (first on line 1)` | 2 |
| data: a line over 10 MB | `FILE:2: line longer than 10 MB (the limit for one row)` | 2 |
| data: non-UTF-8 bytes | `FILE:2: not UTF-8 text (byte 0xff at column 15)` | 2 |
| data: a directory | `data file DIR is not a file` | 2 |
| data: unknown extension | `data file FILE: expected a .jsonl, .jsonl.gz or .parquet file` | 2 |
| model: missing folder | `model path '.../nowhere' does not exist` | 2 |
| model: folder without config.json | `model folder DIR has no config.json` | 2 |
| model: config.json but no tokenizer | `model folder DIR: cannot load its tokenizer (...)` | 2 |
| model: prompt longer than the context | `problem 'long': its prompt is 603 tokens, longer than the context window of model DIR (512 tokens)` | 2 |
| model: max_new_tokens beyond the context | `rollout.max_new_tokens=600 does not fit the context window of model DIR (512 tokens, prompt included)` | 2 |
| model: prompt + eval.max_new_tokens beyond the context | `problem 'mid': its prompt (403 tokens) + eval.max_new_tokens=200 exceeds the context window ...` | 2 |
| model: missing folder (train: no run folder made) | `model path '.../nowhere' does not exist` | 2 |
| task: unknown name | `unknown task 'arithmatic'; known tasks: ...` | 2 |
| task: unknown option | `task 'custom': unknown option 'tset_path'; options: ...` | 2 |
| task: option of the wrong type | `task 'custom': option timeout_s must be float > 0, got 'soon' (str)` | 2 |
| task: scorer not importable | `scorer '.../nope.py:score': cannot import .../nope.py: FileNotFoundError: ...` | 2 |
| task: scorer without the function | `scorer '...:score': ... has no function 'score'` | 2 |
| SFT (star): missing train file | `data file FILE does not exist` | 2 |
| SFT (pair_sft): prompt longer than the context | `problem 'long': its prompt is 603 tokens, ...` | 2 |
| compare: missing file | `comparison file FILE does not exist` | 2 |
| compare: invalid YAML | `comparison file FILE:2: not valid YAML: ...` | 2 |
| compare: unknown method | `unknown method(s) ['nope']; known: ...` | 2 |
| compare: bad --seeds | `--seeds 'x': expected comma-separated integers` | 2 |
| compare: missing data file (before any folder) | `data file FILE does not exist` | 2 |
| compare: model folder without config.json | `model folder DIR has no config.json` | 2 |
| works: tokenizer without pad token | pad = eos, evaluation runs | 0 |
| works: tokenizer without chat template | plain-text prompts, evaluation runs | 0 |
| works: scorer that raises | verdict None (`verifier_error`), counted in the records | 0 |
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from selfcorrect import models
from selfcorrect.cli import main

HALF_WRITTEN = ("checkpoints", "metrics.jsonl", "final", "summary.json", "eval", "config.yaml")


@pytest.fixture
def no_model_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(models, "resolve_model_path", refuse)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def write_rows(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = [{"id": "a", "question": "1+1", "answer": "2"}, {"id": "b", "question": "2+2", "answer": "4"}]


def common(tmp: Path, model="tiny", command="eval", data=None):
    """argv of a quick run on the custom task; data: the test (eval) or train (train) file."""
    data = data or write_rows(tmp / "good.jsonl", GOOD)
    option = "test_path" if command == "eval" else "train_path"
    argv = [command, "--task", "custom", f"--task.options.{option}", str(data), "--output", str(tmp / "run"),
            "--run.progress", "false", "--rollout.max_new_tokens", "4", "--eval.bootstrap", "0"]
    if model == "tiny":
        model = str(tmp / "tiny-link")
    return argv + (["--model", model] if model else [])


def tiny_copy(saved_tiny: Path, tmp: Path, name: str = "model") -> Path:
    folder = tmp / name
    shutil.copytree(saved_tiny, folder)
    return folder


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


# ----------------------------------------------------------------------------- the cases
# each: (id, build(tmp, saved_tiny) -> (argv, needles), model_is_the_culprit)


def yaml_file(tmp, text):
    path = tmp / "cfg.yaml"
    path.write_text(text)
    return path


def c_unknown_section(tmp, st):
    return common(tmp, command="train") + ["--config", str(yaml_file(tmp, "modle: {name: x}\n"))], \
        ["unknown config section 'modle'", "cfg.yaml"]


def c_unknown_key(tmp, st):
    return common(tmp, command="train") + ["--config", str(yaml_file(tmp, "rollout: {temprature: 1}\n"))], \
        ["unknown config key 'rollout.temprature'"]


CASES = [
    ("config-unknown-section", c_unknown_section),
    ("config-unknown-key", c_unknown_key),
    ("config-unknown-cli-option", lambda t, s: (common(t, command="train") + ["--rollout.temprature", "0.5"],
                                                ["selfcorrect train: error: unrecognized arguments: --rollout.temprature"])),
    ("config-option-without-value", lambda t, s: (common(t) + ["--task.options.seed"],
                                                  ["argument --task.options.seed: expected one argument"])),
    ("config-string-for-int", lambda t, s: (common(t, command="train") + ["--algo.stage1_steps", "ten"],
                                            ["'algo.stage1_steps': expected int, got 'ten'"])),
    ("config-negative-steps", lambda t, s: (common(t, command="train") + ["--algo.stage2_steps", "-3"],
                                            ["algo.stage2_steps must be >= 0, got -3"])),
    ("config-temperature-0", lambda t, s: (common(t, command="train") + ["--rollout.temperature", "0"],
                                           ["rollout.temperature must be > 0 for training"])),
    ("config-one-sample", lambda t, s: (common(t, command="train") + ["--rollout.samples_per_problem", "1"],
                                        ["rollout.samples_per_problem must be >= 2"])),
    ("config-self-refine-3-attempts", lambda t, s: (common(t) + ["--eval.method", "self_refine", "--eval.attempts", "3"],
                                                    ["self_refine makes exactly two attempts"])),
    ("config-turn1-base-one-attempt", lambda t, s: (common(t, command="train") + ["--algo.turn1", "base",
                                                                                   "--rollout.attempts", "1"],
                                                    ["algo.turn1=base", "rollout.attempts >= 2"])),
    ("config-ablation-with-star", lambda t, s: (common(t, command="train") + ["--algo.method", "star",
                                                                               "--algo.stage2", "star"],
                                                ["ablations of SCoRe", "'star'"])),
    ("config-resume-and-overwrite", lambda t, s: (common(t, command="train") + ["--run.resume", "true",
                                                                                 "--run.overwrite", "true"],
                                                  ["run.resume and run.overwrite contradict"])),
    ("config-bad-scaling-k", lambda t, s: (common(t) + ["--eval.scaling_k", "1,x"], ["eval.scaling_k", "'1,x'"])),
    ("config-unknown-dtype", lambda t, s: (common(t) + ["--model.dtype", "float8"], ["dtype='float8'"])),
    ("config-file-not-a-mapping", lambda t, s: (common(t, command="train") + ["--config", str(yaml_file(t, "- a\n- b\n"))],
                                                ["cfg.yaml", "must be a mapping of sections", "list"])),
    ("config-file-section-not-mapping", lambda t, s: (common(t) + ["--config", str(yaml_file(t, "rollout: 3\n"))],
                                                      ["cfg.yaml", "section 'rollout' must be a mapping"])),
    ("config-file-invalid-yaml", lambda t, s: (common(t) + ["--config", str(yaml_file(t, "model:\n  name: [x\n"))],
                                               ["cfg.yaml:", "not valid YAML"])),
    ("config-file-missing", lambda t, s: (common(t) + ["--config", str(t / "none.yaml")],
                                          ["config file", "none.yaml does not exist"])),
    ("config-file-directory", lambda t, s: (common(t) + ["--config", str(t)], ["is a directory"])),
    ("split-without-file", lambda t, s: (common(t) + ["--task.test_split", "validation"],
                                         ["no file for split 'validation'"])),
    ("data-missing", lambda t, s: (common(t, data=t / "nope.jsonl"), ["nope.jsonl does not exist"])),
    ("data-missing-train", lambda t, s: (common(t, command="train", data=t / "nope.jsonl"),
                                         ["nope.jsonl does not exist"])),
    ("data-empty", lambda t, s: (common(t, data=write_rows(t / "empty.jsonl", [])),
                                 ["split 'test': no problems", "empty.jsonl"])),
    ("data-not-json", lambda t, s: (common(t, data=write_rows(t / "d.jsonl", GOOD + ["{oops"])),
                                    ["d.jsonl:3: not valid JSON"])),
    ("data-not-an-object", lambda t, s: (common(t, data=write_rows(t / "d.jsonl", [GOOD[0], [1, 2]])),
                                         ["d.jsonl:2: expected a JSON object, got list"])),
    ("data-missing-field", lambda t, s: (common(t, data=write_rows(t / "d.jsonl", [GOOD[0], {"question": "q"}])),
                                         ["d.jsonl:2: missing field 'answer'"])),
    ("data-wrong-field-type", lambda t, s: (common(t, data=write_rows(t / "d.jsonl", [GOOD[0], {"question": ["q"],
                                                                                                "answer": "1"}])),
                                            ["d.jsonl:2: field 'question' must be text"])),
    ("data-duplicate-ids", lambda t, s: (common(t, data=write_rows(t / "d.jsonl", GOOD + [GOOD[0]])),
                                         ["d.jsonl:3: duplicate id 'a' (first on line 1)"])),
    ("data-huge-line", lambda t, s: (common(t, data=write_rows(t / "d.jsonl", [GOOD[0], "x" * (11 * 2**20)])),
                                     ["d.jsonl:2: line longer than 10 MB"])),
    ("data-not-utf8", lambda t, s: (common(t, data=_bytes_file(t / "d.jsonl")), ["d.jsonl:2: not UTF-8"])),
    ("data-directory", lambda t, s: (common(t, data=_dir(t / "data.jsonl")), ["data.jsonl is not a file"])),
    ("data-unknown-extension", lambda t, s: (common(t, data=write_rows(t / "d.txt", GOOD)), ["d.txt", ".jsonl"])),
    ("task-unknown-name", lambda t, s: (common(t) + ["--task", "arithmatic"], ["unknown task 'arithmatic'"])),
    ("task-unknown-option", lambda t, s: (common(t) + ["--task.options.tset_path", "x.jsonl"],
                                          ["task 'custom': unknown option 'tset_path'"])),
    ("task-option-wrong-type", lambda t, s: (common(t) + ["--task.options.timeout_s", "soon"],
                                             ["option timeout_s must be float > 0, got 'soon'"])),
    ("task-scorer-not-importable", lambda t, s: (common(t) + ["--task.options.scorer", f"{t}/nope.py:score"],
                                                 ["nope.py:score", "cannot import"])),
    ("task-scorer-no-function", lambda t, s: (common(t) + ["--task.options.scorer", f"{_scorer(t, 'x = 1')}:score"],
                                              ["has no function 'score'"])),
    ("sft-star-missing-train-file", lambda t, s: (common(t, command="train", data=t / "nope.jsonl")
                                                  + ["--algo.method", "star"], ["nope.jsonl does not exist"])),
    ("compare-missing-file", lambda t, s: (["compare", "--config", str(t / "none.yaml")],
                                           ["comparison file", "none.yaml does not exist"])),
    ("compare-invalid-yaml", lambda t, s: (["compare", "--config", str(yaml_file(t, "seeds: [0\nmethods: x\n"))],
                                           ["comparison file", "cfg.yaml:", "not valid YAML"])),
    ("compare-unknown-method", lambda t, s: (["compare", "--config", str(_comparison(t, t / "good.jsonl")),
                                              "--methods", "score,nope"], ["unknown method(s) ['nope']"])),
    ("compare-bad-seeds", lambda t, s: (["compare", "--config", str(_comparison(t, t / "good.jsonl")),
                                         "--seeds", "x"], ["--seeds 'x': expected comma-separated integers"])),
    ("compare-missing-data", lambda t, s: (["compare", "--config", str(_comparison(t, t / "nope.jsonl"))],
                                           ["nope.jsonl does not exist"])),
]

#: cases where the model itself is the culprit (its folder is read, never its weights)
MODEL_CASES = [
    ("model-missing-folder", lambda t, s: (common(t, model=str(t / "nowhere")), ["nowhere' does not exist"])),
    ("model-missing-folder-train", lambda t, s: (common(t, model=str(t / "nowhere"), command="train"),
                                                 ["nowhere' does not exist"])),
    ("model-no-config", lambda t, s: (common(t, model=str(_without(tiny_copy(s, t), "config.json"))),
                                      ["has no config.json"])),
    ("model-no-tokenizer", lambda t, s: (common(t, model=str(_without(tiny_copy(s, t), "tokenizer.json",
                                                                      "tokenizer_config.json",
                                                                      "special_tokens_map.json",
                                                                      "chat_template.jinja"))),
                                         ["model folder", "cannot load its tokenizer"])),
    ("model-prompt-too-long", lambda t, s: (common(t, model=str(s), data=write_rows(
        t / "d.jsonl", GOOD + [{"id": "long", "question": "x" * 600, "answer": "1"}])),
        ["problem 'long'", "longer than the context window", "512 tokens"])),
    ("model-max-new-tokens-beyond-context", lambda t, s: (common(t, model=str(s)) + ["--rollout.max_new_tokens", "600"],
                                                          ["rollout.max_new_tokens=600", "context window", "512"])),
    ("model-eval-max-new-tokens-prompt", lambda t, s: (common(t, model=str(s), data=write_rows(
        t / "d.jsonl", GOOD + [{"id": "mid", "question": "x" * 400, "answer": "1"}])) + ["--eval.max_new_tokens", "200"],
        ["problem 'mid'", "eval.max_new_tokens=200 exceeds the context window"])),
    ("sft-pair-sft-prompt-too-long", lambda t, s: (common(t, model=str(s), command="train", data=write_rows(
        t / "d.jsonl", GOOD + [{"id": "long", "question": "x" * 600, "answer": "1"}])) + ["--algo.method", "pair_sft"],
        ["problem 'long'", "longer than the context window"])),
    ("compare-model-without-config", lambda t, s: (["compare", "--config", str(_comparison(
        t, write_rows(t / "good.jsonl", GOOD), model=_without(tiny_copy(s, t), "config.json")))],
        ["has no config.json"])),
]


def _bytes_file(path: Path) -> Path:
    path.write_bytes(json.dumps(GOOD[0]).encode() + b'\n{"question": "\xff\xfe", "answer": "1"}\n')
    return path


def _dir(path: Path) -> Path:
    path.mkdir()
    return path


def _scorer(tmp: Path, source: str) -> Path:
    path = tmp / "my_scorer.py"
    path.write_text(source + "\n")
    return path


def _without(folder: Path, *names: str) -> Path:
    for name in names:
        (folder / name).unlink(missing_ok=True)
    return folder


def _comparison(tmp: Path, data: Path, model: Path | None = None) -> Path:
    path = tmp / "compare.yaml"
    path.write_text(json.dumps({
        "output_dir": str(tmp / "run"), "seeds": [0], "methods": ["base", "score"],
        "base": {"model": {"name": str(model or tmp / "tiny-link")},
                 "task": {"name": "custom", "options": {"test_path": str(data), "train_path": str(data)}},
                 "run": {"progress": False}}}))
    return path


def check_refused(code: int, err: str, command: str, needles, tmp: Path) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith(f"selfcorrect {command}: error: "), lines[0]
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    run = tmp / "run"
    if command in ("train", "compare"):
        assert not run.exists(), f"{run} was created: {sorted(p.name for p in run.iterdir())}"
    else:
        assert not any((run / name).exists() for name in HALF_WRITTEN)


@pytest.mark.parametrize("case", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_before_any_model(case, tmp_path, capsys, no_model_loading):
    argv, needles = case(tmp_path, None)
    code = main(argv)
    check_refused(code, capsys.readouterr().err, argv[0], needles, tmp_path)


@pytest.mark.parametrize("case", [c[1] for c in MODEL_CASES], ids=[c[0] for c in MODEL_CASES])
def test_a_bad_model_is_one_line_exit_2_before_its_weights(case, saved_tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(models, "load_policy", lambda *a, **k: pytest.fail("weights loaded before the check"))
    argv, needles = case(tmp_path, saved_tiny)
    code = main(argv)
    check_refused(code, capsys.readouterr().err, argv[0], needles, tmp_path)


def test_the_catalogue_has_at_least_30_cases():
    assert len(CASES) + len(MODEL_CASES) >= 30


# ----------------------------------------------------------------------------- inputs that look bad but work


def _eval_ok(argv, tmp_path, capsys) -> list[dict]:
    code = main(argv + ["--limit", "2"])
    err = capsys.readouterr().err
    assert code == 0, err
    records = next((tmp_path / "run" / "eval").glob("*/records.jsonl"))
    return [json.loads(line) for line in records.read_text().splitlines()]


def test_a_tokenizer_without_pad_token_uses_eos(saved_tiny, tmp_path, capsys):
    folder = tiny_copy(saved_tiny, tmp_path)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (folder / name).exists():
            edit_json(folder / name, pad_token=None)
    tok = models.load_tokenizer(str(folder))
    assert tok.pad_token_id == tok.eos_token_id
    assert len(_eval_ok(common(tmp_path, model=str(folder)), tmp_path, capsys)) == 2


def test_a_tokenizer_without_chat_template_uses_plain_text(saved_tiny, tmp_path, capsys):
    folder = _without(tiny_copy(saved_tiny, tmp_path), "chat_template.jinja")
    edit_json(folder / "tokenizer_config.json", chat_template=None)
    assert not getattr(models.load_tokenizer(str(folder)), "chat_template", None)
    assert len(_eval_ok(common(tmp_path, model=str(folder)), tmp_path, capsys)) == 2


def test_a_scorer_that_raises_costs_verdicts_not_the_run(saved_tiny, tmp_path, capsys):
    scorer = _scorer(tmp_path, "def score(problem, response):\n    raise RuntimeError('boom')")
    argv = common(tmp_path, model=str(saved_tiny)) + ["--task.options.scorer", f"{scorer}:score",
                                                      "--task.options.workers", "1"]
    records = _eval_ok(argv, tmp_path, capsys)
    text = json.dumps(records)
    assert text.count("verifier_error") >= 2 * len(records)  # every attempt counted, none scored 0

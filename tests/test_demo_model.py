"""The embedded demo base: tokenizer, chat template, corpus rules, the cached build."""

import json
import random
import string
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from selfcorrect import demo_model as dm
from selfcorrect.demo_probe import probe
from selfcorrect.sft import encode_chat
from selfcorrect.tasks.arithmetic import ArithmeticTask

SENTINEL = "\x00SENTINEL\x00"



@pytest.fixture(scope="module")
def tokenizer():
    return dm.build_tokenizer(["47+38", "Recheck."])


@pytest.fixture(scope="module")
def quick_build(tmp_path_factory):
    return dm.build_demo_base(tmp_path_factory.mktemp("cache"), quick=True, progress=False)


# ---------------------------------------------------------------- tokenizer and template

def test_tokenizer_round_trips_and_is_char_level(tokenizer):
    rng = random.Random(0)
    texts = ["", " 85", "7+8=15;4+3+1=8;85", "What is 7 * 5?\nAnswer: 35", string.printable,
             "".join(rng.choice(string.printable) for _ in range(300)), dm.EOS + "12" + dm.USER]
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    plain = "47+38= 85 Recheck."
    assert len(tokenizer(plain, add_special_tokens=False)["input_ids"]) == len(plain)


def test_special_tokens(tokenizer):
    assert tokenizer.eos_token == dm.EOS and tokenizer.pad_token == dm.PAD
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    for token in dm.SPECIAL_TOKENS:
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1
    assert tokenizer.decode(tokenizer(dm.USER + "1" + dm.EOS, add_special_tokens=False)["input_ids"],
                            skip_special_tokens=True) == "1"


def test_chat_template_shape(tokenizer):
    user = {"role": "user", "content": "47+38"}
    prompt = tokenizer.apply_chat_template([user], tokenize=False, add_generation_prompt=True)
    assert prompt == dm.USER + "47+38" + dm.ASSISTANT
    ids = tokenizer.apply_chat_template([user], add_generation_prompt=True)["input_ids"]
    assert ids == tokenizer(prompt, add_special_tokens=False)["input_ids"]
    # The rollout's way to get the second-turn tokens: render around a sentinel.
    second = tokenizer.apply_chat_template(
        [user, {"role": "assistant", "content": SENTINEL}, {"role": "user", "content": "Recheck."}],
        tokenize=False, add_generation_prompt=True).split(SENTINEL, 1)[1]
    assert second == dm.EOS + dm.USER + "Recheck." + dm.ASSISTANT
    full = tokenizer.apply_chat_template(
        [user, {"role": "assistant", "content": " 85"}, {"role": "user", "content": "Recheck."},
         {"role": "assistant", "content": " 85"}], tokenize=False)
    assert full == prompt + " 85" + second + " 85" + dm.EOS
    with pytest.raises(Exception, match="unknown chat role"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


# ---------------------------------------------------------------- corpus rules

def test_sloppy_solver_forgets_carries_only():
    rng = random.Random(0)
    always = replace(dm.RECIPE, p_forget_carry=1.0, p_slip=0.0)
    never = replace(dm.RECIPE, p_forget_carry=0.0, p_slip=0.0)
    assert dm.sloppy_answer(47, 38, always, rng) == " 75"
    assert dm.sloppy_answer(47, 38, never, rng) == " 85"
    assert dm.sloppy_answer(41, 38, always, rng) == " 79"  # no carry: nothing to forget
    assert dm.sloppy_answer(67, 55, always, rng) == "112"
    assert dm.sloppy_answer(67, 55, replace(never, align_answers=False), rng) == "122"


def test_check_scratchpad():
    assert dm.check_scratchpad(47, 38) == "7+8=15;4+3+1=8;85"
    assert dm.check_scratchpad(41, 38) == "1+8=9;4+3=7;79"
    assert dm.check_scratchpad(76, 25) == "6+5=11;7+2+1=10;101"
    task = ArithmeticTask()
    rng = random.Random(1)
    for _ in range(200):
        a, b = rng.randrange(10, 100), rng.randrange(10, 100)
        [v] = task.score([task.problem(a, "+", b)], [dm.check_scratchpad(a, b)])
        assert v.reward == 1.0


def test_nudge_changes_exactly_one_digit_and_keeps_padding():
    rng = random.Random(0)
    for text in [" 85", "120", " 10", "199"]:
        for _ in range(50):
            out = dm._nudge_digit(text, rng)
            assert len(out) == len(text) and out != text
            assert sum(x != y for x, y in zip(out, text)) == 1
            pad = len(text) - len(text.lstrip())
            assert out.lstrip()[0] != "0" and out[:pad] == text[:pad]


def test_corpus_modes_follow_the_recipe_and_ignore_correctness():
    task = ArithmeticTask()
    train = task.load("train")
    recipe = replace(dm.RECIPE, conversations=20_000)
    chats = dm.build_corpus(train, recipe, task.correction_instruction, seed=0)
    assert len(chats) == 20_000
    test_questions = {p.question for p in task.load("test")}
    assert not test_questions & {c[0]["content"] for c in chats}
    by_id = {p.question: p for p in train}
    counts = {(right, mode): 0 for right in (0.0, 1.0) for mode in dm.MODES}
    for chat in chats:
        assert [m["role"] for m in chat] == ["user", "assistant", "user", "assistant"]
        assert chat[2]["content"] == task.correction_instruction
        problem = by_id[chat[0]["content"]]
        [v1] = task.score([problem], [chat[1]["content"]])
        mode = dm.classify_second_attempt(chat[1]["content"], chat[3]["content"])
        counts[(v1.reward, mode)] += 1
    right = sum(counts[(1.0, m)] for m in dm.MODES)
    wrong = sum(counts[(0.0, m)] for m in dm.MODES)
    assert 0.6 < right / len(chats) < 0.8  # 55% no-carry + 45% * (1 - 0.65), minus slips
    for mode, share in (("copy", recipe.p_copy), ("check", recipe.p_check),
                        ("break", 1 - recipe.p_copy - recipe.p_check)):
        # The same share whether y1 was right or wrong: the base cannot tell.
        assert counts[(1.0, mode)] / right == pytest.approx(share, abs=0.025)
        assert counts[(0.0, mode)] / wrong == pytest.approx(share, abs=0.025)


def test_classify_second_attempt():
    assert dm.classify_second_attempt(" 85", " 85") == "copy"
    assert dm.classify_second_attempt(" 85", " 86") == "break"
    assert dm.classify_second_attempt(" 85", "7+8=15;4+3+1=8;85") == "check"
    assert dm.classify_second_attempt(" 85", "hello") == "other"


def test_corpus_rows_match_the_template(tokenizer):
    task = ArithmeticTask()
    chats = dm.build_corpus(task.load("train"), replace(dm.RECIPE, conversations=300),
                            task.correction_instruction, seed=3)
    rows, masks = dm.encode_corpus(tokenizer, chats)
    for chat, row, mask in list(zip(chats, rows, masks))[::17]:
        assert (row, mask) == tuple(encode_chat(tokenizer, chat))


def test_corpus_rejects_other_operators():
    task = ArithmeticTask(ops="*")
    with pytest.raises(ValueError, match="a\\+b"):
        dm.build_corpus(task.load("test")[:5], dm.QUICK_RECIPE, "x", seed=0)


# ---------------------------------------------------------------- the build

def test_quick_build_loads_with_auto_classes(quick_build):
    info = json.loads((quick_build / "recipe.json").read_text())
    assert info["fingerprint"] == dm.QUICK_RECIPE.fingerprint() and info["seed"] == 0
    assert info["extra_rounds"] == 0 and info["steps_trained"] == dm.QUICK_RECIPE.steps
    assert info["task"] == {"name": "arithmetic", "digits": 2, "ops": "+", "style": "demo",
                            "n_test": 500, "seed": 0}
    model = AutoModelForCausalLM.from_pretrained(quick_build)
    tok = AutoTokenizer.from_pretrained(quick_build)
    assert tok.eos_token == dm.EOS and tok.chat_template == dm.CHAT_TEMPLATE
    assert model.config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    ids = tok.apply_chat_template([{"role": "user", "content": "47+38"}], add_generation_prompt=True,
                                  return_tensors="pt")["input_ids"]
    out = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    assert out.shape[0] == 1 and out.shape[1] > ids.shape[1]
    assert not [p for p in quick_build.parent.iterdir() if p.name.startswith(".")]


def test_a_seed_still_on_the_plateau_trains_more(tmp_path):
    recipe = replace(dm.QUICK_RECIPE, steps=4, min_learned_acc=1.0, max_extra_rounds=1)
    with pytest.warns(UserWarning, match="after 1 extra rounds"):
        folder = dm.build_demo_base(tmp_path, recipe=recipe, progress=False)
    info = json.loads((folder / "recipe.json").read_text())
    assert info["extra_rounds"] == 1 and info["steps_trained"] == 6
    assert info["no_carry_train_acc"] < 1.0


def test_cache_is_reused_and_force_rebuilds(quick_build, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("rebuilt a valid cache")

    monkeypatch.setattr(dm, "_write_build", boom)
    assert dm.build_demo_base(quick_build.parent, quick=True, progress=False) == quick_build
    with pytest.raises(AssertionError, match="rebuilt"):
        dm.build_demo_base(quick_build.parent, quick=True, progress=False, force=True)
    # The failed forced rebuild left the old build in place and no temporary folders.
    assert (quick_build / "recipe.json").exists()
    assert not [p for p in quick_build.parent.iterdir() if p.name.startswith(".")]


def test_interrupted_build_leaves_no_cache(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dm, "sft_train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        dm.build_demo_base(tmp_path, quick=True, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_quick_build_is_reproducible(quick_build, tmp_path):
    again = dm.build_demo_base(tmp_path, quick=True, progress=False)
    a = AutoModelForCausalLM.from_pretrained(quick_build).state_dict()
    b = AutoModelForCausalLM.from_pretrained(again).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (quick_build / "tokenizer.json").read_text() == (again / "tokenizer.json").read_text()


def test_probe_reports_calibration_numbers(quick_build):
    model = AutoModelForCausalLM.from_pretrained(quick_build)
    tok = AutoTokenizer.from_pretrained(quick_build)
    task = ArithmeticTask()
    result = probe(model, tok, task, task.load("test")[:16], sample=False, max_new_tokens=6)
    assert result["n"] == 16
    assert result["acc_t2"] - result["acc_t1"] == pytest.approx(result["i_to_c"] - result["c_to_i"])
    assert sum(result[f"share_{m}"] for m in (*dm.MODES, "other")) == pytest.approx(1.0)


def test_probe_command_reports_greedy_and_sampled(quick_build, tmp_path, capsys):
    from selfcorrect.demo_probe import main

    out = tmp_path / "probe.json"
    main(["--quick", "--cache-dir", str(quick_build.parent), "--json", str(out)])
    results = json.loads(out.read_text())
    assert results["folder"] == str(quick_build)  # the cached build, not a new one
    assert results["greedy"]["n"] == results["sampled"]["n"] == 500
    assert capsys.readouterr().out.count('"acc_t1"') == 2


@pytest.mark.calibration
def test_real_recipe_calibration(tmp_path):
    """The real build (2.5 minutes on 2 free cores): a weak, noisy base as the demo needs."""
    folder = dm.build_demo_base(tmp_path, progress=False)
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    task = dm.RECIPE.task()
    greedy = probe(model, tok, task, task.load("test"), sample=False)
    sampled = probe(model, tok, task, task.load("test"), sample=True)
    assert 0.3 <= greedy["acc_t1"] <= 0.7
    assert abs(greedy["delta"]) <= 0.05
    assert 0.55 <= sampled["share_copy"] <= 0.75
    assert 0.10 <= sampled["share_check"] <= 0.25
    assert 0.10 <= sampled["share_break"] <= 0.22
    assert sampled["check_acc"] >= 0.7

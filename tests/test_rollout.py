import torch

from selfcorrect.rollout import ChatFormat, SamplingSettings, generate, rollout, verify
from tiny import EchoTask, tiny_model, tiny_tokenizer


def test_chat_format_between_ids_closes_turn_and_opens_next():
    tok = tiny_tokenizer()
    fmt = ChatFormat(tok)
    msgs = [{"role": "user", "content": "hi"}]
    between = fmt.between_ids(msgs, "again")
    assert tok.decode(between) == "<|end|><|user|>again<|end|><|assistant|>"
    # an attempt that ended with eos does not get a second one
    assert fmt.join_ids([5, tok.eos_token_id], between) == between[1:]
    assert fmt.join_ids([5, 6], between) == between


def test_left_padded_batch_equals_one_by_one_greedy():
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=3)
    fmt = ChatFormat(tok)
    contexts = [fmt.first_ids([{"role": "user", "content": "x" * n}]) for n in (1, 7, 20, 3)]
    settings = SamplingSettings(greedy=True, max_new_tokens=12)
    batched, _ = generate(model, contexts, settings, stop_ids={tok.eos_token_id}, pad_id=tok.pad_token_id, batch_size=4)
    single = [generate(model, [c], settings, stop_ids={tok.eos_token_id}, pad_id=tok.pad_token_id, batch_size=1)[0][0]
              for c in contexts]
    assert batched == single
    assert len({len(c) for c in contexts}) == 4  # the prompts really differ in length


def test_rollout_rows_are_token_in_token_out_with_turn_ids():
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=1)
    task = EchoTask(3)
    problems = task.load("train")
    torch.manual_seed(0)
    ro = rollout(model, tok, task, problems, n_attempts=3, samples_per_problem=2,
                 settings=SamplingSettings(greedy=False, max_new_tokens=6), batch_size=4)
    verify(task, ro)
    assert ro.problem_index == [0, 0, 1, 1, 2, 2]
    fmt = ChatFormat(tok)
    between = fmt.between_ids(task.first_turn(problems[0]), task.correction_instruction)
    for b, row in enumerate(ro.rows):
        expected = fmt.first_ids(task.first_turn(problems[ro.problem_index[b]]))
        expected_turns = [0] * len(expected)
        for a, ids in enumerate(ro.attempts[b]):
            expected += ids
            expected_turns += [a + 1] * len(ids)
            if a < 2:
                glue = fmt.join_ids(ids, between)
                expected += glue
                expected_turns += [0] * len(glue)
        assert row == expected
        assert ro.turns[b] == expected_turns
        assert all(len(ids) <= 6 for ids in ro.attempts[b])
    rewards = ro.rewards()
    assert rewards.shape == (6, 3)
    ids, mask, turns = ro.tensors([0, 1], tok.pad_token_id, "cpu")
    assert ids.shape == mask.shape == turns.shape and int(mask[0].sum()) == len(ro.rows[0])


def test_eos_stops_each_row_independently():
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=2)
    eos = tok.eos_token_id
    calls = {"n": 0}

    def force_eos_on_row0_at_third_token(module, inputs, output):
        calls["n"] += 1
        output.logits[:, -1, eos] = -1e4  # never eos by itself...
        if calls["n"] == 3:
            output.logits[0, -1, eos] = 1e4  # ...except row 0 at its third new token
        return output

    model.register_forward_hook(force_eos_on_row0_at_third_token)
    fmt = ChatFormat(tok)
    contexts = [fmt.first_ids([{"role": "user", "content": t}]) for t in ("abc", "de")]
    out, cut = generate(model, contexts, SamplingSettings(greedy=True, max_new_tokens=5), stop_ids={eos},
                        pad_id=tok.pad_token_id, batch_size=2)
    assert len(out[0]) == 3 and out[0][-1] == eos and eos not in out[0][:-1]
    assert len(out[1]) == 5 and eos not in out[1]
    assert cut == [False, True]

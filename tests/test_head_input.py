"""contiguous_head_input: the output layer gets contiguous hidden states (same logits), in every
engine's rollout and in the shared-prompt forward, and the hook is gone after the block."""

import pytest
import torch

from selfcorrect.engines import make_engine
from selfcorrect.engines.base import SamplingSettings
from selfcorrect.head_input import contiguous_head_input
from selfcorrect.rollout import rollout
from tiny import ENGINE_HIDDEN, EchoTask, engine_params, tiny_model, tiny_tokenizer


def record_head_inputs(head) -> list[bool]:
    """Wrap `head`'s forward to record whether each input it computes on is contiguous."""
    seen: list[bool] = []
    plain = head.forward

    def forward(input):  # noqa: A002 (nn.Linear's own name for it, which a keyword call uses)
        seen.append(input.is_contiguous())
        return plain(input)

    head.forward = forward
    return seen


def test_a_sliced_input_arrives_contiguous_with_the_same_logits():
    tok = tiny_tokenizer()
    model = tiny_model(tok, hidden=ENGINE_HIDDEN)
    head = model.get_output_embeddings()
    hidden = torch.randn(3, 7, ENGINE_HIDDEN)
    sliced = hidden[:, -1:, :]  # what logits_to_keep=1 hands the output layer
    assert not sliced.is_contiguous()
    expected = head(sliced.contiguous())
    seen = record_head_inputs(head)
    with contiguous_head_input(model):
        inside = head(sliced)
        by_keyword = head(input=sliced)
    after = head(sliced)
    assert seen == [True, True, False]
    torch.testing.assert_close(inside, expected, rtol=0, atol=0)
    torch.testing.assert_close(by_keyword, expected, rtol=0, atol=0)
    torch.testing.assert_close(after, expected)
    assert not head._forward_pre_hooks  # removed on exit


def test_a_model_without_an_output_layer_is_left_alone():
    with contiguous_head_input(torch.nn.Linear(2, 2)):
        pass


@pytest.mark.parametrize("name", [p for p in engine_params() if p.values[0] != "vllm"])
def test_rollouts_hand_the_output_layer_contiguous_inputs(name):
    """A frozen bf16 model (LoRA's base, a reference, an evaluated checkpoint): where torch's CPU
    linear turns a strided input into one copy of the weights per row."""
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=2, hidden=ENGINE_HIDDEN).to(torch.bfloat16).requires_grad_(False)
    seen = record_head_inputs(model.get_output_embeddings())
    task = EchoTask(3)
    rollout(model, tok, task, task.load("train"), n_attempts=2, samples_per_problem=2,
            settings=SamplingSettings(greedy=True, max_new_tokens=4), batch_size=4, engine=make_engine(name))
    assert seen and all(seen)


def test_the_shared_prompt_forward_hands_the_output_layer_contiguous_inputs():
    from selfcorrect.batches import pad_rows
    from selfcorrect.shared_prompt import first_scored, shared_prompt_logprobs

    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=2, hidden=ENGINE_HIDDEN)
    seen = record_head_inputs(model.get_output_embeddings())
    rows = [[5, 6, 7, 8, 9, 10], [5, 6, 7, 11, 12], [20, 21, 22, 23]]
    turns = [[0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1], [0, 0, 1, 1]]
    ids, mask = pad_rows(rows, 0)
    turn_ids, _ = pad_rows(turns, 0)
    starts = first_scored(turn_ids, mask.sum(dim=1))
    shared_prompt_logprobs(model, ids, mask, starts, int(starts.min()))
    assert seen and all(seen)

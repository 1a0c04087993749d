"""The oneDNN output layer: same logits as nn.Linear, switched only where eligible and always restored."""

import pytest
import torch

from selfcorrect.cpu_linear import product
from selfcorrect.engines.cpu_output_layer import onednn_output_layer
from tiny import tiny_model, tiny_tokenizer

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


@needs_onednn
@pytest.mark.parametrize("shape", [(5, 16), (2, 3, 16), (1, 1, 16)])
@pytest.mark.parametrize("bias", [False, True])
def test_equals_linear(shape, bias):
    g = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(16, 40, bias=bias)
    x = torch.randn(*shape, generator=g)
    torch.testing.assert_close(product(x, layer.weight, layer.bias), layer(x), atol=1e-5, rtol=1e-5)


@needs_onednn
def test_switched_inside_and_restored_after_an_error():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        want = model(input_ids=ids).logits
        with pytest.raises(RuntimeError, match="stop"), onednn_output_layer(model):
            assert "forward" in vars(model.lm_head)
            torch.testing.assert_close(model(input_ids=ids).logits, want, atol=1e-5, rtol=1e-5)
            raise RuntimeError("stop")
    assert "forward" not in vars(model.lm_head)


def test_left_alone_where_not_eligible():
    tok = tiny_tokenizer()
    half = tiny_model(tok).to(torch.bfloat16)
    with onednn_output_layer(half):
        assert "forward" not in vars(half.lm_head)
    hooked = tiny_model(tok)
    own = hooked.lm_head.forward
    hooked.lm_head.forward = own  # something else (accelerate's hooks) already replaced it
    with onednn_output_layer(hooked):
        assert vars(hooked.lm_head)["forward"] is own


@needs_onednn
def test_gradients_still_flow_inside_the_block():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    with onednn_output_layer(model):
        model(input_ids=torch.tensor([[5, 6, 7]])).logits.sum().backward()
    assert model.lm_head.weight.grad is not None


@needs_onednn
def test_under_autocast_the_plain_layer_computes_as_the_trainer_does():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = model(input_ids=ids).logits
        with onednn_output_layer(model):
            got = model(input_ids=ids).logits
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, atol=0, rtol=0)

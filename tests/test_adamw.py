"""optim.adamw: decay on matrices only, torch's fused kernel for plain tensors, the same maths as the loop."""

import torch

from selfcorrect.optim import adamw


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 3))


def test_fused_on_plain_tensors_and_decay_on_matrices_only():
    opt = adamw(_model(), lr=1e-3, weight_decay=0.1)
    assert opt.defaults["fused"] is True
    decay, no_decay = opt.param_groups
    assert all(p.dim() >= 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert all(p.dim() < 2 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0


def test_fused_steps_equal_the_for_loop_steps():
    models = [_model(), _model()]
    fused = adamw(models[0], lr=1e-2, weight_decay=0.1)
    loop = torch.optim.AdamW([{"params": g["params"], "weight_decay": g["weight_decay"]} for g in
                              adamw(models[1], lr=1e-2, weight_decay=0.1).param_groups], lr=1e-2, foreach=False)
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))
    for _ in range(5):
        for model, opt in zip(models, (fused, loop)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for a, b in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)

"""DualOpt optimizers inside mmengine's OptimWrapper: gradient accumulation and clip_grad.

The wrapper path must equal a hand-written loop over the same optimizer (accumulate the
micro-batch gradients of loss / accumulative_counts, clip their norm, one ``step()``), so the
review runs once per real step, after clipping, and never on an accumulating micro-batch.
"""
import copy

import pytest
import torch
import torch.nn as nn
from mmengine.optim import OptimWrapper

from dualopt_mm.optim import DualOptAdamW, DualOptSGD

ACCUMULATE = 2
MAX_NORM = 0.5


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double()


def micro_batches(n: int):
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(5, 4, generator=generator, dtype=torch.float64),
             torch.randint(0, 3, (5,), generator=generator)) for _ in range(n)]


def loss_of(model: nn.Module, batch) -> torch.Tensor:
    inputs, targets = batch
    return nn.functional.cross_entropy(model(inputs), targets)


@pytest.mark.parametrize('optimizer_class, kwargs', [
    (DualOptSGD, dict(lr=0.1, momentum=0.9, weight_decay=1e-4, k_max=0.2, foreach=False)),
    (DualOptAdamW, dict(lr=0.05, weight_decay=0.01, k_max=0.2, foreach=True)),
])
def test_accumulation_and_clipping_match_a_manual_loop(optimizer_class, kwargs):
    wrapped_model, manual_model = make_model(), make_model()
    wrapper = OptimWrapper(optimizer_class(wrapped_model.parameters(), **kwargs),
                           accumulative_counts=ACCUMULATE, clip_grad=dict(max_norm=MAX_NORM))
    optimizer = optimizer_class(manual_model.parameters(), **kwargs)
    batches = micro_batches(4 * ACCUMULATE)

    for index, batch in enumerate(batches):
        before = [p.detach().clone() for p in wrapped_model.parameters()]
        with wrapper.optim_context(wrapped_model):
            wrapper.update_params(loss_of(wrapped_model, batch))
        is_real_step = (index + 1) % ACCUMULATE == 0
        changed = any(not torch.equal(b, p) for b, p in zip(before, wrapped_model.parameters()))
        assert changed == is_real_step, f'micro-batch {index}: parameters changed={changed}'

        (loss_of(manual_model, batch) / ACCUMULATE).backward()
        if is_real_step:
            nn.utils.clip_grad_norm_(manual_model.parameters(), MAX_NORM)
            optimizer.step()
            optimizer.zero_grad()

    for wrapped, manual in zip(wrapped_model.parameters(), manual_model.parameters()):
        torch.testing.assert_close(wrapped, manual, rtol=0, atol=1e-15)
    wrapped_state = wrapper.optimizer.state_dict()['state']
    assert set(wrapped_state) == set(optimizer.state_dict()['state'])
    manual_state = optimizer.state_dict()['state']
    for index, state in wrapped_state.items():
        if optimizer_class is DualOptAdamW:  # 8 micro-batches = 4 real steps
            assert int(state['step']) == 4
        torch.testing.assert_close(state['anchor'], manual_state[index]['anchor'], rtol=0, atol=0)


def test_review_pulls_toward_the_first_weights_not_a_copy():
    """θ_0 is the weights at the first real step: an accumulating micro-batch captures nothing
    that a later step could mistake for the anchor."""
    model = make_model()
    initial = copy.deepcopy(model.state_dict())
    wrapper = OptimWrapper(DualOptSGD(model.parameters(), lr=0.1, k_max=0.5, foreach=False),
                           accumulative_counts=ACCUMULATE)
    for batch in micro_batches(2 * ACCUMULATE):
        with wrapper.optim_context(model):
            wrapper.update_params(loss_of(model, batch))
    anchors = [wrapper.optimizer.state[p]['anchor'] for p in model.parameters()]
    for anchor, (name, value) in zip(anchors, initial.items()):
        assert torch.equal(anchor, value), name

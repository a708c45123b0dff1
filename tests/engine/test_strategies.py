"""The strategy adapters without processes: which adapter a run gets, FSDP's anchor
placeholders round trip, drift sums added over (simulated) ranks, the build-time refusals."""
import math

import pytest
import torch
import torch.nn as nn
from engine_toys import ToyDetector
from mmengine.optim import build_optim_wrapper

from dualopt_mm.engine.hooks.drift import block_sums, drift_from_sums
from dualopt_mm.engine.strategies import StrategyAdapter, adapter_for, check_strategy
from dualopt_mm.engine.strategies.fsdp import ANCHOR_PLACEHOLDERS, pad_anchor_state


def _optimizer(model: nn.Module):
    return build_optim_wrapper(model, dict(
        constructor='DualOptOptimWrapperConstructor',
        optimizer=dict(type='AdamW', lr=1e-2, weight_decay=0.05),
        paramwise_cfg=dict(dualopt=dict(mode='finetune', pretrained='backbone', k_max=0.2)))
    ).optimizer


def test_adapter_of_a_plain_model_and_optimizer():
    model = ToyDetector()
    adapter = adapter_for(model, _optimizer(model))
    assert type(adapter) is StrategyAdapter and not adapter.sharded
    names = adapter.param_names(model)
    assert sorted(names.values()) == sorted(n for n, _ in model.named_parameters())
    assert adapter.full_shapes(model)['head.weight'] == (2, 8)
    values = torch.ones(3, 3, dtype=torch.float64)
    assert adapter.reduce_sum(values) is values  # whole tensors on every rank: no reduction


def test_fsdp_anchor_placeholders_round_trip():
    """Every tensor with state gets an anchor in the saved state (FSDP gathers a key only if
    all tensors have it); the non-reviewed ones are marked and lose it again on load."""
    torch.manual_seed(0)
    model = ToyDetector()
    optimizer = _optimizer(model)
    pad_anchor_state(optimizer)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    saved = optimizer.state_dict()
    assert all('anchor' in entry for entry in saved['state'].values())
    marked = {g['param_name'] for g in saved['param_groups'] if g.get(ANCHOR_PLACEHOLDERS)}
    assert marked == {g['param_name'] for g in optimizer.param_groups if g['mode'] == 'none'}
    assert not any(ANCHOR_PLACEHOLDERS in g for g in optimizer.param_groups)  # live: untouched
    assert not any('anchor' in optimizer.state[g['params'][0]] for g in optimizer.param_groups
                   if g['mode'] == 'none')

    torch.manual_seed(1)
    other = ToyDetector()
    restored = _optimizer(other)
    pad_anchor_state(restored)
    restored.load_state_dict(saved)
    for group, live in zip(restored.param_groups, optimizer.param_groups):
        state, reference = restored.state[group['params'][0]], optimizer.state[live['params'][0]]
        assert ANCHOR_PLACEHOLDERS not in group
        assert ('anchor' in state) == ('anchor' in reference), group['param_name']
        if 'anchor' in state:
            assert torch.equal(state['anchor'], reference['anchor'])


def test_drift_sums_added_over_ranks_equal_the_whole_model():
    """Two 'ranks' holding halves of each tensor and of θ_0 (FSDP / DeepSpeed slices) give,
    once their sums are added, the drift of the whole tensors."""
    generator = torch.Generator().manual_seed(0)
    whole = [('a', torch.randn(6, generator=generator), torch.randn(6, generator=generator)),
             ('b', torch.randn(4, generator=generator), torch.randn(4, generator=generator))]
    full = drift_from_sums(block_sums(whole, lambda values: values))
    halves = [[(block, p[r::2], a[r::2]) for block, p, a in whole] for r in range(2)]
    parts = [block_sums(rows, lambda values: values) for rows in halves]
    added = drift_from_sums({k: parts[0][k] + parts[1][k] for k in parts[0]})
    assert added.keys() == full.keys() == {'a', 'b', 'all'}
    for key, value in full.items():
        assert added[key] == pytest.approx(value, rel=1e-12)
    p, a = whole[0][1], whole[0][2]
    assert full['a'] == pytest.approx(float((p - a).norm() / a.norm()))
    # a block whose θ_0 no rank holds is left out; an empty shard contributes nothing
    sums = block_sums([('c', torch.zeros(0), torch.zeros(0)), ('d', torch.ones(2), None)],
                      lambda values: values)
    assert drift_from_sums(sums) == {'c': 0.0, 'all': 0.0}
    assert math.isfinite(drift_from_sums(sums)['all'])


def test_check_strategy_without_a_strategy_refuses_nothing():
    model = ToyDetector()
    check_strategy(model, None, 'scratch', None, 'DualOptAdamW')  # one process: skip_1d fine


@pytest.mark.parametrize('review', [False, True])
def test_fsdp_refuses_the_hook_with_another_optimizer(review):
    """Under FSDP the hook's own theta_0 of a stock optimizer would be one rank's shards, which a
    rank-0 checkpoint cannot restore: refused before iteration 0 (drift only too); a DualOpt
    optimizer (theta_0 in its state) is accepted."""
    from dualopt_mm.engine.strategies.fsdp import FSDPAdapter

    adapter = FSDPAdapter.__new__(FSDPAdapter)  # check_hook reads no wrapped model
    with pytest.raises(NotImplementedError, match=f'review={review}.*DualOptOptimWrapper'):
        adapter.check_hook(review, foreign=True)
    adapter.check_hook(review, foreign=False)

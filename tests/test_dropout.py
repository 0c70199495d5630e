"""brainfm's dropout: the drop rate, the scaling, the gradient, reproducibility, and
that the criss-cross block's written-out attention dropout computes SDPA's maths."""

import pytest
import torch
import torch.nn.functional as F

from brainfm.models import CrissCrossBlock, ModelConfig
from brainfm.models.dropout import Dropout, dropout, keep_mask


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_mask_drops_at_rate_p(p):
    torch.manual_seed(0)
    keep = keep_mask((999, 1001), p)  # 999 999 elements: the last 64-bit word is only partly used
    assert keep.shape == (999, 1001) and keep.dtype == torch.bool
    n = keep.numel()
    drop_rate = 1.0 - keep.float().mean().item()
    assert abs(drop_rate - p) < 5 * (p * (1 - p) / n) ** 0.5 + 1e-5
    # the four 16-bit lanes of each 64-bit word are each uniform (no lane is biased)
    words = keep.flatten()[: n - n % 4].view(-1, 4).float()  # (n_words, 4 lanes)
    lanes = words.mean(dim=0)
    assert torch.allclose(lanes, torch.full((4,), 1 - p), atol=6 * (p * (1 - p) / (n / 4)) ** 0.5)
    # and independent of each other: two lanes of one word are both dropped at rate p**2
    both = ((1 - words[:, 0]) * (1 - words[:, 3])).mean().item()
    assert abs(both - p * p) < 6 * (p * p * (1 - p * p) / (n / 4)) ** 0.5


def test_keep_mask_rejects_bad_p_and_dropout_falls_back_near_one():
    with pytest.raises(ValueError, match="dropout probability"):
        keep_mask((3,), 1.0)
    x = torch.ones(10, 10)
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros(10, 10))  # as nn.Dropout(1.0)
    assert dropout(x, 0.99999).count_nonzero() <= 2  # past 16-bit masks: F.dropout, no error


def test_dropout_traces_whole_under_torch_compile():
    """Inside torch.compile it is F.dropout, which dynamo and inductor handle: no graph break."""
    compiled = torch.compile(lambda t: dropout(t, 0.1) * 2, backend="aot_eager", fullgraph=True)
    out = compiled(torch.ones(64, 64))
    assert out.shape == (64, 64) and 0.8 < (out != 0).float().mean().item() < 0.97


def test_dropout_scales_kept_values_and_gradient_uses_the_same_mask():
    torch.manual_seed(1)
    x = torch.randn(64, 300, requires_grad=True)
    y = dropout(x, 0.25)
    kept = y != 0
    assert torch.allclose(y[kept], x.detach()[kept] / 0.75)
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() / 0.75)


def test_dropout_is_reproducible_from_the_torch_seed_and_identity_in_eval():
    x = torch.randn(32, 50)
    torch.manual_seed(7)
    a = dropout(x, 0.1)
    torch.manual_seed(7)
    b = dropout(x, 0.1)
    assert torch.equal(a, b)
    layer = Dropout(0.1).eval()
    assert layer(x) is x
    assert isinstance(layer, torch.nn.Dropout) and layer.p == 0.1


def test_attention_dropout_path_matches_sdpa_without_dropout():
    """The written-out CPU path is SDPA's maths: with a probability that rounds to no
    dropped level (p = 1e-9: nothing dropped, scale 1) it equals F.scaled_dot_product_attention."""
    torch.manual_seed(2)
    block = CrissCrossBlock(ModelConfig.from_name("tiny", attn_dropout=0.1)).train()
    q, k, v = (torch.randn(2, 3, 7, 16) for _ in range(3))
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[1, ..., 5:] = False
    block.attn_dropout_p = 1e-9  # rounds to a zero threshold: nothing dropped, scale 1
    ours = block._sdpa(q, k, v, mask)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(ours, ref, atol=1e-6)


def test_block_with_dropout_trains_and_is_deterministic_in_eval():
    torch.manual_seed(3)
    block = CrissCrossBlock(ModelConfig.from_name("tiny", dropout=0.1, attn_dropout=0.1))
    x = torch.randn(2, 5, 4, block.norm1.normalized_shape[0], requires_grad=True)
    block.train()
    block(x).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    block.eval()
    assert torch.equal(block(x), block(x))


def test_attention_probability_dropout_drops_at_rate_p():
    torch.manual_seed(4)
    block = CrissCrossBlock(ModelConfig.from_name("tiny", attn_dropout=0.3)).train()
    q, k = torch.randn(2, 3, 40, 16), torch.randn(2, 3, 40, 16)
    v = torch.eye(40).expand(2, 3, 40, 40)  # out = the (dropped) attention probabilities themselves
    probs = block._sdpa(q, k, v, None)
    assert abs((probs == 0).float().mean().item() - 0.3) < 0.02
    ref = F.scaled_dot_product_attention(q, k, v)
    kept = probs != 0
    assert torch.allclose(probs[kept], ref[kept] / 0.7, atol=1e-6, rtol=1e-4)

"""Block options of notebook 02: Sub-LN, DeepNet's α and β, GLU variants, weight sharing, and their checkers.

Every module is compared with a naive computation written out here, in float64 (tolerance 1e-10),
with its parameters moved away from their initial values so that ones and zeros hide nothing.
Initialisation statistics are compared with their formulas within 3% (on 65,536 or more weights
the sampling error of a standard deviation is about 0.3%).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_checks import fails, passes
from torch import nn

from course_lib.checks import blocks as check
from course_lib.nn import (
    GLU,
    MLP,
    LayerNorm,
    MultiHeadAttention,
    RMSNorm,
    TransformerBlock,
    TransformerEncoder,
)
from course_lib.nn.block import NORM_POSITIONS, deepnet_scales
from course_lib.nn.feedforward import FEEDFORWARDS, glu_hidden, make_feedforward
from course_lib.nn.norms import NormedLinear, make_norm

TOL = dict(atol=1e-10, rtol=1e-10)


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype) * 0.5)
    return module


def naive_layer_norm(x, weight, bias, eps=1e-5):
    centred = x - x.mean(-1, keepdim=True)
    return centred / torch.sqrt((centred**2).mean(-1, keepdim=True) + eps) * weight + bias


def naive_rms_norm(x, weight, eps=1e-6):
    return x / torch.sqrt((x**2).mean(-1, keepdim=True) + eps) * weight


def naive_norm(norm: nn.Module, x):
    if isinstance(norm, LayerNorm):
        return naive_layer_norm(x, norm.weight, norm.bias, norm.eps)
    assert isinstance(norm, RMSNorm)
    return naive_rms_norm(x, norm.weight, norm.eps)


def naive_linear(layer: nn.Linear, x):
    """x Wᵀ + b, with the Sub-LN norm first when the layer has one."""
    if isinstance(layer, NormedLinear):
        x = naive_norm(layer.norm, x)
    out = x @ layer.weight.T
    return out + layer.bias if layer.bias is not None else out


NAIVE_ACTIVATIONS = {
    "gelu": lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2))),
    "relu": lambda x: torch.clamp(x, min=0),
    "silu": lambda x: x / (1 + torch.exp(-x)),
}


def naive_attention(attention: MultiHeadAttention, x, *, causal=False):
    """Every head written out with a Python loop; the output projection may carry Sub-LN's norm."""
    q, k, v = (naive_linear(layer, x) for layer in (attention.to_q, attention.to_k, attention.to_v))
    heads, size = attention.heads, attention.head_dim
    outputs = []
    for h in range(heads):
        part = slice(h * size, (h + 1) * size)
        scores = q[..., part] @ k[..., part].transpose(-2, -1) / math.sqrt(size)
        if causal:
            length = x.shape[-2]
            scores = scores.masked_fill(torch.ones(length, length).triu(1).bool(), float("-inf"))
        outputs.append(torch.softmax(scores, dim=-1) @ v[..., part])
    return naive_linear(attention.to_out, torch.cat(outputs, dim=-1))


def naive_ffn(ffn: nn.Module, x):
    if isinstance(ffn, MLP):
        act = NAIVE_ACTIVATIONS[ffn.act.__name__]
        return naive_linear(ffn.fc_out, act(naive_linear(ffn.fc_in, x)))
    act = NAIVE_ACTIVATIONS[ffn.act.__name__]
    return naive_linear(ffn.down, act(naive_linear(ffn.gate, x)) * naive_linear(ffn.up, x))


def naive_block(block: TransformerBlock, x, *, position, alpha, causal=False):
    branches = [(block.attn_norm, lambda h: naive_attention(block.attn, h, causal=causal)),
                (block.ffn_norm, lambda h: naive_ffn(block.ffn, h))]
    for norm, branch in branches:
        if position == "post":
            x = naive_norm(norm, alpha * x + branch(x))
        else:
            x = alpha * x + branch(naive_norm(norm, x))
    return x


# --- norms ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["layer", "rms"])
@pytest.mark.parametrize("bias", [True, False])
def test_normed_linear_normalises_then_projects(norm, bias):
    layer = randomize(NormedLinear(6, 4, norm=norm, bias=bias)).double()
    x = torch.randn(2, 3, 6, dtype=torch.float64) * 4 + 1
    expected = naive_norm(layer.norm, x) @ layer.weight.T
    if bias:
        expected = expected + layer.bias
    torch.testing.assert_close(layer(x), expected, **TOL)
    assert isinstance(layer, nn.Linear) and ("bias" in dict(layer.named_parameters())) == bias


def test_normed_linear_output_ignores_the_scale_of_its_input():
    """The point of Sub-LN's extra norm: scaling what enters the projection changes nothing."""
    layer = NormedLinear(8, 8).double()
    x = torch.randn(4, 8, dtype=torch.float64)
    torch.testing.assert_close(layer(x), layer(1000 * x), atol=1e-4, rtol=1e-4)  # up to eps = 1e-5


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: LayerNorm(0), r"dim=0"),
        (lambda: RMSNorm(-3), r"dim=-3"),
        (lambda: LayerNorm(2.5), r"dim=2.5"),
        (lambda: RMSNorm(4, eps=0.0), r"eps=0.0"),
        (lambda: LayerNorm(4, eps=-1e-5), r"eps=-1e-05"),
        (lambda: make_norm("batch", 4), r"norm='batch'"),
        (lambda: NormedLinear(0, 4), r"in_features=0"),
        (lambda: NormedLinear(4, 4, norm="group"), r"norm='group'"),
    ],
)
def test_norms_reject_bad_arguments(build, message):
    with pytest.raises(ValueError, match=message):
        build()


# --- feed-forward --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(FEEDFORWARDS))
@pytest.mark.parametrize("sub_norm", [None, "layer", "rms"])
def test_feedforward_kinds_match_naive(kind, sub_norm):
    """mlp = fc_out(act(fc_in x)); the GLUs = down(act(gate x) * up x); sub_norm normalises before the last layer."""
    torch.manual_seed(0)
    ffn = randomize(make_feedforward(kind, 6, 10, sub_norm=sub_norm)).double()
    family, activation = FEEDFORWARDS[kind]
    assert isinstance(ffn, MLP if family == "mlp" else GLU) and ffn.act.__name__ == activation
    last = ffn.fc_out if family == "mlp" else ffn.down
    assert isinstance(last, NormedLinear) == (sub_norm is not None)
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    act = NAIVE_ACTIVATIONS[activation]
    if family == "mlp":
        hidden = act(x @ ffn.fc_in.weight.T + ffn.fc_in.bias)
    else:
        hidden = act(x @ ffn.gate.weight.T) * (x @ ffn.up.weight.T)
    if sub_norm == "layer":
        hidden = naive_layer_norm(hidden, last.norm.weight, last.norm.bias)
    elif sub_norm == "rms":
        hidden = naive_rms_norm(hidden, last.norm.weight)
    expected = hidden @ last.weight.T + (last.bias if last.bias is not None else 0)
    torch.testing.assert_close(ffn(x), expected, **TOL)


def test_glu_names_and_geglu():
    assert FEEDFORWARDS["glu"] == FEEDFORWARDS["swiglu"] == ("glu", "silu")
    assert FEEDFORWARDS["geglu"] == ("glu", "gelu")
    assert GLU(4, 8, activation="gelu").act is F.gelu


@pytest.mark.parametrize(("dim", "ratio", "expected"), [(96, 4.0, 256), (64, 4.0, 176), (128, 4.0, 344), (10, 2.0, 16)])
def test_glu_hidden_matches_the_mlp_parameter_count(dim, ratio, expected):
    hidden = glu_hidden(dim, ratio)
    assert hidden == expected and hidden % 8 == 0
    glu = GLU(dim, hidden, bias=False)
    mlp = MLP(dim, int(ratio * dim), bias=False)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # rounding up to a multiple of 8 adds at most 3 * dim * 7 weights
    assert 0 <= count(glu) - count(mlp) <= 3 * dim * 7


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: MLP(0, 4), r"dim=0"),
        (lambda: GLU(4, -1), r"hidden=-1"),
        (lambda: MLP(4, 8, dropout=1.0), r"dropout=1.0"),
        (lambda: GLU(4, 8, sub_norm="batch"), r"sub_norm='batch'"),
        (lambda: make_feedforward("moe", 4, 8), r"ffn='moe'"),
        (lambda: GLU(4, 8, activation="tanh"), r"activation='tanh'"),
        (lambda: glu_hidden(0), r"dim=0"),
        (lambda: glu_hidden(8, 0.0), r"mlp_ratio=0.0"),
        (lambda: glu_hidden(8, multiple_of=0), r"multiple_of=0"),
    ],
)
def test_feedforward_rejects_bad_arguments(build, message):
    with pytest.raises(ValueError, match=message):
        build()


# --- DeepNet's α and β ---------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 6, 24, 48, 200])
def test_deepnet_scales_match_the_formulas(depth):
    alpha, beta = deepnet_scales(depth, "post")
    assert alpha == pytest.approx(math.sqrt(math.sqrt(2 * depth)), rel=1e-12)
    assert beta == pytest.approx(1 / math.sqrt(math.sqrt(8 * depth)), rel=1e-12)
    assert deepnet_scales(depth) == (alpha, beta)  # 'post' is the default
    one, gamma = deepnet_scales(depth, "sub")
    assert one == 1.0 and gamma == pytest.approx(math.sqrt(math.log(2 * depth)), rel=1e-12)


def test_deepnet_scales_at_depth_48():
    """The numbers the notebook quotes."""
    alpha, beta = deepnet_scales(48)
    assert round(alpha, 4) == 3.1302 and round(beta, 4) == 0.2259
    assert round(deepnet_scales(48, "sub")[1], 4) == 2.1364


@pytest.mark.parametrize(("args", "message"), [((0,), r"depth=0"), ((3.5,), r"depth=3.5"), ((12, "pre"), r"norm_position='pre'")])
def test_deepnet_scales_rejects_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        deepnet_scales(*args)


# --- the block -----------------------------------------------------------------------------------


@pytest.mark.parametrize("position", NORM_POSITIONS)
@pytest.mark.parametrize(("alpha", "norm", "ffn", "causal"), [(1.0, "layer", "mlp", False), (2.3, "rms", "swiglu", True),
                                                             (0.7, "layer", "geglu", True)])
def test_block_matches_naive(position, alpha, norm, ffn, causal):
    block = TransformerBlock(8, 2, norm_position=position, residual_scale=alpha, norm=norm, ffn=ffn)
    block = randomize(block).double().eval()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    expected = naive_block(block, x, position=position, alpha=alpha, causal=causal)
    torch.testing.assert_close(block(x, causal=causal), expected, **TOL)


def test_sub_ln_adds_a_norm_before_each_output_projection():
    keys = lambda position: set(TransformerBlock(8, 2, norm_position=position).state_dict())  # noqa: E731
    extra = keys("sub") - keys("pre")
    assert extra == {"attn.to_out.norm.weight", "attn.to_out.norm.bias", "ffn.fc_out.norm.weight", "ffn.fc_out.norm.bias"}
    assert keys("pre") == keys("post")
    cross = TransformerBlock(8, 2, norm_position="sub", cross_attention=True, norm="rms")
    assert isinstance(cross.cross_attn.to_out, NormedLinear) and isinstance(cross.cross_attn.to_out.norm, RMSNorm)


def xavier_std(layer: nn.Linear) -> float:
    fan_out, fan_in = layer.weight.shape
    return math.sqrt(2.0 / (fan_in + fan_out))


@pytest.mark.parametrize("position", NORM_POSITIONS)
@pytest.mark.parametrize("gain", [0.25, 1.0, 2.1])
def test_init_gain_scales_value_output_and_ffn_weights(position, gain):
    """DeepNet's rule: Xavier-normal everywhere, gain β for value, output and feed-forward weights, zero biases."""
    torch.manual_seed(0)
    block = TransformerBlock(256, 4, norm_position=position, init_gain=gain, cross_attention=True)
    for attention in (block.attn, block.cross_attn):
        for layer, expected_gain in ((attention.to_q, 1.0), (attention.to_k, 1.0), (attention.to_v, gain), (attention.to_out, gain)):
            std = layer.weight.std().item()
            assert std == pytest.approx(expected_gain * xavier_std(layer), rel=0.03), (layer, std)
            assert torch.count_nonzero(layer.bias) == 0
    for layer in (block.ffn.fc_in, block.ffn.fc_out):
        assert layer.weight.std().item() == pytest.approx(gain * xavier_std(layer), rel=0.03)
        assert torch.count_nonzero(layer.bias) == 0
    for name, parameter in block.named_parameters():
        if "norm" in name:  # norms keep their ones and zeros
            assert torch.all(parameter == (1.0 if name.endswith("weight") else 0.0)), name


def test_without_init_gain_the_default_initialisation_is_kept():
    torch.manual_seed(0)
    default = TransformerBlock(16, 4)
    torch.manual_seed(0)
    same = TransformerBlock(16, 4, init_gain=None)
    for (name, a), (_, b) in zip(default.state_dict().items(), same.state_dict().items()):
        assert torch.equal(a, b), name
    # PyTorch's default draws U(-1/√fan_in, 1/√fan_in); biases are not zero
    assert default.attn.to_q.weight.abs().max() <= 1 / math.sqrt(16) and default.attn.to_q.bias.abs().sum() > 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(norm_position="middle"), r"norm_position='middle'"),
        (dict(residual_scale=0.0), r"residual_scale=0.0"),
        (dict(residual_scale=-2.0), r"residual_scale=-2.0"),
        (dict(init_gain=0.0), r"init_gain=0.0"),
        (dict(ffn="moe"), r"ffn='moe'"),
    ],
)
def test_block_rejects_bad_arguments(options, message):
    with pytest.raises(ValueError, match=message):
        TransformerBlock(8, 2, **options)


# --- the encoder: depth scaling --------------------------------------------------------------------


@pytest.mark.parametrize("position", ["post", "sub"])
def test_depth_scaling_sets_alpha_and_beta_from_the_depth(position):
    torch.manual_seed(0)
    depth = 12
    encoder = TransformerEncoder(depth, 256, 4, norm_position=position, depth_scaling=True)
    alpha, beta = deepnet_scales(depth, position)
    for block in encoder.blocks:
        assert block.residual_scale == alpha
        assert block.attn.to_v.weight.std().item() == pytest.approx(beta * xavier_std(block.attn.to_v), rel=0.03)
        assert block.attn.to_q.weight.std().item() == pytest.approx(xavier_std(block.attn.to_q), rel=0.03)
    assert isinstance(encoder.final_norm, nn.Identity) == (position == "post")


def test_depth_scaling_refuses_pre_norm_and_clashing_options():
    with pytest.raises(ValueError, match=r"norm_position='pre'"):
        TransformerEncoder(4, 8, 2, depth_scaling=True)
    with pytest.raises(ValueError, match=r"residual_scale"):
        TransformerEncoder(4, 8, 2, norm_position="post", depth_scaling=True, residual_scale=2.0)


def test_deepnet_keeps_a_deep_post_ln_stack_near_identity_at_init():
    """With α = (2N)^(1/4) and β = (8N)^(-1/4), the skip dominates every update of a 48-layer stack at init:
    tokens keep their directions (no rank collapse), while plain Post-LN mixes them towards one vector."""
    torch.manual_seed(0)
    x = torch.randn(2, 16, 32)

    def token_similarity(out):
        unit = F.normalize(out, dim=-1)
        similarity = unit @ unit.transpose(1, 2)  # (B, L, L)
        return ((similarity.sum((1, 2)) - 16) / (16 * 15)).mean().item()

    with torch.no_grad():
        deepnet = TransformerEncoder(48, 32, 4, norm_position="post", depth_scaling=True)(x)
        plain = TransformerEncoder(48, 32, 4, norm_position="post", init_gain=1.0)(x)
    assert abs(token_similarity(deepnet) - token_similarity(x)) < 0.05
    assert token_similarity(plain) > 0.9  # measured 1.00 for seeds 0 to 3


# --- the encoder: weight sharing -------------------------------------------------------------------


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(("depth", "unique"), [(6, 1), (6, 2), (6, 3), (4, 4)])
def test_shared_encoder_applies_each_block_several_times_in_a_row(depth, unique):
    torch.manual_seed(0)
    encoder = randomize(TransformerEncoder(depth, 8, 2, unique_blocks=unique)).double().eval()
    distinct = list(dict.fromkeys(encoder.blocks))  # the unique blocks in order
    assert len(encoder.blocks) == depth and len(distinct) == unique
    assert count(encoder) == unique * count(distinct[0]) + count(encoder.final_norm)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    expected = x
    for block in distinct:
        for _ in range(depth // unique):
            expected = naive_block(block, expected, position="pre", alpha=1.0)
    expected = naive_norm(encoder.final_norm, expected)
    torch.testing.assert_close(encoder(x), expected, **TOL)


def test_shared_encoder_loads_into_an_unshared_one_with_the_same_outputs():
    """Its state dict lists every layer (tied copies included), so an unshared stack can take it."""
    torch.manual_seed(0)
    shared = randomize(TransformerEncoder(4, 8, 2, unique_blocks=2, norm_position="sub")).eval()
    unshared = TransformerEncoder(4, 8, 2, norm_position="sub").eval()
    unshared.load_state_dict(shared.state_dict())
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(unshared(x), shared(x), atol=1e-6, rtol=1e-6)


def test_sharing_without_norms_keeps_each_layers_norms():
    torch.manual_seed(0)
    encoder = TransformerEncoder(4, 8, 2, unique_blocks=1, share_norms=False, cross_attention=True)
    first, *others = encoder.blocks
    for block in others:
        assert block is not first
        assert block.attn is first.attn and block.ffn is first.ffn and block.cross_attn is first.cross_attn
        assert block.attn_norm is not first.attn_norm and block.ffn_norm is not first.ffn_norm
    norms = 3 * 2 * 8  # three LayerNorms of weight and bias per block
    branches = count(first) - norms
    assert count(encoder) == branches + 4 * norms + 2 * 8


def test_shared_weights_get_the_sum_of_their_gradients():
    """One parameter used at two depths: its gradient adds the contributions of both uses."""
    torch.manual_seed(0)
    shared = TransformerEncoder(2, 8, 2, unique_blocks=1).double()
    unshared = TransformerEncoder(2, 8, 2).double()
    unshared.load_state_dict(shared.state_dict())
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    shared(x).pow(2).sum().backward()
    unshared(x).pow(2).sum().backward()
    expected = unshared.blocks[0].attn.to_q.weight.grad + unshared.blocks[1].attn.to_q.weight.grad
    torch.testing.assert_close(shared.blocks[0].attn.to_q.weight.grad, expected, **TOL)


@pytest.mark.parametrize(("unique", "message"), [(0, r"unique_blocks=0"), (4, r"unique_blocks=4"), (7, r"unique_blocks=7"),
                                                 (2.0, r"unique_blocks=2.0")])
def test_encoder_rejects_bad_sharing(unique, message):
    with pytest.raises(ValueError, match=message):
        TransformerEncoder(6, 8, 2, unique_blocks=unique)


def test_encoder_rejects_bad_depth():
    with pytest.raises(ValueError, match=r"depth=0"):
        TransformerEncoder(0, 8, 2)


# --- the checkers of notebook 02 -------------------------------------------------------------------


class GoodRMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6, *, centre=False, eps_outside=False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps, self.centre, self.eps_outside = eps, centre, eps_outside

    def forward(self, x):
        if self.centre:
            x = x - x.mean(-1, keepdim=True)
        if self.eps_outside:
            return x / (x.pow(2).mean(-1, keepdim=True).sqrt() + self.eps) * self.weight
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def test_rms_norm_checker(capsys):
    passes(check.rms_norm, GoodRMSNorm, capsys)
    fails(check.rms_norm, lambda dim, eps=1e-6: GoodRMSNorm(dim, eps, centre=True), capsys, "RMSNorm")
    fails(check.rms_norm, lambda dim, eps=1e-6: GoodRMSNorm(dim, eps, eps_outside=True), capsys, "scale 0.001")
    fails(check.rms_norm, lambda dim, eps=1e-6: GoodRMSNorm(dim, 0.0), capsys, "all zeros")


class GoodSwiGLU(nn.Module):
    def __init__(self, dim, hidden, *, act_on_up=False):
        super().__init__()
        self.gate, self.up = nn.Linear(dim, hidden, bias=False), nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)
        self.act_on_up = act_on_up

    def forward(self, x):
        if self.act_on_up:
            return self.down(self.gate(x) * F.silu(self.up(x)))
        return self.down(F.silu(self.gate(x)) * self.up(x))


def test_swiglu_checker(capsys):
    passes(check.swiglu, GoodSwiGLU, capsys)
    fails(check.swiglu, lambda dim, hidden: GoodSwiGLU(dim, hidden, act_on_up=True), capsys, "SwiGLU")
    with_bias = lambda dim, hidden: GLU(dim, hidden, bias=True)  # noqa: E731
    assert "unexpected" in fails(check.swiglu, with_bias, capsys, "parameters differ")


class LearnerBlock(nn.Module):
    """A block as the notebook builds it: packaged attention, its own FFN and norms."""

    def __init__(self, dim, heads, *, position="pre", alpha=1.0, mistake=None):
        super().__init__()
        self.position, self.alpha, self.mistake = position, alpha, mistake
        self.attn_norm, self.ffn_norm = LayerNorm(dim), LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads)
        self.ffn = MLP(dim, 4 * dim, sub_norm="layer" if position == "sub" else None)
        if position == "sub":
            self.attn.to_out = NormedLinear(dim, dim)

    def forward(self, x, causal=False):
        branches = [(self.attn_norm, lambda h: self.attn(h, causal=causal and self.mistake != "no causal")),
                    (self.ffn_norm, self.ffn)]
        for norm, branch in branches:
            if self.position == "post" and self.mistake != "post as pre":
                x = norm(self.alpha * x + branch(x))
            elif self.mistake == "alpha on branch":
                x = x + self.alpha * branch(norm(x))
            else:
                x = self.alpha * x + branch(norm(x))
        return x


def test_block_checker(capsys):
    passes(check.block, LearnerBlock, capsys)
    for mistake, phrase in [("post as pre", "post"), ("alpha on branch", "alpha=1.7"), ("no causal", "causal=True")]:
        wrong = lambda dim, heads, mistake=mistake, **options: LearnerBlock(dim, heads, mistake=mistake, **options)  # noqa: E731
        fails(check.block, wrong, capsys, phrase)


def test_deepnet_checker(capsys):
    passes(check.deepnet_alpha_beta, lambda depth: ((2 * depth) ** 0.25, (8 * depth) ** -0.25), capsys)
    passes(check.deepnet_alpha_beta, lambda depth: [math.sqrt(math.sqrt(2 * depth)), 1 / math.sqrt(math.sqrt(8 * depth))], capsys)
    fails(check.deepnet_alpha_beta, lambda depth: ((8 * depth) ** 0.25, (2 * depth) ** -0.25), capsys, "depth=1")
    fails(check.deepnet_alpha_beta, lambda depth: ((2 * depth) ** 0.5, (8 * depth) ** -0.5), capsys, "depth=1")
    fails(check.deepnet_alpha_beta, lambda depth: (2 * depth) ** 0.25, capsys, "tuple")
    fails(check.deepnet_alpha_beta, lambda depth: None, capsys, "tuple")

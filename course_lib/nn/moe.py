"""Mixture of experts (notebook 18): a router sends each token to a few of several feed-forward experts, so the
parameters grow with the number of experts while the compute per token does not.

- `top_k_routing`: softmax over the experts, keep the k largest, renormalise them to sum to one (Mixtral).
- `expert_capacity` and `capacity_mask`: each expert takes at most `capacity` assignments per batch; the rest are
  dropped (the token then passes through the residual connection only), first choices served before second
  choices and earlier tokens before later ones, as in Switch and GShard.
- `load_balancing_loss` (Switch's E · Σ_e f_e · P_e) and `router_z_loss` (ST-MoE's mean squared log-sum-exp).
- `expert_choice_routing`: the other way round: each expert picks its `capacity` best tokens, so no expert is
  ever over capacity, and a token may get any number of experts, zero included.
- `MoE`: SwiGLU experts stored as Mixtral stores them ((E, 2·hidden, dim) and (E, dim, hidden)), with a dispatch
  that sorts the assignments by expert and runs each expert once on its contiguous slice: a loop over experts,
  never over tokens. `MoE.from_hf` copies a `MixtralSparseMoeBlock`, with which it then agrees.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

__all__ = ["MoE", "capacity_mask", "expert_capacity", "expert_choice_routing", "load_balancing_loss",
           "router_z_loss", "top_k_routing"]


def _check_logits(logits: Tensor) -> None:
    if not isinstance(logits, Tensor) or logits.dim() != 2 or not logits.is_floating_point() or 0 in logits.shape:
        raise ValueError(f"logits must be float router scores (tokens, experts); got "
                         f"{getattr(logits, 'dtype', type(logits).__name__)} of shape {tuple(getattr(logits, 'shape', ()))}")


def top_k_routing(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(T, E) router logits -> (T, k) expert indices, best first, and their (T, k) gates: the softmax over all
    experts, restricted to the top k and renormalised to sum to one."""
    _check_logits(logits)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= logits.shape[1]:
        raise ValueError(f"k={k!r} must be an int in [1, experts={logits.shape[1]}]")
    gates, indices = logits.float().softmax(dim=-1).topk(k, dim=-1)
    return indices, (gates / gates.sum(dim=-1, keepdim=True)).to(logits.dtype)


def expert_capacity(tokens: int, experts: int, k: int, capacity_factor: float) -> int:
    """Assignments one expert may take: ceil(capacity_factor · tokens · k / experts), a perfectly even share
    times the factor."""
    for name, value in (("tokens", tokens), ("experts", experts), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive int")
    if isinstance(capacity_factor, bool) or not isinstance(capacity_factor, (int, float)) or not capacity_factor > 0:
        raise ValueError(f"capacity_factor={capacity_factor!r} must be a positive number")
    return math.ceil(capacity_factor * tokens * k / experts)


def capacity_mask(indices: Tensor, experts: int, capacity: int) -> Tensor:
    """(T, k) True for the assignments an expert keeps: each expert's first `capacity` assignments, counted over
    the first choices of every token (in token order), then the second choices, and so on."""
    if not isinstance(indices, Tensor) or indices.dim() != 2 or indices.is_floating_point():
        raise ValueError(f"indices must be (tokens, k) expert ids; got shape {tuple(getattr(indices, 'shape', ()))}")
    priority = rearrange(indices, "t k -> (k t)")  # first choices of every token first
    one_hot = F.one_hot(priority, experts)  # (k·T, E)
    position = (one_hot.cumsum(dim=0) * one_hot).sum(dim=1) - 1  # place of each assignment in its expert's queue
    return rearrange(position < capacity, "(k t) -> t k", k=indices.shape[1])


def load_balancing_loss(logits: Tensor, indices: Tensor) -> Tensor:
    """Switch Transformer's auxiliary loss, E · Σ_e f_e · P_e: f_e the fraction of the (T, k) assignments that go
    to expert e, P_e the mean router probability of e. It is 1 when both are uniform, and grows as the router
    favours experts that also get the most tokens."""
    _check_logits(logits)
    experts = logits.shape[1]
    fraction = F.one_hot(indices, experts).float().mean(dim=(0, 1))  # (E,) share of the assignments
    probability = logits.float().softmax(dim=-1).mean(dim=0)  # (E,)
    return experts * (fraction * probability).sum()


def router_z_loss(logits: Tensor) -> Tensor:
    """ST-MoE's router z-loss, the mean over tokens of logsumexp(logits)²: keeps the router's logits small, which
    keeps its softmax numerically tame."""
    _check_logits(logits)
    return logits.float().logsumexp(dim=-1).pow(2).mean()


def expert_choice_routing(logits: Tensor, capacity: int) -> tuple[Tensor, Tensor]:
    """Expert choice: each of E experts takes the `capacity` tokens it scores highest. Returns (E, capacity) token
    indices and their (E, capacity) gates (the softmax over experts of each chosen token's logits)."""
    _check_logits(logits)
    if isinstance(capacity, bool) or not isinstance(capacity, int) or not 1 <= capacity <= logits.shape[0]:
        raise ValueError(f"capacity={capacity!r} must be an int in [1, tokens={logits.shape[0]}]")
    gates, tokens = logits.float().softmax(dim=-1).T.topk(capacity, dim=-1)  # (E, capacity) each
    return tokens, gates.to(logits.dtype)


class MoE(nn.Module):
    """(B, L, dim) -> (B, L, dim): top-k routing over `experts` SwiGLU experts of `hidden` units. With
    `capacity_factor`, assignments beyond an expert's capacity are dropped (their output is 0). After each call,
    `aux` holds the router's 'balance' and 'z' losses and the 'dropped' fraction of assignments."""

    def __init__(self, dim: int, hidden: int, experts: int, k: int = 2, *, capacity_factor: float | None = None
                 ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("hidden", hidden), ("experts", experts), ("k", k)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive int")
        if k > experts:
            raise ValueError(f"k={k} is more than experts={experts}")
        if capacity_factor is not None:
            expert_capacity(1, experts, k, capacity_factor)  # checks the factor
        self.experts, self.k, self.capacity_factor = experts, k, capacity_factor
        self.router = nn.Linear(dim, experts, bias=False)
        self.gate_up = nn.Parameter(torch.randn(experts, 2 * hidden, dim) * dim**-0.5)
        self.down = nn.Parameter(torch.randn(experts, dim, hidden) * hidden**-0.5)
        self.aux: dict[str, Tensor] = {}

    def expert(self, e: int, x: Tensor) -> Tensor:
        """Expert e on tokens (n, dim): SiLU(x W_gate) * (x W_up), then W_down."""
        gate, up = F.linear(x, self.gate_up[e]).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, self.down[e])

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.router.in_features or 0 in x.shape:
            raise ValueError(f"x must be (batch, length, dim={self.router.in_features}); got shape "
                             f"{tuple(getattr(x, 'shape', ()))}")
        tokens = rearrange(x, "b l d -> (b l) d")
        logits = self.router(tokens)  # (T, E)
        indices, gates = top_k_routing(logits, self.k)  # (T, k)
        keep = torch.ones_like(indices, dtype=torch.bool)
        if self.capacity_factor is not None:
            capacity = expert_capacity(len(tokens), self.experts, self.k, self.capacity_factor)
            keep = capacity_mask(indices, self.experts, capacity)
        self.aux = {"balance": load_balancing_loss(logits, indices), "z": router_z_loss(logits),
                    "dropped": 1 - keep.float().mean()}
        # dispatch: the kept (token, slot) assignments sorted by expert, each expert once on its slice
        token_of = torch.arange(len(tokens), device=x.device)[:, None].expand_as(indices)[keep]
        expert_of, gate_of = indices[keep], gates[keep]
        order = expert_of.argsort(stable=True)
        token_of, expert_of, gate_of = token_of[order], expert_of[order], gate_of[order]
        counts = torch.bincount(expert_of, minlength=self.experts).tolist()
        out = torch.zeros_like(tokens)
        start = 0
        for e, count in enumerate(counts):
            if count:
                rows = token_of[start:start + count]
                out.index_add_(0, rows, self.expert(e, tokens[rows]) * gate_of[start:start + count, None])
            start += count
        return rearrange(out, "(b l) d -> b l d", b=x.shape[0])

    @classmethod
    def from_hf(cls, block: nn.Module) -> MoE:
        """Our MoE with the weights of a Hugging Face `MixtralSparseMoeBlock` (no capacity, like theirs)."""
        experts, router = block.experts, block.gate
        model = cls(experts.hidden_dim, experts.intermediate_dim, experts.num_experts, router.top_k)
        with torch.no_grad():
            model.router.weight.copy_(router.weight)
            model.gate_up.copy_(experts.gate_up_proj)
            model.down.copy_(experts.down_proj)
        return model

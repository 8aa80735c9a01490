"""Mixture of experts (notebook 18): a router sends each token to a few of several feed-forward experts, so the
parameters grow with the number of experts while the compute per token does not.

- `top_k_routing`: softmax over the experts, keep the k largest, renormalise them to sum to one (Mixtral).
- `expert_capacity` and `capacity_mask`: each expert takes at most `capacity` assignments per batch; the rest are
  dropped (the token then passes through the residual connection only), first choices served before second
  choices and earlier tokens before later ones, as in Switch and GShard.
- `load_balancing_loss` (Switch's E · Σ_e f_e · P_e) and `router_z_loss` (ST-MoE's mean squared log-sum-exp).
- `expert_choice_routing`: the other way round: each expert picks its `capacity` best tokens, so no expert is
  ever over capacity, and a token may get any number of experts, zero included.
- `routing_entropies`: LIMoE's two entropies per group of tokens (a modality, a task): the mean entropy of each
  token's routing distribution (low: each token decides) and the entropy of the group's mean distribution
  (high: the group spreads over many experts).
- `MoE`: SwiGLU experts stored as Mixtral stores them ((E, 2·hidden, dim) and (E, dim, hidden)), with a dispatch
  that sorts the assignments by expert and runs each expert once on its contiguous slice: a loop over experts,
  never over tokens. Tokens may carry a group id (their modality or task); with `router_per_group` each group has
  its own router over the shared experts (modality-aware routing as in EVE, task-aware as in M3ViT).
  `MoE.from_hf` copies a `MixtralSparseMoeBlock`, with which it then agrees.
- `moe_aux(model)`: the auxiliary losses and statistics of every MoE layer in a model, averaged over the layers;
  `usage_entropy`: how evenly a usage distribution spreads, from 0 (one expert) to 1 (uniform).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

__all__ = ["MoE", "capacity_mask", "expert_capacity", "expert_choice_routing", "load_balancing_loss", "moe_aux",
           "router_z_loss", "routing_entropies", "top_k_routing", "usage_entropy"]


def _check_logits(logits: Tensor) -> None:
    if not isinstance(logits, Tensor) or logits.dim() != 2 or not logits.is_floating_point() or 0 in logits.shape:
        raise ValueError(f"logits must be float router scores (tokens, experts); got "
                         f"{getattr(logits, 'dtype', type(logits).__name__)} of shape {tuple(getattr(logits, 'shape', ()))}")


def top_k_routing(logits: Tensor, k: int, *, renormalise: bool = True) -> tuple[Tensor, Tensor]:
    """(T, E) router logits -> (T, k) expert indices, best first, and their (T, k) gates: the softmax over all
    experts, restricted to the top k and, with `renormalise` (Mixtral), rescaled to sum to one. Switch (k = 1)
    keeps the raw probability: renormalised, a single gate is always 1 and the router gets no gradient."""
    _check_logits(logits)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= logits.shape[1]:
        raise ValueError(f"k={k!r} must be an int in [1, experts={logits.shape[1]}]")
    gates, indices = logits.float().softmax(dim=-1).topk(k, dim=-1)
    if renormalise:
        gates = gates / gates.sum(dim=-1, keepdim=True)
    return indices, gates.to(logits.dtype)


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


def _entropy(probabilities: Tensor) -> Tensor:
    """Entropy in nats over the last axis, with 0 · log 0 = 0."""
    return -(probabilities * probabilities.clamp_min(1e-12).log()).sum(dim=-1)


def usage_entropy(usage: Tensor) -> Tensor:
    """Entropy of expert usage (shares over the last axis, E of them) divided by log E: 1 when every expert gets
    the same share, 0 when one expert gets everything."""
    if not isinstance(usage, Tensor) or usage.dim() == 0 or usage.shape[-1] < 2:
        raise ValueError(f"usage must hold shares over at least 2 experts on its last axis; got shape "
                         f"{tuple(getattr(usage, 'shape', ()))}")
    shares = usage / usage.sum(dim=-1, keepdim=True)
    return _entropy(shares) / math.log(usage.shape[-1])


def routing_entropies(logits: Tensor, group: Tensor, groups: int) -> tuple[Tensor, Tensor]:
    """LIMoE's per-group entropies of the routing probabilities p(x) = softmax(logits): the local entropy, mean
    over a group's tokens of H(p(x)), and the global entropy, H of the group's mean p(x). Each is averaged over
    the groups present. A regulariser lowers the first (confident tokens) and raises the second (no group
    crowding onto a few experts)."""
    _check_logits(logits)
    if not isinstance(group, Tensor) or group.shape != logits.shape[:1] or group.is_floating_point():
        raise ValueError(f"group must be ({logits.shape[0]},) integer group ids; got "
                         f"{tuple(getattr(group, 'shape', ()))}")
    probabilities = logits.float().softmax(dim=-1)  # (T, E)
    members = F.one_hot(group, groups).float()  # (T, G)
    count = members.sum(dim=0)  # (G,)
    present = count > 0
    local = (members.T @ _entropy(probabilities))[present] / count[present]
    global_ = _entropy((members.T @ probabilities)[present] / count[present, None])
    return local.mean(), global_.mean()


class MoE(nn.Module):
    """(B, L, dim) -> (B, L, dim): top-k routing over `experts` SwiGLU experts of `hidden` units. With
    `capacity_factor`, assignments beyond an expert's capacity are dropped (their output is 0). The gates are
    renormalised over the k chosen experts (Mixtral) when `renormalise`, which defaults to k > 1; for k = 1 the
    gate is the router's probability (Switch), so the router learns from the main loss.

    `forward(x, group)` may label each token with one of `groups` ids (its modality or task): with
    `router_per_group` each group is routed by its own router over the same experts; either way `aux` reports per
    group. After each call `aux` holds the router's 'balance' and 'z' losses, LIMoE's 'local_entropy' and
    'global_entropy' (per group, averaged), the 'dropped' fraction of assignments, and, detached, the 'usage'
    share of each expert (E,) and each group's 'group_usage' (groups, E)."""

    def __init__(self, dim: int, hidden: int, experts: int, k: int = 2, *, capacity_factor: float | None = None,
                 groups: int = 1, router_per_group: bool = False, renormalise: bool | None = None) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("hidden", hidden), ("experts", experts), ("k", k), ("groups", groups)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive int")
        if k > experts:
            raise ValueError(f"k={k} is more than experts={experts}")
        if capacity_factor is not None:
            expert_capacity(1, experts, k, capacity_factor)  # checks the factor
        self.experts, self.k, self.capacity_factor = experts, k, capacity_factor
        self.groups, self.router_per_group = groups, bool(router_per_group)
        self.renormalise = k > 1 if renormalise is None else bool(renormalise)
        self.router = nn.Linear(dim, experts * (groups if router_per_group else 1), bias=False)
        self.gate_up = nn.Parameter(torch.randn(experts, 2 * hidden, dim) * dim**-0.5)
        self.down = nn.Parameter(torch.randn(experts, dim, hidden) * hidden**-0.5)
        self.aux: dict[str, Tensor] = {}

    def expert(self, e: int, x: Tensor) -> Tensor:
        """Expert e on tokens (n, dim): SiLU(x W_gate) * (x W_up), then W_down."""
        gate, up = F.linear(x, self.gate_up[e]).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, self.down[e])

    def _check_group(self, group: Tensor | None, x: Tensor) -> Tensor:
        """Group ids (B, L), or (B,) for whole sequences, as (T,); all zeros when not given."""
        if group is None:
            return torch.zeros(x.shape[0] * x.shape[1], dtype=torch.long, device=x.device)
        if not isinstance(group, Tensor) or group.is_floating_point() or group.dtype == torch.bool \
                or group.shape not in (x.shape[:1], x.shape[:2]):
            raise ValueError(f"group must be integer ids of shape (batch,) or (batch, length) = {tuple(x.shape[:2])}; "
                             f"got {getattr(group, 'dtype', type(group).__name__)} of shape "
                             f"{tuple(getattr(group, 'shape', ()))}")
        if group.numel() and (group.min() < 0 or group.max() >= self.groups):
            raise ValueError(f"group holds ids in [{group.min().item()}, {group.max().item()}]; expected ids in "
                             f"[0, groups={self.groups})")
        if group.dim() == 1:
            group = repeat(group, "b -> b l", l=x.shape[1])
        return rearrange(group, "b l -> (b l)").long()

    def route(self, tokens: Tensor, group: Tensor) -> Tensor:
        """(T, E) router logits: from the one router, or from the router of each token's group."""
        logits = self.router(tokens)
        if not self.router_per_group:
            return logits
        logits = rearrange(logits, "t (g e) -> t g e", g=self.groups)
        return logits[torch.arange(len(tokens), device=tokens.device), group]

    def forward(self, x: Tensor, group: Tensor | None = None) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.router.in_features or 0 in x.shape:
            raise ValueError(f"x must be (batch, length, dim={self.router.in_features}); got shape "
                             f"{tuple(getattr(x, 'shape', ()))}")
        group = self._check_group(group, x)
        tokens = rearrange(x, "b l d -> (b l) d")
        logits = self.route(tokens, group)  # (T, E)
        indices, gates = top_k_routing(logits, self.k, renormalise=self.renormalise)  # (T, k)
        keep = torch.ones_like(indices, dtype=torch.bool)
        if self.capacity_factor is not None:
            capacity = expert_capacity(len(tokens), self.experts, self.k, self.capacity_factor)
            keep = capacity_mask(indices, self.experts, capacity)
        self.aux = self._statistics(logits, indices, keep, group)
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

    def _statistics(self, logits: Tensor, indices: Tensor, keep: Tensor, group: Tensor) -> dict[str, Tensor]:
        local, global_ = routing_entropies(logits, group, self.groups)
        chosen = F.one_hot(indices, self.experts).float().sum(dim=1)  # (T, E) assignments of each token
        group_usage = F.one_hot(group, self.groups).float().T @ chosen  # (groups, E)
        return {"balance": load_balancing_loss(logits, indices), "z": router_z_loss(logits),
                "local_entropy": local, "global_entropy": global_, "dropped": 1 - keep.float().mean(),
                "usage": (chosen.sum(dim=0) / chosen.sum()).detach(),
                "group_usage": (group_usage / group_usage.sum(dim=1, keepdim=True).clamp_min(1)).detach()}

    @classmethod
    def from_hf(cls, block: nn.Module) -> MoE:
        """Our MoE with the weights of a Hugging Face `MixtralSparseMoeBlock` (no capacity, like theirs)."""
        experts, router = block.experts, block.gate
        model = cls(experts.hidden_dim, experts.intermediate_dim, experts.num_experts, router.top_k, renormalise=True)
        with torch.no_grad():
            model.router.weight.copy_(router.weight)
            model.gate_up.copy_(experts.gate_up_proj)
            model.down.copy_(experts.down_proj)
        return model


def moe_aux(model: nn.Module) -> dict[str, Tensor]:
    """Each of the MoE layers' `aux` entries in `model`, averaged over the layers (after a forward pass): add
    `moe_aux(model)["balance"]` to a loss to balance every layer at once."""
    layers = [module.aux for module in model.modules() if isinstance(module, MoE) and module.aux]
    if not layers:
        raise ValueError("model has no MoE layer that has run a forward pass yet")
    return {name: torch.stack([aux[name] for aux in layers]).mean(dim=0) for name in layers[0]}

"""Offline Long Range Arena style tasks: ListOps and a small Pathfinder, generated on the spot.

Both follow "Long Range Arena: A Benchmark for Efficient Transformers": the answer depends on
tokens far apart in a long sequence, so a model with a short reach cannot solve them.

Sample `i` of `split` is a pure function of (seed, split, i): its random numbers come from a
generator seeded by that triple, so the same triple gives the same sample whatever `n` is.

**ListOps** (`load("listops")`): nested prefix expressions over the digits 0-9, such as
`[MAX 2 9 [MIN 4 7 ] 0 ]` (value 9). The label is the value (10 classes). One token per word:

| id    | token          | meaning                                                    |
|-------|----------------|------------------------------------------------------------|
| 0     | `<pad>`        | padding after the expression, up to `max_length`            |
| 1-10  | `0` ... `9`    | a digit                                                    |
| 11-14 | `[MAX` `[MIN` `[MED` `[SM` | open an operator: maximum, minimum, lower median, sum mod 10 |
| 15    | `]`            | close the innermost operator                               |

Every operator takes 2..`max_args` arguments; MED is the lower median (the ((k-1)//2)-th smallest
of k arguments), so it is always one of them. Generation goes top down with the value chosen
first: the label is drawn uniformly, the root operator at random, then argument values that give
that value (MAX: one argument equal to it, the rest no larger; SM: the last argument fixes the sum;
...), recursively. Classes are therefore balanced and the top operator says nothing about the label.
The length is drawn uniformly from the lengths that `max_depth`/`max_args` can reach in
[min_length, max_length] and the tree is built to have exactly that many tokens. `evaluate` computes
the value back from the tokens alone (a stack machine), and the tests check every label with it.
Splits never share an expression: each one is hashed and belongs to train, val or test by its hash
(80/10/10); an expression hashed into another split is redrawn from the sample's own stream.

**Pathfinder** (`load("pathfinder")`): grayscale images with two dots and `distractors + 1` dashed,
curvy paths of equal length. Label 1 if the dots sit at the two ends of one path, 0 if they sit at one
end each of two different paths (dots 255, paths 128, background 0; images also come flattened as
pixel tokens 0..255, the form LRA feeds to sequence models). What keeps it hard:

- the two classes have the same number of paths, of path ends without a dot, and of ink (up to
  rounding): in a positive image one path carries both dots and `distractors` paths are empty, in a
  negative one two paths carry one dot each and `distractors - 1` are empty;
- the dot positions come from the same construction in both classes: the ends of a curvy walk. In a
  negative image that walk is not drawn; a path leaves each dot in the walk's own initial heading and
  wanders off, so near the dots the classes look alike and only following a path to its end decides;
- paths are dashed (3 pixels drawn, 1 left out), so a pixel flood fill stops at the first dash gap.

What keeps it exactly labelled: every path stays inside the image, consecutive drawn pixels of one
path are at most 2 apart (Chebyshev distance: a dash gap is one step), and pixels of different paths
(their 3x3 dots included) are at least MIN_SEPARATION = 4 apart. Paths are placed one at a time, each
taking the first of CANDIDATES random walks that keeps these rules; an image where some path finds
no place is redrawn whole, with the same label. So linking ink pixels at Chebyshev distance 3 or less
gives exactly the paths as connected components, and the label is "both dots in one component". The
tests recompute it that way from the pixels alone, with scipy's `ndimage.label`. Splits use different
random streams (continuous start points and headings); the tests check that no image repeats.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from einops import rearrange
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from course_lib.data.registry import SPLITS, check_int, check_split, register

_SALT_LISTOPS = 0x4C15_7095  # separates these random streams from any other dataset's
_SALT_PATHFINDER = 0x9A7F_1DE2
_MAX_ATTEMPTS = 2000


# --- ListOps ------------------------------------------------------------------------------------

OPERATORS = ("MAX", "MIN", "MED", "SM")
VOCAB = ("<pad>", *(str(d) for d in range(10)), *(f"[{op}" for op in OPERATORS), "]")
PAD, DIGIT_0, CLOSE = 0, 1, len(VOCAB) - 1
OPEN = {op: VOCAB.index(f"[{op}") for op in OPERATORS}  # operator name -> its token id
_SPLIT_BUCKETS = {"train": range(0, 8), "val": range(8, 9), "test": range(9, 10)}  # of 10 hash buckets


def encode(text: str) -> list[int]:
    """'[MAX 2 9 [MIN 4 7 ] 0 ]' -> token ids (words separated by spaces)."""
    words = text.split()
    unknown = [w for w in words if w not in VOCAB or w == VOCAB[PAD]]
    if unknown:
        raise ValueError(f"text={text!r} has words {unknown} outside the ListOps vocabulary {VOCAB[1:]}")
    return [VOCAB.index(w) for w in words]


def decode(tokens) -> str:
    """Token ids (a list or a 1-D tensor) -> '[MAX 2 9 [MIN 4 7 ] 0 ]', padding dropped."""
    return " ".join(VOCAB[int(t)] for t in tokens if int(t) != PAD)


def _apply(op: str, args: list[int]) -> int:
    if op == "MAX":
        return max(args)
    if op == "MIN":
        return min(args)
    if op == "MED":
        return sorted(args)[(len(args) - 1) // 2]
    return sum(args) % 10


def evaluate(tokens) -> int:
    """The value of a token sequence (padding ignored), computed with a stack; ValueError if malformed."""
    operator_of = {token: op for op, token in OPEN.items()}
    stack: list[tuple[str, list[int]]] = []
    value = None
    for token in (int(t) for t in tokens):
        if token == PAD:
            continue
        if value is not None:
            raise ValueError("tokens continue after the expression ended")
        if token in operator_of:
            stack.append((operator_of[token], []))
        elif DIGIT_0 <= token < DIGIT_0 + 10:
            if not stack:
                raise ValueError("a digit outside any operator")
            stack[-1][1].append(token - DIGIT_0)
        elif token == CLOSE:
            if not stack or not stack[-1][1]:
                raise ValueError("']' without an open operator that has arguments")
            op, args = stack.pop()
            result = _apply(op, args)
            if stack:
                stack[-1][1].append(result)
            else:
                value = result
        else:
            raise ValueError(f"token {token} is outside the vocabulary 0..{len(VOCAB) - 1}")
    if value is None:
        raise ValueError("the expression is not closed")
    return value


class _Stream:
    """Uniform numbers from a numpy generator, drawn in blocks: fast scalar draws in Python."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng, self.block = rng, []

    def uniform(self) -> float:
        if not self.block:
            self.block = self.rng.random(512).tolist()
        return self.block.pop()

    def integer(self, low: int, high: int) -> int:
        """Uniform in low..high inclusive."""
        return low + min(int(self.uniform() * (high - low + 1)), high - low)

    def shuffle(self, items: list) -> list:
        for i in range(len(items) - 1, 0, -1):
            j = self.integer(0, i)
            items[i], items[j] = items[j], items[i]
        return items


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """The maximal runs [low, high] (inclusive) of True in a 1-D bool array."""
    where = np.flatnonzero(mask)
    if len(where) == 0:
        return []
    breaks = np.flatnonzero(np.diff(where) > 1)
    lows = np.concatenate([where[:1], where[breaks + 1]])
    highs = np.concatenate([where[breaks], where[-1:]])
    return list(zip(lows.tolist(), highs.tolist()))


def _sumset(reachable: np.ndarray, runs: list[tuple[int, int]]) -> np.ndarray:
    """Which totals 0..M are x + p with x reachable and p in one of `runs` (prefix counts per run)."""
    top = len(reachable)
    before = np.concatenate([[0], np.cumsum(reachable)])  # before[i] = how many reachable below i
    totals = np.arange(top)
    out = np.zeros(top, dtype=bool)
    for low, high in runs:
        left = np.clip(totals - high, 0, top)
        right = np.clip(totals - low + 1, 0, top)
        out |= before[right] > before[left]
    return out


class _Lengths:
    """Which token counts an expression can have, by depth: exact-length trees without trial and error.

    `expr[d][L]`: some expression of depth <= d has L tokens. `parts[d][j][B]`: B tokens can be
    split into j arguments of a depth-d operator (each a digit or an expression of depth <= d-1).
    """

    def __init__(self, max_depth: int, max_args: int, max_length: int) -> None:
        top = max_length + 1
        self.max_args = max_args
        self.expr: list[list[bool]] = [[False] * top]  # depth 0: no operator expression
        self.parts: list[list[list[bool]]] = [[]]
        expr = np.zeros(top, dtype=bool)
        for _ in range(max_depth):
            argument = expr.copy()
            argument[1] = True  # a digit is one token
            runs = _runs(argument)
            sums = [np.arange(top) == 0]
            for _ in range(max_args):
                sums.append(_sumset(sums[-1], runs))
            expr = np.zeros(top, dtype=bool)
            for k in range(2, max_args + 1):
                expr[2:] |= sums[k][: top - 2]  # '[OP' + arguments + ']'
            self.expr.append(expr.tolist())
            self.parts.append([s.tolist() for s in sums])

    def reachable(self, depth: int, low: int, high: int) -> list[int]:
        return [length for length in range(low, high + 1) if self.expr[depth][length]]


def _expression(length: int, depth: int, value: int, table: _Lengths, stream: _Stream, out: list[int]) -> None:
    """Append the tokens of a random expression with exactly `length` tokens, depth <= `depth`, value `value`."""
    parts, budget = table.parts[depth], length - 2
    counts = [k for k in range(2, table.max_args + 1) if parts[k][budget]]
    count = counts[stream.integer(0, len(counts) - 1)]
    sizes = []
    for left in range(count, 0, -1):  # `left` arguments still to size, this one included
        rest = parts[left - 1]
        if left == 1:
            size = budget
        else:
            digit_fits = rest[budget - 1]
            size = 1 if digit_fits and stream.uniform() < 0.5 else _subexpression_size(
                budget, left, table.expr[depth - 1], rest, stream)
            if size is None:
                size = 1
        sizes.append(size)
        budget -= size
    stream.shuffle(sizes)

    op = OPERATORS[stream.integer(0, 3)]
    values = _argument_values(op, value, count, stream)
    out.append(OPEN[op])
    for size, v in zip(sizes, values):
        if size == 1:
            out.append(DIGIT_0 + v)
        else:
            _expression(size, depth - 1, v, table, stream, out)
    out.append(CLOSE)


def _subexpression_size(budget: int, left: int, expr: list[bool], rest: list[bool], stream: _Stream) -> int | None:
    """A random size for an expression argument such that the remaining arguments still fit."""
    high = budget - (left - 1)  # every other argument needs at least one token
    if high < 4:
        return None
    for _ in range(8):  # the reachable sizes are nearly an interval: a few guesses almost always land
        size = stream.integer(4, high)
        if expr[size] and rest[budget - size]:
            return size
    fits = [s for s in range(4, high + 1) if expr[s] and rest[budget - s]]
    return fits[stream.integer(0, len(fits) - 1)] if fits else None


def _argument_values(op: str, value: int, count: int, stream: _Stream) -> list[int]:
    """`count` argument values, in random order, on which `op` gives `value`."""
    if op == "SM":
        values = [stream.integer(0, 9) for _ in range(count - 1)]
        values.append((value - sum(values)) % 10)
    else:
        below = {"MAX": count - 1, "MIN": 0, "MED": (count - 1) // 2}[op]  # arguments <= value
        values = [value] + [stream.integer(0, value) for _ in range(below)]
        values += [stream.integer(value, 9) for _ in range(count - 1 - below)]
    return stream.shuffle(values)


def _bucket(tokens: list[int]) -> int:
    """The split bucket 0..9 of an expression: a stable hash of its tokens."""
    return int.from_bytes(hashlib.blake2b(bytes(tokens), digest_size=8).digest(), "little") % 10


def _listops_sample(index: int, split: str, seed: int, depth: int, lengths: list[int],
                    table: _Lengths) -> tuple[list[int], int]:
    """Expression `index` of `split`: its tokens (unpadded) and its value."""
    stream = _Stream(np.random.default_rng([_SALT_LISTOPS, seed, SPLITS.index(split), index]))
    label = stream.integer(0, 9)
    for _ in range(_MAX_ATTEMPTS):
        tokens: list[int] = []
        _expression(lengths[stream.integer(0, len(lengths) - 1)], depth, label, table, stream, tokens)
        if _bucket(tokens) in _SPLIT_BUCKETS[split]:
            return tokens, label
    raise ValueError(f"could not draw a {split} expression in {_MAX_ATTEMPTS} tries: too few distinct "
                     "expressions; allow longer ones (max_length) or more arguments (max_args)")


class ListOpsDataset(Dataset):
    """ListOps expressions held in memory: `inputs` (n, max_length) token ids padded with 0, `labels` (n,)."""

    num_classes = 10
    vocab_size = len(VOCAB)
    pad = PAD

    def __init__(self, inputs: Tensor, labels: Tensor, lengths: Tensor, split: str, max_depth: int) -> None:
        self.inputs, self.labels, self.lengths, self.split, self.max_depth = inputs, labels, lengths, split, max_depth

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.inputs[index], self.labels[index]

    @property
    def seq_len(self) -> int:
        return self.inputs.shape[1]

    def text(self, index: int) -> str:
        """Expression `index` as text: '[MAX 2 9 [MIN 4 7 ] 0 ]'."""
        return decode(self.inputs[index])

    def __repr__(self) -> str:
        return (f"ListOpsDataset(split={self.split!r}, n={len(self)}, length={self.seq_len}, "
                f"max_depth={self.max_depth}, vocab_size={self.vocab_size})")


@register("listops")
def load_listops(split: str, n: int = 1000, max_depth: int = 5, max_args: int = 5, min_length: int = 32,
                 max_length: int = 128, seed: int = 0) -> ListOpsDataset:
    """`n` ListOps expressions of `min_length`..`max_length` tokens (padded to `max_length`), label = value."""
    check_split(split)
    check_int("n", n, 1)
    check_int("max_depth", max_depth, 1)
    check_int("max_args", max_args, 2, " (an operator takes at least two arguments)")
    check_int("min_length", min_length, 4, " (the shortest expression, like '[MAX 1 2 ]', has 4 tokens)")
    check_int("max_length", max_length, min_length, " (min_length)")
    check_int("seed", seed, 0)
    longest = 1
    for _ in range(max_depth):  # tokens of the fullest tree
        longest = 2 + max_args * longest
        if longest >= min_length:
            break
    if longest < min_length:
        raise ValueError(f"min_length={min_length} is out of reach: with max_depth={max_depth} and "
                         f"max_args={max_args} the longest expression has {longest} tokens")
    table = _Lengths(max_depth, max_args, max_length)
    lengths = table.reachable(max_depth, min_length, max_length)
    if not lengths:
        raise ValueError(f"no expression with max_depth={max_depth} and max_args={max_args} has "
                         f"min_length={min_length}..max_length={max_length} tokens")
    samples = [_listops_sample(i, split, seed, max_depth, lengths, table) for i in range(n)]
    inputs = torch.full((n, max_length), PAD, dtype=torch.long)
    for row, (tokens, _) in enumerate(samples):
        inputs[row, : len(tokens)] = torch.tensor(tokens)
    labels = torch.tensor([label for _, label in samples], dtype=torch.long)
    sizes = torch.tensor([len(tokens) for tokens, _ in samples], dtype=torch.long)
    return ListOpsDataset(inputs, labels, sizes, split, max_depth)


# --- Pathfinder -----------------------------------------------------------------------------------

PATH_LEVEL, DOT_LEVEL = 128, 255  # pixel values (uint8) of path ink and of the dots
DASH, GAP = 3, 1  # steps drawn, then steps left out, along every path
MIN_SEPARATION = 4  # Chebyshev distance between pixels of different paths, at least
CANDIDATES = 16  # walks tried for each path before the whole image is redrawn
_MIN_DOT_DISTANCE = 5  # between the two dots' centres: two separate 3x3 blobs
_MAX_TURN = 0.2  # radians per step: paths curve but do not curl up
_TURN_DRIFT = 0.08  # how much the turn rate may change per step
_SQUARE = torch.tensor([(dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1)])  # (9, 2): a 3x3 dot
_CHUNK_IMAGES = 2000  # images rendered at once, to bound memory


def _walks(u: Tensor, heading: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """Unit-step walks from the origin whose turn rate drifts: (..., steps, 2) points and last heading.

    `u` (..., steps) uniforms: u[..., 0] sets the first turn rate, the rest how it drifts.
    """
    turn = (2 * u[..., 0] - 1) * _MAX_TURN
    points = [torch.zeros(*u.shape[:-1], 2)]
    for t in range(1, steps):
        points.append(points[-1] + torch.stack([torch.cos(heading), torch.sin(heading)], dim=-1))
        if t < steps - 1:
            heading = heading + turn
            turn = (turn + _TURN_DRIFT * (2 * u[..., t] - 1)).clamp(-_MAX_TURN, _MAX_TURN)
    return torch.stack(points, dim=-2), heading


def _placed_anywhere(u: Tensor, steps: int, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Walks with a random heading, started uniformly where the whole walk stays in [1, size-2]^2.

    `u` (..., 3 + steps): 2 for the start, 1 for the heading, `steps` for the turning. Returns the
    (..., steps, 2) points, the first and the last heading. A walk too wide to fit fails the bounds check.
    """
    heading = u[..., 2] * 2 * torch.pi
    offsets, last = _walks(u[..., 3:], heading, steps)
    low = 1 - offsets.min(dim=-2).values
    high = size - 2 - offsets.max(dim=-2).values
    start = low + u[..., :2] * (high - low)
    return start[..., None, :] + offsets, heading, last


def _pixels(points: Tensor, dot_start: Tensor, dot_end: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Flat pixel indices of a path's dashes (..., D) and of its dots (..., 18) with a mask of the drawn
    dots, and whether the path stays in [1, size-2]^2 (...)."""
    pixel = points.round().long()
    inside = ((pixel >= 1) & (pixel <= size - 2)).flatten(-2).all(dim=-1)
    pixel = pixel.clamp(1, size - 2)
    drawn = (torch.arange(points.shape[-2]) % (DASH + GAP)) < DASH
    dashes = pixel[..., drawn, :]
    ends = pixel[..., [0, -1], None, :] + _SQUARE  # (..., 2, 9, 2)
    spots = ends.flatten(-3, -2)  # (..., 18, 2)
    spot_mask = torch.stack([dot_start, dot_end], dim=-1).repeat_interleave(9, dim=-1).expand(spots.shape[:-1])
    flat = lambda p: p[..., 1] * size + p[..., 0]  # noqa: E731
    return flat(dashes), flat(spots), spot_mask, inside


def _zone(occupied: Tensor, size: int) -> Tensor:
    """(B, H*W) bool: pixels closer than MIN_SEPARATION (Chebyshev) to an occupied pixel."""
    grid = occupied.view(-1, size, size)
    for dim in (1, 2):  # a square neighbourhood is a row neighbourhood of a column neighbourhood
        grown = grid.clone()
        for shift in range(1, MIN_SEPARATION):
            grown.narrow(dim, shift, size - shift).logical_or_(grid.narrow(dim, 0, size - shift))
            grown.narrow(dim, 0, size - shift).logical_or_(grid.narrow(dim, shift, size - shift))
        grid = grown
    return grid.flatten(1)


def _pick(candidates: Tensor, dot_start: Tensor, dot_end: Tensor, forbidden: Tensor, size: int,
          ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The first of C candidate paths (B, C, steps, 2) that stays inside and off `forbidden` (B, H*W).

    Returns its dash and dot pixels and dot mask, as `_pixels` does, and (B,) whether one was found.
    """
    c = candidates.shape[1]
    dashes, spots, spot_mask, inside = _pixels(candidates, dot_start[:, None].expand(-1, c),
                                               dot_end[:, None].expand(-1, c), size)
    hits = forbidden[:, None].expand(-1, c, -1)
    clash = hits.gather(2, dashes).any(dim=2) | (hits.gather(2, spots) & spot_mask).any(dim=2)
    valid = inside & ~clash  # (B, C)
    first = valid.long().argmax(dim=1)  # the first valid candidate (argmax returns the first maximum)
    take = lambda x: x[torch.arange(len(first)), first]  # noqa: E731
    return take(dashes), take(spots), take(spot_mask), valid.any(dim=1)


def _draw(u: Tensor, positive: Tensor, distractors: int, steps: int, size: int) -> tuple[Tensor, Tensor]:
    """Draw B images from uniforms (B, distractors + 2, CANDIDATES, 3 + steps): uint8 (B, H*W), (B,) ok.

    Walk slot 0 gives the dots (the ends of a walk), slot 1 the path from the first dot of a negative
    image, slot j + 1 path j >= 1 (in a negative image, path 1 leaves the second dot).
    """
    b = u.shape[0]
    between, first_heading, last_heading = _placed_anywhere(u[:, 0], steps, size)  # (B, C, ...)
    gap = (between[:, :, 0].round() - between[:, :, -1].round()).abs().max(dim=-1).values
    usable = gap >= _MIN_DOT_DISTANCE
    usable &= ((between.round() >= 1) & (between.round() <= size - 2)).flatten(2).all(dim=2)
    choice = usable.long().argmax(dim=1)
    rows = torch.arange(b)
    between = between[rows, choice]  # (B, steps, 2)
    ends = between[:, [0, -1]]  # (B, 2, 2): where the dots go, in both classes
    ok = usable.any(dim=1)
    # Paths that leave the dots of a negative image: the between-walk's headings, their own turning.
    arm_a, _ = _walks(u[:, 1, :, 3:], first_heading[rows, choice][:, None].expand(-1, CANDIDATES), steps)
    arm_b, _ = _walks(u[:, 2, :, 3:], last_heading[rows, choice][:, None].expand(-1, CANDIDATES) + torch.pi, steps)
    arm_a, arm_b = arm_a + ends[:, None, None, 0], arm_b + ends[:, None, None, 1]
    others = _placed_anywhere(u[:, 2:], steps, size)[0]  # (B, distractors, C, steps, 2)

    pixels = torch.zeros(b, size * size)
    dot_pixels = torch.zeros(b, size * size)
    no, yes, neg = torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool), ~positive
    # A negative image's second dot: path 0, which carries the first, must keep away from it.
    second_dot = (ends[:, 1].round().long()[:, None] + _SQUARE).clamp(0, size - 1)
    forbidden = torch.zeros(b, size * size)
    forbidden.scatter_add_(1, second_dot[..., 1] * size + second_dot[..., 0], neg[:, None].float().expand(-1, 9))
    forbidden = _zone(forbidden > 0, size)
    flag = positive[:, None, None, None]
    for j in range(distractors + 1):
        if j == 0:
            candidates = torch.where(flag, between[:, None].expand(-1, CANDIDATES, -1, -1), arm_a)
            dot_start, dot_end = yes, positive
        elif j == 1:
            candidates = torch.where(flag, others[:, 0], arm_b)
            dot_start, dot_end = neg, no
        else:
            candidates, dot_start, dot_end = others[:, j - 1], no, no
        dashes, spots, spot_mask, found = _pick(candidates, dot_start, dot_end, forbidden, size)
        ok &= found
        pixels.scatter_add_(1, dashes, torch.ones(dashes.shape))
        dot_pixels.scatter_add_(1, spots, spot_mask.float())
        if j < distractors:
            forbidden = _zone((pixels > 0) | (dot_pixels > 0), size)
    image = torch.where(dot_pixels > 0, DOT_LEVEL, torch.where(pixels > 0, PATH_LEVEL, 0))
    return image.to(torch.uint8), ok


def _check_pathfinder(split: str, n: int, size: int, distractors: int, path_length: int | None, seed: int) -> None:
    check_split(split)
    check_int("n", n, 1)
    check_int("size", size, 16, " (smaller images leave no room for separate paths)")
    check_int("distractors", distractors, 1, " (a negative image needs a second dotted path)")
    if distractors > 8:
        raise ValueError(f"distractors={distractors} must be at most 8")
    if path_length is not None:
        check_int("path_length", path_length, 2 * _MIN_DOT_DISTANCE,
                   f" (its two ends must be able to lie {_MIN_DOT_DISTANCE} pixels apart)")
        if path_length > 2 * size:
            raise ValueError(f"path_length={path_length} must be at most 2 * size={2 * size}")
    check_int("seed", seed, 0)


def render_pathfinder(indices, *, split: str = "train", size: int = 32, distractors: int = 2,
                      path_length: int | None = None, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Images (N, 1, size, size) uint8 and labels (N,) of samples `indices`: the vectorised core."""
    _check_pathfinder(split, 1, size, distractors, path_length, seed)
    steps = _path_steps(size, path_length)
    indices = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
    split_id = SPLITS.index(split)
    rngs = [np.random.default_rng([_SALT_PATHFINDER, seed, split_id, int(i)]) for i in indices]
    positive = torch.tensor([rng.random() < 0.5 for rng in rngs], dtype=torch.bool)  # kept on retries
    shape = (distractors + 2, CANDIDATES, 3 + steps)
    images = torch.zeros(len(rngs), size * size, dtype=torch.uint8)
    todo = torch.arange(len(rngs))
    for attempt in range(_MAX_ATTEMPTS):
        u = torch.from_numpy(np.stack([rngs[i].random(shape) for i in todo.tolist()])).float()
        drawn, ok = _draw(u, positive[todo], distractors, steps, size)
        images[todo[ok]] = drawn[ok]
        todo = todo[~ok]
        if len(todo) == 0:
            return rearrange(images, "n (h w) -> n 1 h w", h=size), positive.long()
        if attempt == 20 and len(todo) == len(rngs):
            break  # nothing fits at all: say so now rather than after every attempt
    raise ValueError(f"could not place distractors={distractors} paths of path_length={steps} apart at "
                     f"size={size}; use fewer distractors or shorter paths")


def _path_steps(size: int, path_length: int | None) -> int:
    return round(0.625 * size) if path_length is None else path_length


class PathfinderDataset(Dataset):
    """Pathfinder images in memory; `dataset[i]` is (image (1, H, W) float in [0, 1], label).

    `tokens` gives the same pixels as (n, H*W) int64 in 0..255, row by row, for sequence models;
    `as_tokens()` pairs them with the labels.
    """

    num_classes = 2
    vocab_size = 256

    def __init__(self, pixels: Tensor, labels: Tensor, split: str, distractors: int) -> None:
        self.pixels, self.labels, self.split, self.distractors = pixels, labels, split, distractors

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.pixels[index].float() / 255, self.labels[index]

    @property
    def size(self) -> int:
        return self.pixels.shape[-1]

    @property
    def images(self) -> Tensor:
        """(N, 1, H, W) float images in [0, 1]."""
        return self.pixels.float() / 255

    @property
    def tokens(self) -> Tensor:
        """(N, H*W) int64 pixel tokens in 0..255."""
        return rearrange(self.pixels, "n 1 h w -> n (h w)").long()

    def as_tokens(self) -> TensorDataset:
        """(tokens (H*W,) int64, label) pairs, the sequence form LRA trains on."""
        return TensorDataset(self.tokens, self.labels)

    def __repr__(self) -> str:
        return f"PathfinderDataset(split={self.split!r}, n={len(self)}, size={self.size}, distractors={self.distractors})"


@register("pathfinder")
def load_pathfinder(split: str, n: int = 1000, size: int = 32, distractors: int = 2,
                    path_length: int | None = None, seed: int = 0) -> PathfinderDataset:
    """`n` images `size` x `size`: are the two dots joined by one dashed path? Every image has
    `distractors + 1` paths of `path_length` points one pixel apart (default 5/8 of `size`)."""
    _check_pathfinder(split, n, size, distractors, path_length, seed)
    chunk = max(1, _CHUNK_IMAGES * 32 * 32 // (size * size))
    parts = [render_pathfinder(range(start, min(start + chunk, n)), split=split, size=size,
                               distractors=distractors, path_length=path_length, seed=seed)
             for start in range(0, n, chunk)]
    pixels = torch.cat([p[0] for p in parts])
    labels = torch.cat([p[1] for p in parts])
    return PathfinderDataset(pixels, labels, split, distractors)

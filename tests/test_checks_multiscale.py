"""The checkers of notebook 13_multiscale_sequences: right answers pass, plausible wrong ones fail with a message
naming the mistake.

Each correct answer is written here the way a learner would, independently of the packaged references.
"""

from __future__ import annotations

import torch
from checking import fails, passes

from course_lib.checks import multiscale as check

# --- causal_moving_average ------------------------------------------------------------------------------


def causal_moving_average(x, window):
    out = torch.empty_like(x)
    for t in range(x.shape[1]):
        out[:, t] = x[:, max(0, t - window + 1) : t + 1].mean(dim=1)
    return out


def test_causal_moving_average_right(capsys):
    passes(check.causal_moving_average, causal_moving_average, capsys)


def test_causal_moving_average_by_convolution(capsys):
    def by_convolution(x, window):
        channels = x.shape[-1]
        padded = torch.nn.functional.pad(x.transpose(1, 2), (window - 1, 0))
        sums = torch.nn.functional.conv1d(padded, torch.ones(channels, 1, window, dtype=x.dtype), groups=channels)
        counts = torch.arange(1, x.shape[1] + 1, dtype=x.dtype).clamp(max=window)
        return (sums / counts).transpose(1, 2)

    passes(check.causal_moving_average, by_convolution, capsys)


def test_causal_moving_average_centred(capsys):
    def centred(x, window):
        out = torch.empty_like(x)
        for t in range(x.shape[1]):
            out[:, t] = x[:, max(0, t - window // 2) : t + (window - 1) // 2 + 1].mean(dim=1)
        return out

    fails(check.causal_moving_average, centred, capsys, "reads tokens after t")


def test_causal_moving_average_divides_by_window(capsys):
    def zero_padded(x, window):
        out = torch.empty_like(x)
        for t in range(x.shape[1]):
            out[:, t] = x[:, max(0, t - window + 1) : t + 1].sum(dim=1) / window
        return out

    fails(check.causal_moving_average, zero_padded, capsys, "min\\(window, t \\+ 1\\)")


def test_causal_moving_average_off_by_one(capsys):
    def one_too_many(x, window):
        return causal_moving_average(x, window + 1)

    fails(check.causal_moving_average, one_too_many, capsys, "window \\+ 1 positions")


# --- multiscale_mask ------------------------------------------------------------------------------------


def multiscale_mask(length, radii):
    mask = torch.zeros(len(radii), length, length, dtype=torch.bool)
    for h, r in enumerate(radii):
        for i in range(length):
            for j in range(length):
                mask[h, i, j] = r is None or abs(i - j) <= r
    return mask


def test_multiscale_mask_right(capsys):
    passes(check.multiscale_mask, multiscale_mask, capsys)


def test_multiscale_mask_strict(capsys):
    def strict(length, radii):
        return torch.stack([(torch.arange(length)[:, None] - torch.arange(length)).abs() < (r or length)
                            for r in radii])

    fails(check.multiscale_mask, strict, capsys, "distance exactly r")


def test_multiscale_mask_none_as_zero(capsys):
    def none_as_zero(length, radii):
        return multiscale_mask(length, [0 if r is None else r for r in radii])

    fails(check.multiscale_mask, none_as_zero, capsys, "global head")


def test_multiscale_mask_one_sided(capsys):
    def one_sided(length, radii):
        return multiscale_mask(length, radii).tril()

    fails(check.multiscale_mask, one_sided, capsys, "only the past")


# --- residual_quantize ----------------------------------------------------------------------------------


def residual_quantize(x, codebooks):
    residual, codes = x.clone(), []
    for book in codebooks:
        distances = ((residual[:, None, :] - book[None, :, :]) ** 2).sum(dim=-1)   # (N, K)
        code = distances.argmin(dim=1)
        codes.append(code)
        residual = residual - book[code]
    return torch.stack(codes, dim=1)


def test_residual_quantize_right(capsys):
    passes(check.residual_quantize, residual_quantize, capsys)


def test_residual_quantize_without_residual(capsys):
    def each_level_on_x(x, codebooks):
        return torch.stack([torch.cdist(x, book).argmin(dim=1) for book in codebooks], dim=1)

    fails(check.residual_quantize, each_level_on_x, capsys, "quantises x itself")


def test_residual_quantize_by_dot_product(capsys):
    def by_dot_product(x, codebooks):
        residual, codes = x, []
        for book in codebooks:
            code = (residual @ book.T).argmax(dim=1)
            codes.append(code)
            residual = residual - book[code]
        return torch.stack(codes, dim=1)

    fails(check.residual_quantize, by_dot_product, capsys, "smallest Euclidean distance")


def test_residual_quantize_adds_the_codeword(capsys):
    def adds(x, codebooks):
        residual, codes = x, []
        for book in codebooks:
            code = torch.cdist(residual, book).argmin(dim=1)
            codes.append(code)
            residual = residual + book[code]
        return torch.stack(codes, dim=1)

    fails(check.residual_quantize, adds, capsys, "subtract it")

"""The forecasters of notebook 14: PatchTST against Hugging Face's, the others against naive computations written
here loop by loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import randomised
from course_lib.models.forecasting import (
    DecoderForecaster,
    DecoderForecasterConfig,
    PatchTST,
    PatchTSTConfig,
    patchify_series,
    standardise,
)
from course_lib.models.multiscale_forecasting import (
    AdaptivePathways,
    CoarseToFine,
    CoarseToFineConfig,
    MultiResolution,
    MultiScaleConfig,
    MultiScaledEmbedding,
    SAMformer,
    top_k_weights,
)

transformers = pytest.importorskip("transformers")


def naive_standardise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, L, C): loops over windows and channels."""
    out, locs, scales = torch.empty_like(x), torch.empty(x.shape[0], 1, x.shape[2]), torch.empty(x.shape[0], 1, x.shape[2])
    for b in range(x.shape[0]):
        for c in range(x.shape[2]):
            values = x[b, :, c].double()
            mean = values.sum() / len(values)
            variance = ((values - mean) ** 2).sum() / len(values)
            locs[b, 0, c], scales[b, 0, c] = mean, (variance + 1e-5).sqrt()
            out[b, :, c] = ((values - mean) / (variance + 1e-5).sqrt()).float()
    return out, locs, scales


# --- building blocks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("length, patch, stride", [(16, 4, 4), (17, 4, 4), (20, 6, 3), (9, 9, 1), (30, 8, 5)])
def test_patchify_series_ends_at_the_last_value(length, patch, stride):
    x = torch.randn(2, 3, length)
    patches = patchify_series(x, patch, stride)
    expected = []
    end = length
    while end - patch >= 0:
        expected.insert(0, x[..., end - patch : end])
        end -= stride
    assert torch.equal(patches, torch.stack(expected, dim=-2))


def test_standardise_matches_a_loop():
    x = torch.randn(4, 23, 3) * 5 + 7
    for ours, theirs in zip(standardise(x), naive_standardise(x)):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


# --- PatchTST ------------------------------------------------------------------------------------------


def hf_patchtst(context, horizon, patch, stride, channels, pre_norm, positions):
    config = transformers.PatchTSTConfig(
        context_length=context, prediction_length=horizon, patch_length=patch, patch_stride=stride, d_model=32,
        num_hidden_layers=2, num_attention_heads=4, ffn_dim=48, norm_type="layernorm", pre_norm=pre_norm,
        positional_encoding_type=positions, pooling_type=None, loss="mse", num_input_channels=channels, scaling="std")
    torch.manual_seed(0)
    return randomised(transformers.PatchTSTForPrediction(config)).eval()


@pytest.mark.parametrize("pre_norm", [True, False])
@pytest.mark.parametrize("positions", ["random", "sincos"])
@pytest.mark.parametrize("context, patch, stride, channels", [(45, 8, 8, 3), (45, 8, 5, 1), (32, 4, 2, 2)])
def test_patchtst_equals_hugging_face(pre_norm, positions, context, patch, stride, channels):
    """In float32 (1e-4, the weights are large) and float64 (1e-10), where the two compute the same sums."""
    reference = hf_patchtst(context, 7, patch, stride, channels, pre_norm, positions)
    ours = PatchTST.from_hf(reference)
    x = torch.randn(5, context, channels) * 3 + 2
    with torch.no_grad():
        expected = reference(past_values=x).prediction_outputs
        torch.testing.assert_close(ours(x), expected, atol=1e-4, rtol=1e-4)
        if channels == 1:  # a univariate window may come without its channel axis
            torch.testing.assert_close(ours(x[..., 0]), expected[..., 0], atol=1e-4, rtol=1e-4)
        expected = reference.double()(past_values=x.double()).prediction_outputs
        torch.testing.assert_close(ours.double()(x.double()), expected, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("option, value", [("norm_type", "batchnorm"), ("use_cls_token", True),
                                           ("pooling_type", "mean"), ("scaling", "mean")])
def test_patchtst_from_hf_refuses_what_it_did_not_build(option, value):
    options = {"norm_type": "layernorm", "pooling_type": None, **{option: value}}
    config = transformers.PatchTSTConfig(context_length=32, prediction_length=4, patch_length=8, patch_stride=8,
                                         loss="mse", **options)
    with pytest.raises(ValueError, match=option):
        PatchTST.from_hf(transformers.PatchTSTForPrediction(config))


def test_patchtst_is_channel_independent_and_scale_free():
    """In float64, with variances that make the 1e-5 added to each one negligible."""
    model = randomised(PatchTST(PatchTSTConfig(context=32, horizon=8, patch=8, stride=4, dim=16, heads=2))).double()
    x = torch.randn(3, 32, 4, dtype=torch.float64) * 1000  # a variance so large that the 1e-5 is lost in it
    with torch.no_grad():
        together = model(x)
        for c in range(4):
            torch.testing.assert_close(model(x[..., c]), together[..., c], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(x * 100 - 7), together * 100 - 7, atol=1e-6, rtol=1e-8)


@pytest.mark.parametrize("bad", [dict(patch=40), dict(dim=30, heads=4), dict(dim=12, heads=4, positions="rope"), dict(positions="sincos"), dict(horizon=0),
                                 dict(norm_position="sub")])
def test_patchtst_config_rejects_bad_arguments(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        PatchTSTConfig(**{"context": 32, "horizon": 8, **bad})


def test_patchtst_rejects_the_wrong_length():
    model = PatchTST(PatchTSTConfig(context=32, horizon=8))
    with pytest.raises(ValueError, match="context=32"):
        model(torch.randn(2, 31))
    with pytest.raises(ValueError, match="contexts"):
        model(torch.randn(2, 32, 1, 1))


# --- the decoder-only forecaster -----------------------------------------------------------------------


def decoder() -> DecoderForecaster:
    return randomised(DecoderForecaster(DecoderForecasterConfig(patch=4, dim=16, depth=2, heads=2, max_patches=12)))


def test_decoder_predictions_never_read_later_patches():
    model = decoder()
    x = torch.randn(2, 10, 4)
    changed = x.clone()
    changed[:, 6:] = torch.randn(2, 4, 4) * 10
    with torch.no_grad():
        torch.testing.assert_close(model.next_patches(x)[:, :6], model.next_patches(changed)[:, :6])
        assert not torch.allclose(model.next_patches(x)[:, 6:], model.next_patches(changed)[:, 6:])


def test_decoder_loss_is_next_patch_error_of_each_series_standardised_by_its_first_half():
    model = decoder()
    series = torch.randn(3, 32) * 4 + 9 + torch.linspace(0, 20, 32)  # a trend: the halves' statistics differ
    _, loc, scale = naive_standardise(series[:, :16, None])
    patches = ((series - loc[..., 0]) / scale[..., 0]).reshape(3, 8, 4)
    with torch.no_grad():
        expected = F.mse_loss(model.next_patches(patches[:, :-1]), patches[:, 1:])
        torch.testing.assert_close(model.loss(model(series)), expected, atol=1e-6, rtol=1e-5)


def test_decoder_forecast_rolls_out_patch_by_patch():
    model = decoder()
    context = torch.randn(2, 16) * 2 + 1
    with torch.no_grad():
        x, loc, scale = naive_standardise(context[..., None])
        patches = x[..., 0].reshape(2, 4, 4)
        for _ in range(4):  # 14 values need 4 patches; only the last 12 patches are ever read
            patches = torch.cat([patches, model.next_patches(patches[:, -12:])[:, -1:]], dim=1)
        expected = patches[:, 4:].reshape(2, 16)[:, :14] * scale[..., 0] + loc[..., 0]
        torch.testing.assert_close(model.forecast(context, 14), expected, atol=1e-5, rtol=1e-5)


def test_decoder_rejects_a_length_that_is_not_whole_patches():
    with pytest.raises(ValueError, match="multiple of patch=4"):
        decoder().forecast(torch.randn(2, 15), 4)


# --- multi-scale forecasters ---------------------------------------------------------------------------


def test_top_k_weights_keep_the_largest_and_sum_to_one():
    logits = torch.tensor([[0.1, 2.0, -1.0, 1.0], [3.0, 3.5, 0.0, -2.0]])
    weights = top_k_weights(logits, 2)
    expected = torch.zeros(2, 4)
    expected[0, [1, 3]] = torch.tensor([2.0, 1.0]).softmax(0)
    expected[1, [0, 1]] = torch.tensor([3.0, 3.5]).softmax(0)
    torch.testing.assert_close(weights, expected)


def multiscale_config() -> MultiScaleConfig:
    return MultiScaleConfig(context=32, horizon=6, patch_sizes=(4, 8, 16), top_k=2, dim=16, heads=2)


def test_adaptive_pathways_is_the_routed_sum_of_single_scale_forecasters():
    model = randomised(AdaptivePathways(multiscale_config()))
    x = torch.randn(5, 32) * 3
    with torch.no_grad():
        series, loc, scale = naive_standardise(x[..., None])
        series = series[..., 0]
        spectrum = torch.stack([torch.tensor([abs(sum(series[b, t].item() * torch.exp(torch.tensor(-2j * torch.pi * f * t / 32)).item()
                                                      for t in range(32))) for f in range(1, 17)]) for b in range(5)])
        weights = top_k_weights(model.router(spectrum.float() / 32 ** 0.5), 2)
        forecasts = [head(branch(series).flatten(1)) for branch, head in zip(model.branches, model.heads)]
        expected = sum(weights[:, e, None] * forecasts[e] for e in range(3)) * scale[..., 0] + loc[..., 0]
        torch.testing.assert_close(model(x), expected, atol=1e-4, rtol=1e-4)
        assert ((model.last_weights > 0).sum(dim=1) == 2).all()


def test_multiresolution_reads_every_branch():
    model = randomised(MultiResolution(multiscale_config()))
    x = torch.randn(4, 32, 2)
    with torch.no_grad():
        series, loc, scale = naive_standardise(x)
        flat = series.permute(0, 2, 1).reshape(8, 32)
        tokens = torch.cat([branch(flat).flatten(1) for branch in model.branches], dim=1)
        expected = model.head(tokens).reshape(4, 2, 6).permute(0, 2, 1) * scale + loc
        torch.testing.assert_close(model(x), expected, atol=1e-4, rtol=1e-4)


def test_multiscale_config_rejects_bad_arguments():
    with pytest.raises(ValueError, match="divide context"):
        MultiScaleConfig(context=30, horizon=4, patch_sizes=(4, 8))
    with pytest.raises(ValueError, match="top_k"):
        MultiScaleConfig(context=32, horizon=4, patch_sizes=(4, 8), top_k=3)


def test_coarse_to_fine_refines_each_scale_from_the_last():
    config = CoarseToFineConfig(context=16, horizon=8, scales=(2, 1), patch=2, dim=16, heads=2)
    model = randomised(CoarseToFine(config))
    x = torch.randn(3, 16) * 2 + 5
    with torch.no_grad():
        series, loc, scale = naive_standardise(x[..., None])
        series = series[..., 0]
        previous = torch.zeros(3, 4)
        expected = []
        for index, factor in enumerate((2, 1)):
            coarse = series.reshape(3, 16 // factor, factor).mean(-1)
            if index:  # linear upsampling by 2 with half-pixel centres, edges held
                positions = (torch.arange(8) + 0.5) / 2 - 0.5
                left = positions.floor().clamp(0, 3).long()
                right = (left + 1).clamp(max=3)
                frac = (positions - left).clamp(0, 1)
                prior = previous[:, left] * (1 - frac) + previous[:, right] * frac
            else:
                prior = previous
            sequence = torch.cat([coarse, prior], dim=1)
            sequence = sequence - sequence.mean(dim=1, keepdim=True)
            tokens = model.encoder.embed(sequence.reshape(3, -1, 2)) + model.scale_embedding[index]
            for block in model.encoder.blocks:
                tokens = block(tokens, rope=model.encoder.rope)
            previous = prior + model.heads[index](tokens.flatten(1))
            expected.append(previous * scale[..., 0] + loc[..., 0])
        forecasts = model(x)
        for ours, theirs in zip(forecasts, expected):
            torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(model.forecast(x), expected[-1], atol=1e-4, rtol=1e-4)
        y = torch.randn(3, 8) * 2 + 5
        losses = [F.mse_loss(f, y.reshape(3, -1, s).mean(-1)) for f, s in zip(expected, (2, 1))]
        torch.testing.assert_close(model.loss(forecasts, y), sum(losses) / 2, atol=1e-5, rtol=1e-5)
        y3, x3 = torch.randn(3, 8, 2), torch.randn(3, 16, 2)  # with a channel axis, each scale pools over time
        pooled = [y3.reshape(3, -1, s, 2).mean(2) for s in (2, 1)]
        expected3 = sum(F.mse_loss(f, p) for f, p in zip(model(x3), pooled)) / 2
        torch.testing.assert_close(model.loss(model(x3), y3), expected3, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scales", [(1, 2), (2, 2, 1), (4, 2)])
def test_coarse_to_fine_scales_must_decrease_to_one(scales):
    with pytest.raises(ValueError, match="scales"):
        CoarseToFineConfig(context=32, horizon=16, scales=scales, patch=2)


def test_channel_attention_matches_a_loop_over_channels():
    model = randomised(SAMformer(12, 4, key_dim=6))
    x = torch.randn(2, 12, 5) * 3 + 1
    with torch.no_grad():
        series, loc, scale = naive_standardise(x)
        expected = torch.empty(2, 4, 5)
        for b in range(2):
            tokens = [series[b, :, c] for c in range(5)]
            for c in range(5):
                scores = torch.stack([model.to_q(tokens[c]) @ model.to_k(tokens[j]) / 6 ** 0.5 for j in range(5)])
                mixed = tokens[c] + sum(w * model.to_v(tokens[j]) for j, w in enumerate(scores.softmax(0)))
                expected[b, :, c] = model.out(mixed) * scale[b, 0, c] + loc[b, 0, c]
        torch.testing.assert_close(model(x), expected, atol=1e-4, rtol=1e-4)
        permutation = torch.tensor([3, 0, 4, 1, 2])
        torch.testing.assert_close(model(x[..., permutation]), expected[..., permutation], atol=1e-4, rtol=1e-4)


def test_multiscaled_embedding_matches_its_formula():
    embedding = randomised(MultiScaledEmbedding(8, low=-3, high=3, temperature=0.7))
    x = torch.tensor([0.0, 1e-4, -2e-3, 0.5, 1.0, 42.0, -3e3, 1e5])
    with torch.no_grad():
        for value, vector in zip(x, embedding(x)):
            magnitude = torch.log10(value.abs().clamp_min(1e-3))
            weights = torch.tensor([-(magnitude - k) ** 2 / 0.7 for k in range(-3, 4)]).softmax(0)
            expected = sum(weights[i] * (value / 10.0 ** k * embedding.slopes[i] + embedding.offsets[i])
                           for i, k in enumerate(range(-3, 4)))
            torch.testing.assert_close(vector, expected, atol=1e-5, rtol=1e-5)
    weights = embedding.scale_weights(torch.tensor([2e-3, 3.0, 2e2]))
    assert weights.argmax(-1).tolist() == [0, 3, 5]  # the powers of ten 1e-3, 1e0 and 1e2 (index k + 3)


def test_multiscaled_embedding_rejects_bad_arguments():
    with pytest.raises(ValueError, match="low"):
        MultiScaledEmbedding(4, low=2, high=1)
    with pytest.raises(ValueError, match="temperature"):
        MultiScaledEmbedding(4, temperature=0)
    with pytest.raises(ValueError, match="float"):
        MultiScaledEmbedding(4)(torch.tensor([1, 2]))

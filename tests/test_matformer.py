"""MatFormer's nested MLPs: nesting changes nothing, a granularity uses the first hidden units, an extracted model
equals the nested one at its width, and training at random widths is seeded."""

from __future__ import annotations

import pytest
import torch

from course_lib.models import GPT, GPTConfig
from course_lib.models.matformer import NestedTraining, extract, granularity, nest, nested_width


def gpt(**options) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50, max_len=16, dim=16, depth=2, heads=2, **options)).eval()


def tokens() -> torch.Tensor:
    return torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(1))


def test_nesting_keeps_the_outputs():
    plain, nested = gpt(), nest(gpt())
    torch.testing.assert_close(nested(tokens()), plain(tokens()))
    with granularity(nested, 1.0):
        torch.testing.assert_close(nested(tokens()), plain(tokens()))


@pytest.mark.parametrize("fraction", [0.125, 0.5, 0.75])
def test_extracted_model_equals_the_nested_one_at_its_width(fraction):
    nested = nest(gpt())
    with granularity(nested, fraction):
        expected = nested(tokens())
    small = extract(nested, fraction)
    assert small.config.ffn_hidden == nested_width(64, fraction)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in nested.parameters())
    torch.testing.assert_close(small(tokens()), expected)


def test_a_granularity_uses_only_the_first_hidden_units():
    nested = nest(gpt())
    with granularity(nested, 0.5):
        before = nested(tokens())
        with torch.no_grad():
            for block in nested.blocks:
                block.ffn.fc_in.weight[32:] += 1.0  # units past the first half
        torch.testing.assert_close(nested(tokens()), before)
    assert all(block.ffn.active is None for block in nested.blocks)  # restored on leaving


def test_nested_training_draws_its_widths_from_its_seed():
    def widths(seed):
        trainer, seen = NestedTraining(gpt(), (0.25, 1.0), seed=seed), []
        for block in trainer.model.blocks:
            block.ffn.register_forward_hook(lambda module, args, out: seen.append(module.active))
        for _ in range(6):
            trainer(tokens())
        return seen[::2]  # one entry per call (two blocks)

    assert widths(3) == widths(3) and set(widths(3)) <= {16, 64}
    assert len(set(widths(3) + widths(4))) == 2


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="fraction=0"):
        nested_width(64, 0)
    with pytest.raises(ValueError, match="NestedMLP"):
        extract(gpt(), 0.5)
    with pytest.raises(ValueError, match="plain MLP"):
        nest(gpt(ffn="glu"))
    with pytest.raises(ValueError, match="fractions is empty"):
        NestedTraining(gpt(), ())


def test_nesting_twice_changes_nothing():
    nested = nest(gpt())
    assert nest(nested) is nested and NestedTraining(nested, (0.5,)).model is nested

"""minigpt.infer.sampling: the one record of sampling settings, its one check, and the draw."""

import math

import pytest
import torch

from minigpt.infer.sampling import (
    CLI_NAMES,
    GREEDY_BELOW,
    SamplingParams,
    SettingError,
    check_sampling,
    choose_next_token,
)


def test_sampling_controls():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0], [0.0, 3.0, 0.0, 0.0]])
    greedy = logits.argmax(-1, keepdim=True)
    assert torch.equal(choose_next_token(logits, temperature=0), greedy)
    g = torch.Generator().manual_seed(1)
    assert torch.equal(choose_next_token(logits, top_k=1, generator=g), greedy)
    assert torch.equal(choose_next_token(logits, top_p=1e-6, generator=g), greedy)
    draws = torch.cat([choose_next_token(logits, top_k=2, generator=g) for _ in range(300)], dim=1)
    assert set(draws[0].tolist()) == {0, 1}  # only the two likeliest tokens of row 0
    # top_p=0.7 on row 0: p = [.61, .22, .14, .03] -> {0, 1} reach 0.7
    draws = torch.cat([choose_next_token(logits, top_p=0.7, generator=g) for _ in range(300)], dim=1)
    assert set(draws[0].tolist()) == {0, 1}


@pytest.mark.parametrize("temperature", [1e-45, 1e-300, GREEDY_BELOW / 2, 5e-324])
def test_a_temperature_too_small_to_divide_by_is_greedy(temperature):
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0], [0.0, 3.0, 0.0, 0.0]]) * 1000
    g = torch.Generator().manual_seed(0)
    chosen = choose_next_token(logits, temperature=temperature, generator=g)
    assert torch.equal(chosen, logits.argmax(-1, keepdim=True))


@pytest.mark.parametrize("temperature", [GREEDY_BELOW, 1e-3, 1.0, 1e6, 1e300])
def test_every_accepted_temperature_draws_from_finite_probabilities(temperature):
    logits = torch.tensor([[80.0, 79.0, -50.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    draws = [int(choose_next_token(logits, temperature=temperature, top_p=1e-45, generator=g)) for _ in range(20)]
    assert draws == [0] * 20  # top_p that small keeps the likeliest token alone, at any temperature
    draws = [int(choose_next_token(logits, temperature=temperature, generator=g)) for _ in range(20)]
    assert all(0 <= d < 4 for d in draws)


@pytest.mark.parametrize(
    ("change", "field", "fragment"),
    [
        ({"temperature": -0.1}, "temperature", "0 (greedy) or a positive number"),
        ({"temperature": math.nan}, "temperature", "0 (greedy) or a positive number"),
        ({"temperature": math.inf}, "temperature", "0 (greedy) or a positive number"),
        ({"temperature": "hot"}, "temperature", "0 (greedy) or a positive number"),
        ({"temperature": True}, "temperature", "0 (greedy) or a positive number"),
        ({"top_p": 0}, "top_p", "a number in (0, 1]"),
        ({"top_p": 1.5}, "top_p", "a number in (0, 1]"),
        ({"top_k": 0}, "top_k", "a whole number, 1 or more"),
        ({"top_k": 2.5}, "top_k", "a whole number, 1 or more"),
        ({"max_tokens": 0}, "max_tokens", "a whole number, 1 or more"),
        ({"seed": -1}, "seed", "from 0 to 2**64 - 1"),
        ({"seed": 2**64}, "seed", "from 0 to 2**64 - 1"),
        ({"stop": ["x"] * 17}, "stop", "a list of at most 16 strings"),
        ({"stop": [1]}, "stop", "a list of at most 16 strings"),
        ({"on_full": "wrap"}, "on_full", "one of slide, stop"),
    ],
)
def test_one_check_refuses_each_bad_setting_in_the_callers_words(change, field, fragment):
    params = SamplingParams(**change)
    with pytest.raises(SettingError, match=fragment.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")) as e:
        check_sampling(params)
    assert e.value.setting == field
    assert str(e.value).startswith(f"{field} must be")  # Python and the API: the field's own name
    with pytest.raises(SettingError) as e:
        check_sampling(params, CLI_NAMES)
    assert str(e.value).startswith(f"{CLI_NAMES.get(field, field)} must be")  # the command line: its flag


def test_the_edges_of_every_range_are_accepted():
    check_sampling(SamplingParams(max_tokens=1, temperature=0, top_k=1, top_p=1e-45, seed=0, stop=["a"] * 16))
    check_sampling(SamplingParams(temperature=1e-45, top_p=1.0, seed=2**64 - 1, on_full="slide"))

"""Model inputs (``_model.inputs``): one tensor or a dict of tensors, and padding masks."""

import copy

import numpy as np
import pytest
import torch

from sklearn_lib._model import inputs


def _dict_batch(n=4, t=3):
    ids = torch.arange(n * t).reshape(n, t)
    mask = torch.ones(n, t, dtype=torch.int64)
    mask[0, 2:] = 0
    mask[2, 1:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_is_dict():
    assert inputs.is_dict({"x": torch.zeros(1)})
    assert not inputs.is_dict(torch.zeros(1))


def test_n_rows():
    assert inputs.n_rows(torch.zeros(5, 2, 3)) == 5
    assert inputs.n_rows(_dict_batch(n=6)) == 6


@pytest.mark.parametrize("index", [slice(1, 3), torch.tensor([3, 0, 0])])
def test_take_rows(index):
    x = torch.arange(12.0).reshape(4, 3)
    torch.testing.assert_close(inputs.take_rows(x, index), x[index])
    batch = _dict_batch()
    taken = inputs.take_rows(batch, index)
    assert list(taken) == list(batch)
    for key in batch:
        torch.testing.assert_close(taken[key], batch[key][index])


@pytest.mark.parametrize("shape", [(3,), (3, 2), (3, 2, 4)])
@pytest.mark.parametrize("copies", [1, 2, 3])
def test_repeat_rows_is_copy_major(shape, copies):
    x = torch.randn(shape)
    torch.testing.assert_close(inputs.repeat_rows(x, copies), torch.cat([x] * copies))
    batch = _dict_batch(n=3)
    repeated = inputs.repeat_rows(batch, copies)
    for key in batch:
        torch.testing.assert_close(repeated[key], torch.cat([batch[key]] * copies))


def test_device_of():
    assert inputs.device_of(torch.zeros(2)) == torch.device("cpu")
    assert inputs.device_of(_dict_batch()) == torch.device("cpu")


class EditsItsInputs(torch.nn.Module):
    def forward(self, x=None, input_ids=None, attention_mask=None, scale=1):
        for value in (x, input_ids, attention_mask):
            if value is not None:
                value.zero_()
        return scale


def test_call_model_passes_copies_and_keywords():
    model, x = EditsItsInputs(), torch.ones(2, 3)
    assert inputs.call_model(model, x, {"scale": 5}) == 5
    torch.testing.assert_close(x, torch.ones(2, 3))  # the batch is untouched
    batch = _dict_batch()
    before = {key: value.clone() for key, value in batch.items()}
    assert inputs.call_model(model, batch, {"scale": 7}) == 7
    for key in batch:
        torch.testing.assert_close(batch[key], before[key])


def test_call_model_copies_the_tensors_of_forward_kwargs_wherever_they_sit():
    """Issue 24: a forward that edits a tensor of ``forward_kwargs`` in place edits a copy,
    made for each call (not the caller's, nor the next call's)."""
    from collections import namedtuple

    Pair = namedtuple("Pair", "a b")

    def edits(x, bias, nested):
        bias.add_(1.0)
        nested["list"][0].mul_(0.0)
        nested["pair"].a.fill_(9.0)
        return bias.clone()

    kwargs = {
        "bias": torch.zeros(3),
        "nested": {"list": [torch.ones(2), 4], "pair": Pair(torch.ones(1), "b")},
    }
    before = copy.deepcopy(kwargs)
    for _ in range(2):  # each call starts from the caller's values
        torch.testing.assert_close(inputs.call_model(edits, torch.ones(1), kwargs), torch.ones(3))
    torch.testing.assert_close(kwargs["bias"], before["bias"], rtol=0, atol=0)
    torch.testing.assert_close(kwargs["nested"]["list"][0], torch.ones(2), rtol=0, atol=0)
    torch.testing.assert_close(kwargs["nested"]["pair"].a, torch.ones(1), rtol=0, atol=0)
    assert kwargs["nested"]["list"][1] == 4 and isinstance(kwargs["nested"]["pair"], Pair)


def test_call_model_passes_a_dict_as_keywords():
    seen = {}

    def model(**kwargs):
        seen.update(kwargs)

    inputs.call_model(model, _dict_batch(), {"output_hidden_states": True})
    assert set(seen) == {"input_ids", "attention_mask", "output_hidden_states"}


def test_call_model_refuses_a_keyword_given_twice():
    with pytest.raises(
        ValueError, match=r"both give the keyword argument\(s\) \['attention_mask'\]"
    ):
        inputs.call_model(lambda **kw: None, _dict_batch(), {"attention_mask": None, "a": 1})


def test_describe():
    x = torch.zeros(5, 3, dtype=torch.int64)
    assert inputs.describe(x) == "inputs of shape (5, 3), dtype torch.int64"
    batch = {"input_ids": x, "mask": torch.ones(5, 3)}
    assert inputs.describe(batch) == (
        "inputs {input_ids: (5, 3) torch.int64, mask: (5, 3) torch.float32}"
    )


def test_attention_mask():
    assert inputs.attention_mask(torch.zeros(2, 3)) is None
    assert inputs.attention_mask({"input_ids": torch.zeros(2, 3)}) is None
    mask = inputs.attention_mask({"attention_mask": torch.tensor([[1, 0, 2], [0.0, 1, 1]])})
    assert mask.dtype == torch.bool
    torch.testing.assert_close(mask, torch.tensor([[True, False, True], [False, True, True]]))


def test_valid_positions_only_where_positions_are_the_masks():
    batch = _dict_batch(n=4, t=3)
    mask = inputs.valid_positions(batch, (3, 8))
    torch.testing.assert_close(mask, batch["attention_mask"] != 0)
    assert inputs.valid_positions(batch, (2, 8)) is None  # other positions
    assert inputs.valid_positions(batch, (8,)) is None  # no positions
    assert inputs.valid_positions(batch, (3, 2, 8)) is None
    assert inputs.valid_positions(torch.zeros(4, 3), (3, 8)) is None
    assert inputs.MASK_KEY == "attention_mask"


def test_without_padding():
    x = torch.zeros(2, 3)
    assert inputs.without_padding(x) is x
    plain = {"input_ids": x}
    assert inputs.without_padding(plain) is plain
    batch = _dict_batch()
    unpadded = inputs.without_padding(batch)
    assert unpadded["input_ids"] is batch["input_ids"]
    torch.testing.assert_close(unpadded["attention_mask"], torch.ones(4, 3, dtype=torch.int64))
    assert int(batch["attention_mask"].sum()) < 12  # the original keeps its padding


@pytest.mark.parametrize(
    "mask, shown",
    [
        ([[0.0, 0.0, -10000.0]], "-10000, 0"),
        ([[0.0, -float("inf"), 0.0]], "-inf, 0"),
        ([[1.0, 0.5, 0.0]], "0, 0.5, 1"),
        ([[2, 1, 0]], "0, 1, 2"),
    ],
    ids=["additive", "additive inf", "a fraction", "a count"],
)
def test_a_mask_other_than_ones_and_zeros_is_refused_naming_the_convention(mask, shown):
    x = {"input_ids": torch.zeros(1, 3, dtype=torch.long), "attention_mask": torch.tensor(mask)}
    with pytest.raises(ValueError, match=f"1 .or True. for real tokens.*holds {shown}.*additive"):
        inputs.check_mask(x)


@pytest.mark.parametrize("dtype", [torch.long, torch.float64, torch.bool])
def test_padding_masks_pass(dtype):
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]]).to(dtype)
    x = {"input_ids": torch.zeros(2, 3, dtype=torch.long), "attention_mask": mask}
    assert inputs.check_mask(x) is x
    assert inputs.check_mask(torch.zeros(2, 3)) is not None  # no mask: nothing to check


def test_a_sample_without_a_real_token_is_refused_by_its_index():
    mask = torch.tensor([[1, 1], [1, 0], [0, 0]])
    x = {"input_ids": torch.zeros(3, 2, dtype=torch.long), "attention_mask": mask}
    with pytest.raises(ValueError, match="Sample 42 has no real token"):
        inputs.check_mask(x, start=40)


# -- sequence lengths ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value, expected",
    [
        (torch.zeros(2, 3, dtype=torch.int64), True),
        (torch.zeros(2, 3, dtype=torch.int32), True),
        (torch.zeros(2, 3, dtype=torch.bool), True),
        (torch.zeros(2, 3, 4, dtype=torch.int64), True),
        (torch.zeros(2, 3, dtype=torch.float32), False),
        (torch.zeros(2, 3, dtype=torch.float64), False),
        (torch.zeros(2, 3, dtype=torch.bfloat16), False),
        (torch.zeros(2, 3, dtype=torch.complex64), False),
        (torch.zeros(2, dtype=torch.int64), False),
        (np.zeros((2, 3), dtype=np.int64), True),
        (np.zeros((2, 3), dtype=np.uint8), True),
        (np.zeros((2, 3), dtype=bool), True),
        (np.zeros((2, 3, 4), dtype=np.int16), True),
        (np.zeros((2, 3), dtype=np.float32), False),
        (np.zeros((2, 3), dtype=np.complex128), False),
        (np.zeros(2, dtype=np.int64), False),
    ],
    ids=lambda v: None if isinstance(v, bool) else f"{type(v).__name__}{tuple(v.shape)}{v.dtype}",
)
def test_has_length_only_for_integer_fields_with_a_per_sample_axis(value, expected):
    assert inputs.has_length(value) is expected


def test_lengths_of_a_tensor_and_of_each_field():
    assert inputs.lengths_of(torch.zeros(2, 3, dtype=torch.int64)) is True
    assert inputs.lengths_of(np.zeros((2, 3))) is False
    batch = {
        "input_ids": torch.zeros(2, 3, dtype=torch.int64),
        "attention_mask": np.ones((2, 3), dtype=bool),
        "pixels": torch.zeros(2, 3),
        "label": torch.zeros(2, dtype=torch.int64),
    }
    assert inputs.lengths_of(batch) == {
        "input_ids": True,
        "attention_mask": True,
        "pixels": False,
        "label": False,
    }
    assert list(inputs.lengths_of(batch)) == list(batch)  # the batch's order


@pytest.mark.parametrize(
    "shape, reference, lengths, expected",
    [
        ((5,), (3,), True, True),  # another length
        ((5, 2), (3, 2), True, True),  # another length, the rest equal
        ([5, 2], (3, 2), True, True),  # a list is a shape too
        ((3, 4), (3, 2), True, False),  # an axis after the length
        ((5,), (5, 1), True, False),  # another number of axes
        ((), (), True, True),
        ((5,), (3,), False, False),  # floats keep their shape
        ((3, 2), (3, 2), False, True),
    ],
)
def test_same_but_lengths_of_one_field(shape, reference, lengths, expected):
    assert inputs.same_but_lengths(shape, reference, lengths) is expected


def test_same_but_lengths_of_a_dict_is_field_by_field():
    reference = {"input_ids": (4,), "attention_mask": (4,), "pixels": (2, 3)}
    lengths = {"input_ids": True, "attention_mask": True, "pixels": False}
    longer = {"input_ids": (9,), "attention_mask": (9,), "pixels": (2, 3)}
    assert inputs.same_but_lengths(longer, reference, lengths)
    assert inputs.same_but_lengths(dict(reference), reference, lengths)
    # A float field of another shape, fields in another order, a missing field.
    assert not inputs.same_but_lengths({**longer, "pixels": (2, 4)}, reference, lengths)
    reordered = {key: longer[key] for key in ["attention_mask", "input_ids", "pixels"]}
    assert not inputs.same_but_lengths(reordered, reference, lengths)
    fewer = {"input_ids": (9,), "attention_mask": (9,)}
    assert not inputs.same_but_lengths(fewer, reference, lengths)
    # A dict against a tensor's shape, either way round.
    assert not inputs.same_but_lengths((4,), reference, True)
    assert not inputs.same_but_lengths(longer, (4,), lengths)


def test_a_mask_of_another_length_than_the_ids_is_refused():
    x = {"input_ids": torch.zeros(2, 4, dtype=torch.long), "attention_mask": torch.ones(2, 5)}
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 5\), but input_ids has"):
        inputs.check_mask(x)


def test_a_float_attention_mask_has_a_length():
    """A 0/1 float mask may take another length, as the token ids beside it."""
    batch = {"input_ids": np.zeros((2, 4), dtype=np.int64), "attention_mask": np.ones((2, 4))}
    assert inputs.lengths_of(batch) == {"input_ids": True, "attention_mask": True}
    assert inputs.lengths_of({"features": np.ones((2, 4))}) == {"features": False}

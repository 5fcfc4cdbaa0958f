"""LIB on real architectures: GPT-2, a padded BERT encoder, a small residual conv net.

Every ``Lambda`` is checked against ``M'`` from full per-sample Jacobians
through the same sections of the real model: a float64, eval-mode deep copy
run whole, with a forward pre-hook that substitutes the source node's
activations and a hook (or the output) that reads the destination node.
``_refs.masked_brute_force_m_prime`` takes them for the whole batch, one
backward pass per output row (the sections treat samples independently);
each test also checks it against the per-sample
``torch.autograd.functional.jacobian`` of ``_refs.brute_force_m_prime`` on a
few samples.  Nothing in the references calls sklearn_lib.

The Hugging Face tests need ``transformers`` (``pip install -e '.[models]'``)
and skip without it; the conv-net tests do not.
"""

import copy

import numpy as np
import pytest
import torch
from _refs import (
    activations_of,
    assert_same_columns_up_to_sign,
    brute_force_m_prime,
    masked_brute_force_m_prime,
    masked_reference_lambdas,
    reference_lambdas,
)
from torch import nn
from toy_models import (
    BERT_VOCAB,
    BERT_WIDTH,
    GPT2_VOCAB,
    MixPositions,
    PositionMixer,
    small_resnet,
    tiny_bert,
    tiny_gpt2,
)

from sklearn_lib import ActivationTransformer, LIBTransformer

MODELS_EXTRA = "needs transformers (pip install -e '.[models]')"


def _transformers():
    """The transformers module, or skip this test (not the module) with the reason."""
    return pytest.importorskip("transformers", reason=MODELS_EXTRA)


# -- helpers ---------------------------------------------------------------------------


def _snapshot(model):
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "params": [(n, p.dtype, p.requires_grad) for n, p in model.named_parameters()],
        "training": [(n, m.training) for n, m in model.named_modules()],
    }


def _assert_untouched(model, before):
    """State bit-identical (buffers too: BatchNorm statistics, num_batches_tracked),
    the same dtypes, flags and train/eval modes, and no hook left anywhere."""
    after = _snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert after["state"][key].dtype == value.dtype, key
        assert torch.equal(after["state"][key], value), key
    assert after["params"] == before["params"]
    assert after["training"] == before["training"]
    for name, module in model.named_modules():
        assert not module._forward_hooks, name
        assert not module._forward_pre_hooks, name


def _assert_lambdas_match(got, expected, rtol=1e-9):
    """``got`` (the library's, after its null-space cut) against a reference.

    Equal to ``rtol`` wherever the reference is above ``1e-10`` of its largest;
    anything the library has beyond is negligible too.
    """
    top = expected[0]
    k = int(np.sum(expected > 1e-10 * top))
    assert len(got) >= k, (len(got), k)
    np.testing.assert_allclose(got[:k], expected[:k], rtol=rtol, atol=1e-12 * top)
    assert np.all(np.abs(got[k:]) <= 1e-9 * top)


def _run(model, inputs, replace=None, read=None, output=None):
    """``model(**inputs)`` with hooks.

    ``replace=(name, z)`` substitutes ``z`` for the first positional input of
    module ``name`` (its other arguments pass through); ``read=name`` returns
    that module's first positional input, else the model's ``output`` item.
    """
    modules = dict(model.named_modules())
    seen, handles = [], []
    if replace is not None:
        name, z = replace
        handles.append(modules[name].register_forward_pre_hook(lambda m, args: (z, *args[1:])))
    if read is not None:
        handles.append(
            modules[read].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        )
    try:
        out = model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return seen[0] if read is not None else out[output]


def _activations(model, inputs, name):
    """The first positional input of module ``name``, float64 numpy."""
    with torch.no_grad():
        return _run(model, inputs, read=name).double().numpy()


def _as_torch(X):
    return {key: torch.as_tensor(value) for key, value in X.items()}


# -- GPT-2 -----------------------------------------------------------------------------


def _gpt2(seed=0):
    _transformers()
    return tiny_gpt2(seed)  # float32, train mode (dropout active)


def _gpt2_tokens(n=24, T=5, seed=0):
    return np.random.default_rng(seed).integers(0, GPT2_VOCAB, size=(n, T))


def test_gpt2_lambdas_match_brute_force_jacobians():
    """Both node layers of a causal LM, in float64, against full per-sample Jacobians
    through the residual stream entering h.1 -> the input of ln_f -> the logits."""
    model = _gpt2()
    ids = _gpt2_tokens()
    before = _snapshot(model)
    lib = LIBTransformer(
        model,
        "transformer.h.1",
        downstream_layers=["transformer.ln_f"],
        output="logits",
        forward_kwargs={"use_cache": False},
    ).fit(ids)
    Z = lib.transform(ids)
    score = lib.score(ids)
    _assert_untouched(model, before)
    assert model.training and next(model.parameters()).dtype == torch.float32

    assert lib.activation_shape_ == (5, 16) and lib.output_shape_ == (5, GPT2_VOCAB)
    assert Z.shape == (len(ids), 5 * lib.n_components_)
    assert score >= 1 - 1e-9  # every feature kept

    ref = copy.deepcopy(model).double().eval()
    inputs = {"input_ids": torch.as_tensor(ids), "use_cache": False}
    sections = {
        "transformer.h.1": lambda z: _run(
            ref, inputs, replace=("transformer.h.1", z), read="transformer.ln_f"
        ),
        "transformer.ln_f": lambda z: _run(
            ref, inputs, replace=("transformer.ln_f", z), output="logits"
        ),
    }
    next_basis = {
        "transformer.h.1": lib.bases_["transformer.ln_f"].kept_matrix,
        "transformer.ln_f": np.eye(GPT2_VOCAB),  # the output keeps the identity basis
    }
    for name, section in sections.items():
        acts = _activations(ref, inputs, name)
        assert acts.shape == (len(ids), 5, 16)
        m_prime = masked_brute_force_m_prime(section, acts, next_basis[name])
        _assert_lambdas_match(lib.bases_[name].lambdas, reference_lambdas(acts, m_prime))
    np.testing.assert_allclose(
        lib.mean_, _activations(ref, inputs, "transformer.h.1").mean((0, 1)), rtol=1e-12
    )

    # The batched reference is the per-sample one: the first two samples, one at a time.
    first = {"input_ids": torch.as_tensor(ids[:1]), "use_cache": False}  # the ids are replaced
    acts = _activations(ref, inputs, "transformer.h.1")[:2]
    C = next_basis["transformer.h.1"]
    per_sample = brute_force_m_prime(
        lambda z: _run(ref, first, replace=("transformer.h.1", z), read="transformer.ln_f"),
        acts,
        C,
    )
    two = {"input_ids": torch.as_tensor(ids[:2]), "use_cache": False}
    batched = masked_brute_force_m_prime(
        lambda z: _run(ref, two, replace=("transformer.h.1", z), read="transformer.ln_f"),
        acts,
        C,
    )
    scale = np.abs(per_sample).max()
    np.testing.assert_allclose(batched, per_sample, rtol=1e-10, atol=1e-13 * scale)


def test_hugging_face_model_without_output_names_the_fix():
    model = _gpt2()
    with pytest.raises(ValueError, match=r"output="):
        LIBTransformer(model, "transformer.h.1", forward_kwargs={"use_cache": False}).fit(
            _gpt2_tokens(n=4)
        )


# -- a BERT-style encoder with padded dict batches ---------------------------------------

BERT_LAYER = "encoder.layer.1"


def _bert(seed=0):
    _transformers()
    return tiny_bert(seed)  # float32, train mode


def _encoded(lengths, T, seed=0):
    """What a tokenizer with right padding gives: token ids (pad id 0) and the mask."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lengths), T), dtype=np.int64)
    mask = np.zeros((len(lengths), T), dtype=np.int64)
    for i, length in enumerate(lengths):
        ids[i, :length] = rng.integers(1, BERT_VOCAB, size=length)
        mask[i, :length] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _bert_lib(model, **params):
    return LIBTransformer(model, BERT_LAYER, output="last_hidden_state", **params)


def _mixed(n=10, T=6, seed=0):
    lengths = np.random.default_rng(seed).integers(2, T + 1, size=n)
    lengths[0] = T  # one full-length sequence
    return _encoded(lengths, T, seed=seed)


def _bert_section(ref, X):
    """The residual stream entering BERT_LAYER -> last_hidden_state, for the batch X."""
    inputs = _as_torch(X)
    return lambda z: _run(ref, inputs, replace=(BERT_LAYER, z), output="last_hidden_state")


@pytest.mark.parametrize(
    "unpadded_mask, as_tensors", [("ones", False), ("absent", True)], ids=["ones", "no-mask"]
)
def test_bert_padding_changes_nothing(unpadded_mask, as_tensors):
    """Right padding with attention_mask 0 gives the fit of the unpadded sequences."""
    model = _bert()
    L, k, n = 4, 2, 12
    unpadded = _encoded([L] * n, L)
    padded = _encoded([L] * n, L + k)
    np.testing.assert_array_equal(padded["input_ids"][:, :L], unpadded["input_ids"])
    if unpadded_mask == "absent":
        del unpadded["attention_mask"]
    if as_tensors:
        unpadded, padded = _as_torch(unpadded), _as_torch(padded)

    a = _bert_lib(model).fit(unpadded)
    b = _bert_lib(model).fit(padded)
    assert a.activation_shape_ == (L, BERT_WIDTH) and b.activation_shape_ == (L + k, BERT_WIDTH)
    assert b.n_positions_ == L + k and b.n_components_ == a.n_components_
    np.testing.assert_allclose(b.lambdas_, a.lambdas_, rtol=1e-9, atol=1e-12 * a.lambdas_[0])
    np.testing.assert_allclose(b.mean_, a.mean_, rtol=1e-9, atol=1e-12)
    scale = np.abs(a.components_).max()
    assert_same_columns_up_to_sign(b.components_.T, a.components_.T, rtol=1e-7, atol=1e-9 * scale)

    Za = a.transform(unpadded).reshape(n, L, a.n_components_)
    Zb = b.transform(padded).reshape(n, L + k, b.n_components_)
    assert np.isnan(Zb[:, L:]).all() and np.isfinite(Zb[:, :L]).all()
    signs = np.sign(np.sum(a.components_ * b.components_, axis=1))
    np.testing.assert_allclose(Zb[:, :L] * signs, Za, atol=1e-9 * np.sqrt(a.lambdas_[0]))


def test_bert_mixed_lengths_match_masked_brute_force():
    """Means, Grams and ``M'`` over the valid positions only (rows with mask 1)."""
    model = _bert()
    X = _mixed()
    lib = _bert_lib(model).fit(X)
    mask = X["attention_mask"]
    assert 0 < mask.sum() < mask.size

    ref = copy.deepcopy(model).double().eval()
    acts = _activations(ref, _as_torch(X), BERT_LAYER)
    np.testing.assert_allclose(lib.mean_, acts[mask == 1].mean(0), rtol=1e-10, atol=1e-12)
    m_prime = masked_brute_force_m_prime(_bert_section(ref, X), acts, np.eye(BERT_WIDTH), mask)
    expected = masked_reference_lambdas(acts, mask, m_prime)
    _assert_lambdas_match(lib.bases_[BERT_LAYER].lambdas, expected)
    # Counting the padded rows as well gives another answer: the mask matters here.
    unmasked = reference_lambdas(acts, m_prime)
    assert not np.allclose(unmasked[:3], expected[:3], rtol=1e-3)


def test_bert_transform_is_nan_exactly_at_padding():
    """Columns ``p * n_components_ + j``; NaN where position p is padding; on the
    valid rows the features' variance (ddof=0) is ``Lambda``, their mean 0."""
    model = _bert()
    X = _mixed()
    mask = X["attention_mask"].astype(bool)
    n, T = mask.shape
    lib = _bert_lib(model).fit(X)
    k = lib.n_components_
    Z = lib.transform(X)
    assert Z.shape == (n, T * k)
    Z3 = Z.reshape(n, T, k)
    np.testing.assert_array_equal(np.isnan(Z3), np.broadcast_to(~mask[:, :, None], Z3.shape))
    valid = Z3[mask]  # (n_valid, k), all finite
    assert np.isfinite(valid).all()
    top = lib.lambdas_[0]
    np.testing.assert_allclose(valid.var(axis=0), lib.lambdas_, rtol=1e-9, atol=1e-10 * top)
    np.testing.assert_allclose(valid.T @ valid / len(valid), np.diag(lib.lambdas_), atol=1e-9 * top)
    np.testing.assert_allclose(valid.mean(0), 0, atol=1e-9 * np.sqrt(top))

    # The features are the projection of the valid activations.
    ref = copy.deepcopy(model).double().eval()
    acts = _activations(ref, _as_torch(X), BERT_LAYER)
    np.testing.assert_allclose(
        valid, (acts[mask] - lib.mean_) @ lib.components_.T, atol=1e-9 * np.sqrt(top)
    )

    # ActivationTransformer: the raw activations, NaN at the padded positions.
    raw = ActivationTransformer(model, BERT_LAYER, output="last_hidden_state").fit(X)
    A = raw.transform(X).reshape(n, T, BERT_WIDTH)
    np.testing.assert_array_equal(np.isnan(A), np.broadcast_to(~mask[:, :, None], A.shape))
    np.testing.assert_allclose(A[mask], acts[mask], rtol=1e-12, atol=1e-12)


class _Batches:
    """A re-iterable stream of dict batches (a new iteration on every ``iter``)."""

    def __init__(self, X, size):
        self.X, self.size = X, size

    def __iter__(self):
        n = len(next(iter(self.X.values())))
        for start in range(0, n, self.size):
            yield {key: value[start : start + self.size] for key, value in self.X.items()}


def test_bert_streams_of_dict_batches_fit_like_the_arrays():
    """A DataLoader over per-sample dicts (default collate gives dict batches), a plain
    list of dict batches and a re-iterable of them fit as the dict of arrays does."""
    model = _bert()
    X = _mixed()
    n = len(X["input_ids"])
    reference = _bert_lib(model).fit(X)
    expected_Z = reference.transform(X)
    samples = [{key: torch.as_tensor(value[i]) for key, value in X.items()} for i in range(n)]
    streams = {
        "DataLoader": torch.utils.data.DataLoader(samples, batch_size=5),
        # A list of per-sample dicts is a data set, like a list of rows.
        "list of samples": samples,
        "re-iterable": _Batches(X, 5),
    }
    for kind, stream in streams.items():
        lib = _bert_lib(model, batch_size=5).fit(stream)
        np.testing.assert_allclose(
            lib.lambdas_, reference.lambdas_, rtol=1e-10, atol=1e-13, err_msg=kind
        )
        np.testing.assert_allclose(lib.mean_, reference.mean_, rtol=1e-10, atol=1e-13)
        assert_same_columns_up_to_sign(
            lib.components_.T,
            reference.components_.T,
            rtol=1e-7,
            atol=1e-9 * np.abs(reference.components_).max(),
        )
        # The same estimator maps a stream as it maps the arrays, NaN included.
        np.testing.assert_allclose(reference.transform(stream), expected_Z, rtol=0, atol=1e-12)


def test_bert_score_and_model_untouched():
    model = _bert()
    X = _mixed()
    before = _snapshot(model)
    lib = _bert_lib(model).fit(X)
    score = lib.score(X)
    lib.transform(_as_torch(X))
    _assert_untouched(model, before)
    assert model.training and next(model.parameters()).dtype == torch.float32
    assert score >= 1 - 1e-9  # every feature kept


class LeakyPaddedMixer(nn.Module):
    """Token ids and a mask in, (n, T, V) out; ``mix`` mixes every position and
    ignores the mask, so padded inputs reach the valid outputs (unlike attention)."""

    def __init__(self, n_tokens=7, d=5, T=4, V=3, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(n_tokens, d)
        self.mix = MixPositions(T, T, d)
        self.head = nn.Sequential(nn.Linear(d, V), nn.Tanh())

    def forward(self, input_ids, attention_mask=None):
        return self.head(self.mix(torch.tanh(self.embed(input_ids))))


def test_padded_inputs_never_count_even_where_they_reach_valid_outputs(rng):
    """``M'`` sums over valid input positions s only, and ``Lambda`` of every node layer
    matches the masked reference, also where padding leaks into valid positions."""
    model = LeakyPaddedMixer().double()
    lengths = rng.integers(1, 5, size=40)
    lengths[0] = 4
    mask = (np.arange(4) < lengths[:, None]).astype(np.int64)
    X = {"input_ids": rng.integers(0, 7, size=(40, 4)) * mask, "attention_mask": mask}
    lib = LIBTransformer(model, "mix", downstream_layers=["head"]).fit(X)
    sections = {"mix": model.mix, "head": model.head}
    next_basis = {"mix": lib.bases_["head"].kept_matrix, "head": np.eye(3)}
    for name, section in sections.items():
        acts = _activations(model, _as_torch(X), name)
        m_prime = masked_brute_force_m_prime(section, acts, next_basis[name], mask)
        expected = masked_reference_lambdas(acts, mask, m_prime)
        _assert_lambdas_match(lib.bases_[name].lambdas, expected)
        if name == "mix":  # counting the padded input positions would differ here
            out_only = masked_brute_force_m_prime(
                section, acts, next_basis[name], np.ones_like(mask), mask
            ) * (mask.size / mask.sum())
            leaked = masked_reference_lambdas(acts, mask, out_only)
            assert not np.allclose(leaked[:3], expected[:3], rtol=1e-3)


# -- the references themselves -----------------------------------------------------------


def test_masked_reference_without_padding_is_the_plain_reference(rng):
    """The batched reference equals the per-sample ``brute_force_m_prime`` (also with
    an all-ones mask, and with integrated gradients)."""
    model = PositionMixer().double()  # (n, 4, 3) -> mix: (n, 4, 5) -> head: (n, 2, 3)
    X = rng.normal(size=(20, 4, 3))
    acts = activations_of(model, "mix", X)
    C = rng.normal(size=(3, 3))
    section = model.tail("mix")
    plain = brute_force_m_prime(section, acts, C)
    np.testing.assert_allclose(masked_brute_force_m_prime(section, acts, C), plain, rtol=1e-12)
    full = np.ones((20, 4))
    masked = masked_brute_force_m_prime(section, acts, C, full, np.ones((20, 2)))
    np.testing.assert_allclose(masked, plain, rtol=1e-12)
    np.testing.assert_allclose(
        masked_reference_lambdas(acts, full, plain), reference_lambdas(acts, plain), rtol=1e-12
    )
    rule = dict(alphas=[0.2, 0.6, 1.0], weights=[0.25, 0.5, 0.25])
    np.testing.assert_allclose(
        masked_brute_force_m_prime(section, acts, C, **rule),
        brute_force_m_prime(section, acts, C, **rule),
        rtol=1e-12,
    )


def test_masked_reference_of_a_positionwise_section_is_per_row(rng):
    """With a section acting on each position alone, the masked ``M'`` is the plain
    one over the valid rows taken as samples of one position each."""
    model = PositionMixer().double()
    acts = rng.normal(size=(20, 4, 5))
    mask = rng.integers(0, 2, size=(20, 4))
    mask[0] = 1
    C = rng.normal(size=(3, 2))
    masked = masked_brute_force_m_prime(model.head, acts, C, mask)
    rows = acts[mask == 1][:, None, :]  # (n_valid, 1, d)
    np.testing.assert_allclose(
        masked, brute_force_m_prime(model.head, rows, C), rtol=1e-12, atol=1e-14
    )
    assert not np.allclose(masked, brute_force_m_prime(model.head, acts, C), rtol=1e-3)


def test_masked_reference_on_bert_padding_is_the_unpadded_reference():
    """BERT: the masked reference on right-padded sequences equals the per-sample
    plain reference on the same sequences unpadded (attention ignores the padding)."""
    ref = _bert().double().eval()
    L, n = 3, 4
    unpadded, padded = _encoded([L] * n, L), _encoded([L] * n, L + 2)
    acts_u = _activations(ref, _as_torch(unpadded), BERT_LAYER)
    acts_p = _activations(ref, _as_torch(padded), BERT_LAYER)
    np.testing.assert_allclose(acts_p[:, :L], acts_u, rtol=1e-12, atol=1e-12)
    C = np.eye(BERT_WIDTH)
    one = _as_torch(_encoded([L], L))  # the ids are replaced; the mask is all ones
    plain = brute_force_m_prime(
        lambda z: _run(ref, one, replace=(BERT_LAYER, z), output="last_hidden_state"), acts_u, C
    )
    mask = padded["attention_mask"]
    masked = masked_brute_force_m_prime(_bert_section(ref, padded), acts_p, C, mask)
    np.testing.assert_allclose(masked, plain, rtol=1e-10, atol=1e-12 * np.abs(plain).max())
    np.testing.assert_allclose(
        masked_reference_lambdas(acts_p, mask, masked),
        reference_lambdas(acts_u, plain),
        rtol=1e-9,
    )


# -- a small residual conv net (channels-first feature maps) -------------------------------


def _channels_last(a):
    return a.permute(0, 2, 3, 1)


def _channels_first(a):
    return a.permute(0, 3, 1, 2)


def test_resnet_lambdas_match_brute_force_jacobians(rng):
    """``feature_axis=1``: channels are the features, the H*W locations positions.

    Node layers: the input of ``stage2`` (n, 8, 8, 8), of ``pool`` (n, 16, 4, 4)
    and of ``fc`` (n, 16); the reference works channels-last.
    """
    model = small_resnet().train()  # the fit must use the running statistics
    X = rng.normal(size=(16, 3, 8, 8))
    before = _snapshot(model)
    lib = LIBTransformer(model, "stage2", downstream_layers=["pool", "fc"], feature_axis=1)
    lib.fit(X)
    Z = lib.transform(X)
    score = lib.score(X)
    _assert_untouched(model, before)  # BatchNorm running stats and num_batches_tracked too
    assert model.training

    k = lib.n_components_
    assert lib.activation_shape_ == (8, 8, 8) and lib.n_positions_ == 64
    assert lib.bases_["pool"].shape == (4, 4, 16) and lib.bases_["fc"].shape == (16,)
    assert lib.output_shape_ == (5,)
    assert Z.shape == (16, 64 * k)
    assert score >= 1 - 1e-9  # every feature kept

    ref = copy.deepcopy(model).eval()
    sections = {
        "stage2": lambda z: _channels_last(ref.stage2(_channels_first(z))),
        "pool": lambda z: ref.flatten(ref.pool(_channels_first(z))),
        "fc": ref.fc,
    }
    next_basis = {
        "stage2": lib.bases_["pool"].kept_matrix,
        "pool": lib.bases_["fc"].kept_matrix,
        "fc": np.eye(5),
    }
    acts = {}
    for name, section in sections.items():
        a = activations_of(ref, name, X)
        acts[name] = a.transpose(0, 2, 3, 1) if a.ndim == 4 else a  # channels last
        m_prime = masked_brute_force_m_prime(section, acts[name], next_basis[name])
        if name == "pool":  # the reference itself: averaging over P = 16 locations is linear
            C = next_basis["pool"]
            np.testing.assert_allclose(m_prime, C @ C.T / 16**2, rtol=1e-10, atol=1e-14)
        if name != "fc":  # the batched reference is the per-sample one (on one sample)
            np.testing.assert_allclose(
                masked_brute_force_m_prime(section, acts[name][:1], next_basis[name]),
                brute_force_m_prime(section, acts[name][:1], next_basis[name]),
                rtol=1e-10,
                atol=1e-13 * np.abs(m_prime).max(),
            )
        _assert_lambdas_match(lib.bases_[name].lambdas, reference_lambdas(acts[name], m_prime))

    # Columns (h * W + w) * k + j: feature j at location (h, w), row-major.
    rows = acts["stage2"].reshape(16, 64, 8)
    top = lib.lambdas_[0]
    expected = ((rows - lib.mean_) @ lib.components_.T).reshape(16, -1)
    np.testing.assert_allclose(Z, expected, atol=1e-9 * np.sqrt(top))
    np.testing.assert_allclose(lib.mean_, rows.mean((0, 1)), rtol=1e-12)
    pooled = Z.reshape(16 * 64, k)  # Lambda is the variance pooled over locations
    second_moment = pooled.T @ pooled / len(pooled)
    np.testing.assert_allclose(second_moment, np.diag(lib.lambdas_), atol=1e-9 * top)

    # The pool layer alone: 4 x 4 locations; its basis depends only on what follows it.
    pool = LIBTransformer(model, "pool", downstream_layers=["fc"], feature_axis=1).fit(X)
    assert pool.activation_shape_ == (4, 4, 16) and pool.n_positions_ == 16
    assert pool.transform(X).shape == (16, 4 * 4 * pool.n_components_)
    np.testing.assert_allclose(pool.lambdas_, lib.bases_["pool"].lambdas[: pool.n_components_])

    raw = ActivationTransformer(model, "stage2", feature_axis=1).fit(X)
    assert raw.activation_shape_ == (8, 8, 8)
    np.testing.assert_allclose(raw.transform(X), acts["stage2"].reshape(16, -1), rtol=1e-12)


class ChannelsLast(nn.Module):
    """The same network with its node layers channels-last: ``node2`` (the input of
    ``stage2``) and ``node_pool`` (the input of ``pool``) are identities on
    (n, H, W, C) maps."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.node2, self.node_pool = nn.Identity(), nn.Identity()

    def forward(self, x):
        net = self.net
        h = _channels_first(self.node2(_channels_last(net.stage1(net.stem(x)))))
        h = _channels_first(self.node_pool(_channels_last(net.stage2(h))))
        return net.fc(net.flatten(net.pool(h)))


def test_resnet_channels_first_equals_channels_last(rng):
    """``feature_axis=1`` on (n, C, H, W) maps is ``feature_axis=-1`` on the same maps
    permuted to (n, H, W, C): the same bases, features and score."""
    model = small_resnet()
    X = rng.normal(size=(16, 3, 8, 8))
    first = LIBTransformer(model, "stage2", downstream_layers=["pool", "fc"], feature_axis=1)
    last = LIBTransformer(
        ChannelsLast(model), "node2", downstream_layers=["node_pool", "net.fc"], feature_axis=-1
    )
    first.fit(X), last.fit(X)
    for a, b in [("stage2", "node2"), ("pool", "node_pool"), ("fc", "net.fc")]:
        assert first.bases_[a].shape == last.bases_[b].shape
        np.testing.assert_allclose(first.bases_[a].lambdas, last.bases_[b].lambdas, rtol=1e-9)
    np.testing.assert_allclose(first.mean_, last.mean_, rtol=1e-12)
    scale = np.abs(last.components_).max()
    assert_same_columns_up_to_sign(
        first.components_.T, last.components_.T, rtol=1e-7, atol=1e-9 * scale
    )
    signs = np.tile(np.sign(np.sum(first.components_ * last.components_, axis=1)), 64)
    top = last.lambdas_[0]
    np.testing.assert_allclose(first.transform(X) * signs, last.transform(X), atol=1e-9 * top)
    assert first.score(X) == pytest.approx(last.score(X), abs=1e-12)


@pytest.mark.parametrize("estimator", [LIBTransformer, ActivationTransformer])
def test_resnet_feature_maps_need_feature_axis(rng, estimator):
    """4-D activations are ambiguous: the error names the parameter and both conventions."""
    X = rng.normal(size=(4, 3, 8, 8))
    with pytest.raises(ValueError, match="feature_axis") as info:
        estimator(small_resnet(), "stage2").fit(X)
    message = str(info.value)
    assert "channels-first" in message and "channels-last" in message, message


def _torchvision():
    """torchvision, or skip: the registry's wheels may not match this torch build."""
    try:
        import torchvision
    except Exception as exc:  # e.g. RuntimeError: operator torchvision::nms does not exist
        pytest.skip(f"torchvision does not import here ({type(exc).__name__}: {exc})")
    return torchvision


def test_torchvision_resnet18_at_its_last_stage():
    torchvision = _torchvision()
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).double().eval()
    before = _snapshot(model)
    X = np.random.default_rng(0).normal(size=(6, 3, 64, 64))
    lib = LIBTransformer(
        model, "avgpool", downstream_layers=["fc"], feature_axis=1, device="cpu"
    ).fit(X)
    assert lib.activation_shape_ == (2, 2, 512) and lib.n_positions_ == 4
    assert lib.score(X) >= 1 - 1e-9
    _assert_untouched(model, before)
    with pytest.raises(ValueError, match="feature_axis=1 for channels-first"):
        LIBTransformer(model, "avgpool", device="cpu").fit(X)


# -- what a language model's inputs may hold -----------------------------------------------
def _gpt2_lib():
    return LIBTransformer(
        _gpt2(), "transformer.h.1", output="logits", forward_kwargs={"use_cache": False}
    )


@pytest.mark.parametrize("sources", [None, 2], ids=["exact", "sources"])
def test_gpt2s_full_vocabulary_never_makes_the_identity_whole(monkeypatch, tmp_path, sources):
    """GPT-2's 50,257 logits: the output basis, the route checks, the pricing and the last
    section's rows never make a dense identity (20 GB in float64); fit, save and load work."""
    _transformers()
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=1, n_embd=8, n_head=2, vocab_size=50_257, n_positions=4,
        attn_implementation="eager",
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = np.random.default_rng(0).integers(0, 50_257, size=(6, 4))
    big = 4096

    def refuse(make):
        def guarded(n, *args, **kwargs):
            assert n <= big, f"a dense {n} x {n} identity was made"
            return make(n, *args, **kwargs)

        return guarded

    monkeypatch.setattr(torch, "eye", refuse(torch.eye))
    monkeypatch.setattr(np, "eye", refuse(np.eye))
    lib = LIBTransformer(
        model,
        "transformer.h.0",
        downstream_layers=["transformer.ln_f"],
        output="logits",
        forward_kwargs={"use_cache": False},
        n_stochastic_sources=sources,
        random_state=0,
    ).fit(ids)
    assert lib.output_shape_ == (4, 50_257)
    assert lib.bases_["output"].matrix.shape == (50_257, 50_257)
    assert np.all(np.isfinite(lib.bases_["transformer.ln_f"].lambdas))
    lib.save(tmp_path / "lib.npz")
    loaded = LIBTransformer.load(tmp_path / "lib.npz", model)
    np.testing.assert_allclose(loaded.transform(ids), lib.transform(ids), rtol=1e-12)


def test_gpt2_inputs_longer_than_its_positions_name_both_lengths():
    ids = _gpt2_tokens(T=10)  # the tiny GPT-2 takes 8 positions
    with pytest.raises(
        ValueError, match="10 positions, more than the 8 rows of .*'transformer.wpe'"
    ):
        _gpt2_lib().fit(ids)


@pytest.mark.parametrize("kind", ["additive", "empty sample"])
def test_gpt2_masks_that_would_read_wrong_are_refused(kind):
    ids = _gpt2_tokens()
    mask = np.ones_like(ids)
    mask[:, 3:] = 0
    if kind == "additive":  # 0 for tokens, -10000 for padding: the other way round
        mask, match = np.where(mask == 1, 0, -10000), "holds -10000, 0. An additive mask"
    else:
        mask[7] = 0
        match = "Sample 7 has no real token"
    with pytest.raises(ValueError, match=match):
        _gpt2_lib().fit({"input_ids": ids, "attention_mask": mask})


def test_gpt2_score_without_a_scored_label_names_the_rule():
    ids = _gpt2_tokens()
    lib = _gpt2_lib().fit(ids)
    with pytest.raises(ValueError, match="every label of y is -100"):
        lib.score(ids, np.full(ids.shape, -100))

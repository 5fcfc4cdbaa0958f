"""Sequence models as the field uses them: dynamic padding, any length, one row per token.

On tiny random Hugging Face GPT-2 (causal, 8 positions) and BERT
(bidirectional, 16 positions) models:

- a fit on ``DataCollatorWithPadding`` batches (each padded to its own
  longest sequence) equals the fit on the same sequences padded to one
  length, and so do the graph, the scores and the ablations;
- left padding (with the ``position_ids`` that Hugging Face's ``generate``
  passes for it) and right padding give the same bases, token features
  and R²;
- ``transform`` takes any length up to the model's, and each real token
  has the same features whatever its batch is padded to;
- ``transform_tokens`` gives one row per real token, which
  ``inverse_transform_tokens`` maps back onto the kept subspace.

Needs ``transformers`` (``pip install -e '.[models]'``).
"""

import numpy as np
import pytest
import torch
from _refs import assert_same_columns_up_to_sign
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from torch import nn
from toy_models import (
    BERT_VOCAB,
    GPT2_VOCAB,
    tiny_bert,
    tiny_gpt2,
    tiny_tokenizer,
    token_features,
)

from sklearn_lib import (
    ActivationTransformer,
    FlattenedPositionsWarning,
    LIBTransformer,
    ablation_curve,
)

MODELS_EXTRA = "needs transformers (pip install -e '.[models]')"

# name: (model, layers, output, vocabulary, most positions)
MODELS = {
    "gpt2": (
        tiny_gpt2,
        ["transformer.h.0", "transformer.h.1"],
        "logits",
        GPT2_VOCAB,
        8,
    ),
    "bert": (
        tiny_bert,
        ["encoder.layer.0", "encoder.layer.1"],
        "last_hidden_state",
        BERT_VOCAB,
        16,
    ),
}
LENGTHS = [3, 8, 2, 5, 7, 4, 6, 1, 8, 3, 5, 2, 7, 6, 4, 8, 2, 5, 3, 7]


@pytest.fixture(params=list(MODELS))
def case(request):
    pytest.importorskip("transformers", reason=MODELS_EXTRA)
    make, layers, output, vocab, most = MODELS[request.param]
    model = make().double()
    tokenizer = tiny_tokenizer(vocab)
    return request.param, model, layers, output, vocab, most, tokenizer


def _lib(case, **params):
    name, model, layers, output, *_ = case
    extra = {"forward_kwargs": {"use_cache": False}} if name == "gpt2" else {}
    return LIBTransformer(
        model, layers[0], downstream_layers=layers[1:], output=output, **extra, **params
    )


def _dynamic(tokenizer, features, batch_size=6):
    """Hugging Face's default: each batch padded to its own longest sequence."""
    from transformers import DataCollatorWithPadding

    collate = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    return torch.utils.data.DataLoader(features, batch_size=batch_size, collate_fn=collate)


def _padded(tokenizer, features, length, side="right"):
    """The sequences padded to one ``length``, as numpy arrays; ``position_ids`` on the left."""
    tokenizer.padding_side = side
    try:
        X = dict(tokenizer.pad(features, padding="max_length", max_length=length))
    finally:
        tokenizer.padding_side = "right"
    X = {key: np.asarray(value) for key, value in X.items()}
    if side == "left":  # what generate() passes: each real token keeps its position
        X["position_ids"] = np.maximum(np.cumsum(X["attention_mask"], axis=1) - 1, 0)
    return X


def _with_positions(X):
    """Right-padded ``X`` with the ``position_ids`` the model assumes (fields as the left's)."""
    return {
        **X,
        "position_ids": np.broadcast_to(
            np.arange(X["input_ids"].shape[1]), X["input_ids"].shape
        ).copy(),
    }


def _assert_same_fit(a, b):
    """Every basis: Lambda to 1e-9 of the largest, columns up to sign, the same mean."""
    assert list(a.bases_) == list(b.bases_)
    for name in a.bases_:
        x, y = a.bases_[name], b.bases_[name]
        scale = x.lambdas[0]
        np.testing.assert_allclose(y.lambdas, x.lambdas, rtol=1e-9, atol=1e-9 * scale)
        np.testing.assert_allclose(y.mean, x.mean, rtol=1e-9, atol=1e-10)
        k = x.n_components
        big = x.lambdas[:k] > 1e-6 * scale  # directions of distinct, well-resolved Lambda
        assert_same_columns_up_to_sign(
            y.matrix[:, :k][:, big], x.matrix[:, :k][:, big], rtol=1e-6, atol=1e-8
        )


def test_dynamic_padding_fits_as_fixed_padding(case):
    """DataCollatorWithPadding batches of mixed lengths give the fixed-padding fit and graph."""
    tokenizer, most = case[-1], case[-2]
    features = token_features(LENGTHS, case[4])
    loader = _dynamic(tokenizer, features)
    shapes = {tuple(batch["input_ids"].shape[1:]) for batch in loader}
    assert len(shapes) > 1  # the batches do differ in length
    fixed = _padded(tokenizer, features, most)

    dynamic = _lib(case, compute_graph=True).fit(loader)
    padded = _lib(case, compute_graph=True).fit(fixed)
    _assert_same_fit(dynamic, padded)
    for section, E in padded.interaction_graph_.edges.items():
        got = dynamic.interaction_graph_.edges[section]
        np.testing.assert_allclose(got, E, rtol=1e-8, atol=1e-10 * E.max())
    # A graph of its own pass agrees too.
    graph = dynamic.interaction_graph(loader)
    for section, E in padded.interaction_graph_.edges.items():
        np.testing.assert_allclose(graph.edges[section], E, rtol=1e-8, atol=1e-10 * E.max())


def test_dynamic_padding_scores_and_ablations_as_fixed_padding(case):
    """R², accuracy with -100 padded labels, and ablation curves read the same tokens."""
    tokenizer, most, vocab = case[-1], case[-2], case[4]
    features = token_features(LENGTHS, vocab)
    loader = _dynamic(tokenizer, features)
    fixed = _padded(tokenizer, features, most)
    lib = _lib(case, n_components=4).fit(fixed)

    assert lib.score(loader) == pytest.approx(lib.score(fixed), abs=1e-12)
    _, dynamic_curve = ablation_curve(lib, loader, n_features=[1, 3])
    _, fixed_curve = ablation_curve(lib, fixed, n_features=[1, 3])
    np.testing.assert_allclose(dynamic_curve, fixed_curve, atol=1e-12)
    if case[0] == "gpt2":  # next-token labels, padded on the right with -100 for every batch
        rng = np.random.default_rng(1)
        labels = rng.integers(0, vocab, size=fixed["input_ids"].shape)
        y = np.where(fixed["attention_mask"] == 1, labels, -100)
        assert lib.score(loader, y) == pytest.approx(lib.score(fixed, y), abs=1e-12)


def test_left_and_right_padding_agree(case):
    """Same Lambda, the same features of every real token, and the same R² (1e-12)."""
    tokenizer, most = case[-1], case[-2]
    features = token_features(LENGTHS, case[4])
    right = _with_positions(_padded(tokenizer, features, most, "right"))
    left = _padded(tokenizer, features, most, "left")
    assert not np.array_equal(right["attention_mask"], left["attention_mask"])

    a = _lib(case, n_components=4).fit(right)
    b = _lib(case, n_components=4).fit(left)
    _assert_same_fit(a, b)
    Za, ia = a.transform_tokens(right)
    Zb, ib = b.transform_tokens(left)
    np.testing.assert_array_equal(ia[:, 0], ib[:, 0])  # token order: sample, then position
    assert len(Za) == sum(LENGTHS)
    signs = np.sign(np.sum(a.components_ * b.components_, axis=1))
    np.testing.assert_allclose(Zb * signs, Za, atol=1e-9 * np.sqrt(a.lambdas_[0]))
    assert a.score(right) == pytest.approx(a.score(left), abs=1e-12)
    # R² does not depend on how far the sequences are padded either.
    few = [f for f in features if len(f["input_ids"]) <= 5]
    shorter, longer = (_with_positions(_padded(tokenizer, few, n)) for n in (5, most))
    assert a.score(longer) == pytest.approx(a.score(shorter), abs=1e-12)


def test_transform_of_any_length_agrees_on_every_real_token(case):
    """After a fit at the model's longest, shorter paddings give each real token its features."""
    tokenizer, most = case[-1], case[-2]
    short = token_features([1, 2, 2, 1, 2, 1], case[4], seed=3)
    lib = _lib(case).fit(_padded(tokenizer, token_features(LENGTHS, case[4]), most))
    assert lib.n_positions_ == most
    k = lib.n_components_
    reference = None
    for length in (most // 4, most // 2, most):
        X = _padded(tokenizer, short, length)
        Z = lib.transform(X)
        assert Z.shape == (len(short), length * k)
        Z = Z.reshape(len(short), length, k)
        valid = X["attention_mask"] == 1
        assert np.isnan(Z[~valid]).all()
        real = Z[:, : most // 4][valid[:, : most // 4]]
        if reference is None:
            reference = real
        np.testing.assert_allclose(real, reference, atol=1e-9 * np.sqrt(lib.lambdas_[0]))
        back = lib.inverse_transform(lib.transform(X))
        assert back.shape == (len(short), length * lib.activation_shape_[-1])


def test_transform_tokens_round_trips_on_the_kept_subspace(case):
    """``inverse_transform_tokens(transform_tokens(X))`` is each token's projection."""
    tokenizer = case[-1]
    features = token_features(LENGTHS, case[4])
    loader = _dynamic(tokenizer, features)
    lib = _lib(case, n_components=3).fit(loader)
    Z, index = lib.transform_tokens(loader)
    assert Z.shape == (sum(LENGTHS), 3) and index.shape == (sum(LENGTHS), 2)
    np.testing.assert_array_equal(
        index, [(i, t) for i, length in enumerate(LENGTHS) for t in range(length)]
    )
    # Lambda is each kept feature's variance over the tokens of the fitting data.
    np.testing.assert_allclose(Z.var(axis=0), lib.lambdas_, rtol=1e-9)
    raw = ActivationTransformer(lib.model, lib.layer, **_common(case)).fit(loader)
    A, raw_index = raw.transform_tokens(loader)
    np.testing.assert_array_equal(raw_index, index)
    basis = lib.bases_[lib.layer]
    projected = (A - basis.mean) @ basis.kept_matrix @ basis.kept_pinv + basis.mean
    np.testing.assert_allclose(lib.inverse_transform_tokens(Z), projected, atol=1e-9)
    # The per-token rows are transform's real tokens.
    dense = lib.transform(loader).reshape(len(LENGTHS), -1, 3)
    np.testing.assert_allclose(dense[index[:, 0], index[:, 1]], Z, atol=1e-12)
    with pytest.raises(ValueError, match="n_components_"):
        lib.inverse_transform_tokens(np.zeros((2, 4)))


def _common(case):
    name, _, _, output, *_ = case
    extra = {"forward_kwargs": {"use_cache": False}} if name == "gpt2" else {}
    return {"output": output, **extra}


def test_activations_of_a_dynamic_stream_pad_to_the_longest(case):
    """ActivationTransformer: NaN beyond each sequence, as padded positions are."""
    tokenizer = case[-1]
    features = token_features(LENGTHS, case[4])
    loader = _dynamic(tokenizer, features)
    fixed = _padded(tokenizer, features, max(LENGTHS))
    act = ActivationTransformer(case[1], case[2][0], **_common(case)).fit(loader)
    dynamic = act.transform(loader)
    assert dynamic.shape == (len(LENGTHS), max(LENGTHS) * act.activation_shape_[-1])
    np.testing.assert_allclose(dynamic, act.transform(fixed), atol=1e-12)


def test_data_frame_output_needs_the_fits_length(case):
    """set_output names the fit's columns: another length is refused, saying what to do."""
    pytest.importorskip("pandas")
    tokenizer, most = case[-1], case[-2]
    features = token_features(LENGTHS, case[4])
    lib = _lib(case, n_components=2).fit(_padded(tokenizer, features, most))
    lib.set_output(transform="pandas")
    frame = lib.transform(_padded(tokenizer, features, most))
    assert frame.shape == (len(LENGTHS), most * 2) and frame.columns[2] == "libtransformer0_pos1"
    with pytest.raises(
        ValueError, match=rf"sequences of 4 positions.*fit's {most}.*transform_tokens"
    ):
        lib.transform(_padded(tokenizer, token_features([2, 4], case[4]), 4))
    act = ActivationTransformer(case[1], case[2][0], **_common(case)).fit(
        _padded(tokenizer, features, most)
    )
    act.set_output(transform="pandas")
    with pytest.raises(ValueError, match="sequences of 4 positions"):
        act.transform(_padded(tokenizer, token_features([2, 4], case[4]), 4))


# -- sequences of token ids without padding: batches bucketed by length ----------------------
class PooledTokens(nn.Module):
    """Token ids -> embedding -> tanh(linear) -> a linear head on the mean over positions.

    The head is affine, so its section takes the affine route, whose rows are
    those of the first sample: they depend on the batch's length.
    """

    def __init__(self, vocab=11, d=6, n_out=5):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.fc = nn.Embedding(vocab, d), nn.Linear(d, d)
        self.head = Head(d, n_out)

    def forward(self, ids):
        return self.head(torch.tanh(self.fc(self.emb(ids))))


class Head(nn.Module):
    def __init__(self, d, n_out):
        super().__init__()
        self.lin = nn.Linear(d, n_out)

    def forward(self, h):
        return self.lin(h.mean(1))


class Buckets:
    """A re-iterable stream of unpadded batches, one length per batch."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        yield from (torch.as_tensor(b) for b in self.batches)


@pytest.mark.parametrize("lengths", [(2, 6, 4), (1, 6, 4), (6, 2, 4)])
def test_bucketed_batches_fit_as_autograd_at_every_length(lengths):
    """Closed forms decided on the first batch's length serve every other length."""
    rng = np.random.default_rng(0)
    stream = Buckets([rng.integers(0, 11, size=(n, L)) for n, L in zip((3, 4, 3), lengths)])
    model = PooledTokens().double()
    fits = {
        jacobian: LIBTransformer(model, "head", jacobian=jacobian, compute_graph=True).fit(stream)
        for jacobian in ("auto", "autograd")
    }
    auto, reference = fits["auto"], fits["autograd"]
    np.testing.assert_allclose(auto.lambdas_, reference.lambdas_, rtol=1e-10)
    for section, E in reference.interaction_graph_.edges.items():
        got = auto.interaction_graph_.edges[section]
        np.testing.assert_allclose(got, E, rtol=1e-9, atol=1e-12 * E.max())


def test_single_sequences_of_distinct_lengths_are_refused_saying_how_to_batch():
    rng = np.random.default_rng(0)
    stream = Buckets([rng.integers(0, 11, size=(1, L)) for L in [3, *[5] * 40]])
    with pytest.raises(ValueError, match="compare 2 samples of one length. Yield batches of two"):
        LIBTransformer(PooledTokens().double(), "head").fit(stream)


def test_a_flattened_pca_refuses_another_length_than_its_fit():
    """Its basis is of whole sequences of one length (it would read blocks of another)."""
    rng = np.random.default_rng(0)
    model = PooledTokens().double()
    pipe = Pipeline([("act", ActivationTransformer(model, "head")), ("pca", PCA())])
    pipe.fit(rng.integers(0, 11, size=(40, 6)))
    with (
        pytest.warns(FlattenedPositionsWarning),
        pytest.raises(ValueError, match="flattened PCA takes only the length it was fitted on"),
    ):
        ablation_curve(pipe, rng.integers(0, 11, size=(10, 12)), n_features=[2])


@pytest.mark.parametrize("padded", [False, True], ids=["arrays", "dynamic padding"])
def test_gpt2_unembedding_takes_the_rows_of_its_input(padded, capsys):
    """ln_f -> logits ends in lm_head (16 inputs, 20 logits) after ln_f alone, which keeps
    positions apart: 16 rows, each at every position, not 20 per position, with the
    Lambdas of all of autograd's rows (1e-12), padding or not."""
    pytest.importorskip("transformers", reason=MODELS_EXTRA)
    tokenizer = tiny_tokenizer(GPT2_VOCAB)
    features = token_features(LENGTHS, GPT2_VOCAB)
    X = _dynamic(tokenizer, features) if padded else _padded(tokenizer, features, 8)["input_ids"]
    model = tiny_gpt2().double()
    common = {"output": "logits", "forward_kwargs": {"use_cache": False}}
    fits = {
        jacobian: LIBTransformer(
            model, "transformer.ln_f", jacobian=jacobian, verbose=True, **common
        ).fit(X)
        for jacobian in ("auto", "autograd")
    }
    lines = capsys.readouterr().err
    assert "up to 16 backward rows per batch" in lines
    assert "through the final linear map's 16 inputs, each at every position (instead of 160)" in (
        lines
    )
    auto, reference = fits["auto"], fits["autograd"]
    np.testing.assert_allclose(
        auto.lambdas_, reference.lambdas_, rtol=1e-12, atol=1e-12 * reference.lambdas_[0]
    )

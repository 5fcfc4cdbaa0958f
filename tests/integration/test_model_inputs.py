"""Keyword inputs, padding, feature axes, batch coupling and skorch nets (issue 11, parts 3, 5-7).

The references are independent of the package: a model rewritten so that
its node layer is channels-last, scores computed with numpy over the valid
positions, and a skorch net's own ``module_``.
"""

from collections import OrderedDict, UserDict

import numpy as np
import pytest
import torch
from sklearn.metrics import r2_score
from torch import nn

from sklearn_lib import ActivationTransformer, LIBTransformer, ablation_curve

# -- a small masked token model (no transformers needed) -----------------------------


class MaskedMixer(nn.Module):
    """Tokens -> embedding -> causal masked mean (a residual) -> tanh MLP head.

    Padded positions (``attention_mask == 0``) are never attended to, so the
    valid positions' activations do not depend on what the padding holds.
    """

    def __init__(self, vocab=11, d=6, n_classes=5, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, d)
        self.mix = nn.Linear(d, d)
        self.block = nn.Linear(d, d)
        self.head = nn.Linear(d, n_classes)

    def forward(self, input_ids, attention_mask=None):
        h = self.embed(input_ids)  # (n, T, d)
        T = h.shape[1]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        w = torch.tril(torch.ones(T, T, dtype=h.dtype)) * attention_mask[:, None, :].to(h.dtype)
        w = w / w.sum(-1, keepdim=True).clamp(min=1)
        h = h + torch.tanh(self.mix(w @ h))
        return self.head(torch.tanh(self.block(h)))


def _sequences(rng, n=30, lengths=(3, 6), vocab=11):
    """Token ids padded to the longest length (pad id 0) and their attention mask."""
    T = max(lengths)
    ids = rng.integers(1, vocab, size=(n, T))
    mask = np.zeros((n, T), dtype=np.int64)
    for i in range(n):
        mask[i, : lengths[i % len(lengths)]] = 1
    return {"input_ids": np.where(mask == 1, ids, 0), "attention_mask": mask}


def _mixer_lib(model, **kwargs):
    return LIBTransformer(model.double(), "block", device="cpu", **kwargs)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_padding_content_does_not_change_the_basis(rng):
    X = _sequences(rng)
    other = {**X, "input_ids": np.where(X["attention_mask"] == 1, X["input_ids"], 7)}
    longer = {key: np.pad(value, ((0, 0), (0, 2))) for key, value in X.items()}
    a = _mixer_lib(MaskedMixer()).fit(X)
    for Y in (other, longer):
        b = _mixer_lib(MaskedMixer()).fit(Y)
        np.testing.assert_allclose(b.lambdas_, a.lambdas_, rtol=1e-10)
        np.testing.assert_allclose(b.mean_, a.mean_, rtol=1e-10, atol=1e-13)


def test_padded_positions_transform_to_nan_and_lambda_is_the_variance_of_valid_rows(rng):
    X = _sequences(rng)
    lib = _mixer_lib(MaskedMixer()).fit(X)
    Z = lib.transform(X).reshape(len(X["input_ids"]), lib.n_positions_, lib.n_components_)
    valid = X["attention_mask"] == 1
    assert np.isnan(Z[~valid]).all() and np.isfinite(Z[valid]).all()
    np.testing.assert_allclose(Z[valid].var(axis=0), lib.lambdas_, rtol=1e-9)
    raw = ActivationTransformer(lib.model, "block", device="cpu").fit_transform(X)
    raw = raw.reshape(*valid.shape, -1)
    assert np.isnan(raw[~valid]).all() and np.isfinite(raw[valid]).all()
    np.testing.assert_allclose(lib.mean_, raw[valid].mean(axis=0), rtol=1e-10, atol=1e-13)


def test_scores_count_only_valid_positions(rng):
    X = _sequences(rng)
    model = MaskedMixer().double()
    lib = _mixer_lib(model).fit(X)
    valid = X["attention_mask"] == 1
    with torch.no_grad():
        logits = model(**{k: torch.as_tensor(v) for k, v in X.items()}).numpy()
    y = rng.integers(0, 5, size=valid.shape)
    y_padded = np.where(valid, y, -100)  # Hugging Face's "ignore" label, never read
    expected = (logits.argmax(-1) == y)[valid].mean()
    assert lib.score(X, y_padded) == pytest.approx(expected, abs=1e-12)
    # Keeping 2 features: R² with the valid positions as rows, one mean per class.
    _, scores = ablation_curve(lib, X, n_features=[2])
    ablated = _ablated_logits(lib, model, X, 2)
    expected = r2_score(logits[valid], ablated[valid], multioutput="variance_weighted")
    assert scores[0] == pytest.approx(expected, rel=1e-9)
    # A callable gets the valid positions as rows.
    seen = {}

    def scoring(y_true, outputs):
        seen["shapes"] = (y_true.shape, outputs.shape)
        return r2_score(y_true, outputs)

    ablation_curve(lib, X, n_features=[2], scoring=scoring)
    assert seen["shapes"] == ((valid.sum(), 5), (valid.sum(), 5))


def _ablated_logits(lib, model, X, k):
    """Logits with ``block``'s input rebuilt from its top ``k`` LIB features (numpy reference)."""
    basis = lib.bases_["block"]
    C, C_pinv, mean = basis.matrix[:, :k], basis.pinv[:k], basis.mean

    def replace(module, args):
        f = args[0].numpy()
        return (torch.as_tensor((f - mean) @ C @ C_pinv + mean),)

    handle = model.block.register_forward_pre_hook(replace)
    try:
        with torch.no_grad():
            return model(**{key: torch.as_tensor(v) for key, v in X.items()}).numpy()
    finally:
        handle.remove()


def test_every_form_of_keyword_inputs_fits_alike(rng):
    X = _sequences(rng)
    expected = _mixer_lib(MaskedMixer(), batch_size=7).fit(X).lambdas_
    n = len(X["input_ids"])
    records = [{key: value[i] for key, value in X.items()} for i in range(n)]
    tensors = {key: torch.as_tensor(value) for key, value in X.items()}

    class Batches:
        def __iter__(self):
            for start in range(0, n, 7):
                yield {key: value[start : start + 7] for key, value in tensors.items()}

    forms = {
        "tensors": tensors,
        "UserDict (like BatchEncoding)": UserDict(X),
        "records": records,
        "stream of dicts": Batches(),
        "DataLoader": torch.utils.data.DataLoader(records, batch_size=7),
    }
    for name, form in forms.items():
        lib = _mixer_lib(MaskedMixer(), batch_size=7).fit(form)
        np.testing.assert_allclose(lib.lambdas_, expected, rtol=1e-10, err_msg=name)
        assert lib.input_shape_ == {"input_ids": (6,), "attention_mask": (6,)}
        assert lib.transform(form).shape == (n, 6 * lib.n_components_)


@pytest.mark.parametrize(
    "X, match",
    [
        ({"input_ids": np.ones((4, 3), int), "attention_mask": np.ones((5, 3), int)}, "different"),
        ([{"input_ids": np.ones(3, int)}, {"input_ids": np.ones(4, int)}], "pad the samples"),
        ([{"input_ids": np.ones(3, int)}, {"ids": np.ones(3, int)}], "same fields"),
        ({"input_ids": np.array(["a", "b"])}, "not numbers"),
        ({"input_ids": np.float64(3.0)}, r"one row per sample"),
        ({}, "empty dict"),
    ],
)
def test_bad_keyword_inputs_are_refused_by_name(X, match):
    with pytest.raises(ValueError, match=match):
        _mixer_lib(MaskedMixer()).fit(X)


def test_keyword_inputs_must_stay_keyword_inputs(rng):
    X = _sequences(rng)
    lib = _mixer_lib(MaskedMixer()).fit(X)
    with pytest.raises(ValueError, match=r"fitted on a dict of keyword inputs \['input_ids'"):
        lib.transform(X["input_ids"])
    with pytest.raises(ValueError, match="fields of per-sample shapes"):
        lib.transform({"input_ids": X["input_ids"]})
    clash = _mixer_lib(MaskedMixer(), forward_kwargs={"attention_mask": None})
    with pytest.raises(ValueError, match=r"both give the keyword argument\(s\) \['attention_mask"):
        clash.fit(X)


# -- feature axes ----------------------------------------------------------------------


class ConvNet(nn.Module):
    """Conv1d or Conv2d maps with two node layers, optionally read channels-last.

    ``channels_last=True`` rewrites the model so that the activations at the
    identity modules ``node`` and ``node2`` are channels-last maps: the same
    function, for a reference that needs no ``feature_axis``.
    """

    def __init__(self, dims=2, channels_last=False, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        conv = nn.Conv2d if dims == 2 else nn.Conv1d
        self.stem = conv(3, 5, 3, padding=1)
        self.node = nn.Identity()
        self.mix = conv(5, 4, 3, padding=1)
        self.node2 = nn.Identity()
        self.head = nn.Linear(4, 3)
        self.channels_last = channels_last

    def _read(self, node, h):
        if self.channels_last:
            return node(torch.movedim(h, 1, -1)).movedim(-1, 1)
        return node(h)

    def forward(self, x):
        h = self._read(self.node, torch.tanh(self.stem(x)))  # (n, C, *spatial)
        h = self._read(self.node2, torch.tanh(self.mix(h)))
        return self.head(h.flatten(2).mean(-1))


@pytest.mark.parametrize("dims", [1, 2])
def test_feature_axis_equals_a_channels_last_rewrite_of_the_model(dims):
    """Channels as features over positions, the same as the channels-last node of a rewrite."""
    X = np.random.default_rng(1).normal(size=(20, 3, *([4] * dims)))
    common = dict(downstream_layers=["node2"], device="cpu")
    fitted = LIBTransformer(ConvNet(dims).double(), "node", feature_axis=1, **common).fit(X)
    # feature_axis=-1 is the last axis: nothing moves (4-D maps just need it said).
    channels_last = ConvNet(dims, channels_last=True).double()
    rewrite = LIBTransformer(channels_last, "node", feature_axis=-1, **common).fit(X)
    assert fitted.activation_shape_ == rewrite.activation_shape_ == (*([4] * dims), 5)
    assert fitted.n_positions_ == 4**dims
    for name in ("node", "node2"):
        np.testing.assert_allclose(
            fitted.bases_[name].lambdas, rewrite.bases_[name].lambdas, rtol=1e-10, atol=1e-14
        )
    np.testing.assert_allclose(fitted.transform(X), rewrite.transform(X), rtol=1e-9, atol=1e-12)
    assert fitted.score(X) == pytest.approx(1.0, abs=1e-10)


def test_feature_axis_minus_one_reads_channels_last_maps():
    X = np.random.default_rng(1).normal(size=(12, 3, 4, 4))
    model = ConvNet(2, channels_last=True).double()
    lib = LIBTransformer(model, "node", feature_axis=-1, device="cpu").fit(X)
    assert lib.activation_shape_ == (4, 4, 5)


@pytest.mark.parametrize(
    "axis, match",
    [(0, "other than the batch axis 0"), (4, "does not name a feature axis"), (-4, "batch axis")],
)
def test_a_feature_axis_that_is_no_axis_is_refused(axis, match):
    X = np.random.default_rng(1).normal(size=(6, 3, 4, 4))
    with pytest.raises(ValueError, match=match):
        LIBTransformer(ConvNet().double(), "node", feature_axis=axis, device="cpu").fit(X)


def test_a_bool_feature_axis_is_refused():
    X = np.random.default_rng(1).normal(size=(6, 3, 4, 4))
    with pytest.raises(ValueError, match="feature_axis"):
        LIBTransformer(ConvNet().double(), "node", feature_axis=True).fit(X)


def test_a_4d_map_without_feature_axis_names_both_conventions():
    X = np.random.default_rng(1).normal(size=(6, 3, 4, 4))
    for estimator in (LIBTransformer, ActivationTransformer):
        with pytest.raises(ValueError, match="feature_axis=1 for channels-first.*channels-last"):
            estimator(ConvNet().double(), "node", device="cpu").fit(X)


# -- batch coupling before the first node layer ----------------------------------------


class NeighbourMix(nn.Module):
    """Adds the next sample's values: samples interact, asymmetrically."""

    def forward(self, x):
        return x + 0.5 * torch.roll(x, 1, dims=0)


def _coupled(kind):
    torch.manual_seed(0)
    coupling = {
        "batch statistics": nn.BatchNorm1d(8, track_running_stats=False),
        "neighbours": NeighbourMix(),
        "running statistics": nn.BatchNorm1d(8),  # eval mode: per-sample, no coupling
    }[kind]
    return nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(4, 8),
            couple=coupling,
            fc2=nn.Linear(8, 8),
            act=nn.Tanh(),
            fc3=nn.Linear(8, 3),
        )
    ).double()


@pytest.mark.parametrize("kind", ["batch statistics", "neighbours"])
@pytest.mark.parametrize("estimator", [LIBTransformer, ActivationTransformer])
def test_samples_interacting_before_the_node_layer_are_named(kind, estimator):
    X = np.random.default_rng(0).normal(size=(40, 4))
    with pytest.raises(
        ValueError, match=r"Samples interact within a batch before node layer 'fc2'.*BatchNorm"
    ):
        estimator(_coupled(kind), "fc2", device="cpu").fit(X)


def test_a_batchnorm_with_running_statistics_before_the_node_layer_is_fine():
    X = np.random.default_rng(0).normal(size=(40, 4))
    lib = LIBTransformer(_coupled("running statistics"), "fc2", device="cpu").fit(X)
    assert lib.score(X) == pytest.approx(1.0, abs=1e-10)


# -- skorch ----------------------------------------------------------------------------


def _skorch_net(fit=True):
    skorch = pytest.importorskip("skorch", reason="needs skorch (pip install -e '.[models]')")
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    X = ((X - X.mean(0)) / X.std(0)).astype(np.float32)
    torch.manual_seed(0)
    module = nn.Sequential(OrderedDict(fc1=nn.Linear(4, 16), act=nn.Tanh(), fc2=nn.Linear(16, 3)))
    net = skorch.NeuralNetClassifier(
        module, max_epochs=3, lr=0.1, train_split=None, verbose=0, criterion=nn.CrossEntropyLoss
    )
    if fit:
        net.fit(X, y)
    return net, X, y


def test_a_skorch_net_is_read_through_its_module():
    net, X, y = _skorch_net()
    before = {k: v.clone() for k, v in net.module_.state_dict().items()}
    lib = LIBTransformer(net, "fc2", device="cpu").fit(X)
    direct = LIBTransformer(net.module_, "fc2", device="cpu").fit(X)
    np.testing.assert_allclose(lib.lambdas_, direct.lambdas_, rtol=1e-12)
    assert lib.score(X, y) == pytest.approx(direct.score(X, y))
    assert ActivationTransformer(net, "fc2", device="cpu").fit_transform(X).shape == (150, 16)
    for key, value in net.module_.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_a_skorch_net_in_a_grid_search():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline

    net, X, y = _skorch_net()
    pipe = Pipeline(
        [("lib", LIBTransformer(net, "fc2", device="cpu")), ("clf", LogisticRegression())]
    )
    search = GridSearchCV(pipe, {"lib__n_components": [1, 3]}, cv=3).fit(X, y)
    assert search.best_estimator_.named_steps["lib"].model is net
    assert search.best_params_["lib__n_components"] in (1, 3)


def test_an_uninitialised_skorch_net_says_to_pass_its_module():
    net, X, _ = _skorch_net(fit=False)
    with pytest.raises(ValueError, match=r"not initialised.*pass net\.module_"):
        LIBTransformer(net, "fc2", device="cpu").fit(X)


def test_a_model_that_is_no_module_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"must be a torch.nn.Module \(or a skorch net") as info:
        LIBTransformer(object(), "fc2").fit(np.zeros((4, 4)))
    assert "\n" not in str(info.value)


def test_padded_positions_survive_the_way_back(rng):
    X = _sequences(rng)
    lib = _mixer_lib(MaskedMixer()).fit(X)
    valid = X["attention_mask"] == 1
    rebuilt = lib.inverse_transform(lib.transform(X)).reshape(*valid.shape, -1)
    raw = ActivationTransformer(lib.model, "block", device="cpu").fit_transform(X)
    np.testing.assert_allclose(rebuilt[valid], raw.reshape(*valid.shape, -1)[valid], atol=1e-12)
    assert np.isnan(rebuilt[~valid]).all()
    Z = lib.transform_activations(raw).reshape(*valid.shape, -1)
    assert np.isnan(Z[~valid]).all() and np.isfinite(Z[valid]).all()
    stray = lib.transform(X)
    stray[0, 0] = np.nan  # one column of a valid position: a missing value
    with pytest.raises(ValueError, match="NaN outside whole positions"):
        lib.inverse_transform(stray)


# -- what a fit will run ----------------------------------------------------------------


def test_a_long_fit_says_its_passes_and_rows_at_the_start(rng, monkeypatch, caplog):
    import sklearn_lib._fitting.plan as plan

    X = _sequences(rng)
    with caplog.at_level("WARNING", logger="sklearn_lib"):
        _mixer_lib(MaskedMixer(), downstream_layers=[]).fit(X)
    assert not caplog.records  # a short fit prints nothing
    monkeypatch.setattr(plan, "LONG_FIT_SECONDS", 0.0)
    with caplog.at_level("WARNING", logger="sklearn_lib"):
        _mixer_lib(MaskedMixer()).fit(X)
    (record,) = caplog.records
    # T = 6 output positions times 5 classes: 30 rows per batch, exact.
    assert record.getMessage().startswith("[LIBTransformer] fitting runs 1 pass(es) over 30")
    message = record.getMessage()
    # (the mixer's section: its trace's rows, the mask read as the model reads it)
    assert "'block' -> 'output': up to 30 rows per batch by closed-form rows, within the" in message
    assert "n_stochastic_sources=S" in record.getMessage()


# -- review findings -----------------------------------------------------------------


def test_a_negative_feature_axis_leaves_a_2d_output_alone():
    X = np.random.default_rng(1).normal(size=(12, 3, 4, 4))
    a = LIBTransformer(ConvNet().double(), "node", feature_axis=-3, device="cpu").fit(X)
    b = LIBTransformer(ConvNet().double(), "node", feature_axis=1, device="cpu").fit(X)
    np.testing.assert_allclose(a.lambdas_, b.lambdas_, rtol=1e-12)


class PerPositionHead(nn.Module):
    """Conv1d body (channels-first) and a per-position head: a features-last output."""

    def __init__(self, classes=6):
        super().__init__()
        torch.manual_seed(0)
        self.stem, self.node = nn.Conv1d(3, 5, 3, padding=1), nn.Identity()
        self.head = nn.Linear(5, classes)

    def forward(self, x):
        return self.head(self.node(torch.tanh(self.stem(x))).transpose(1, 2))  # (n, L, classes)


def test_a_dict_feature_axis_gives_each_node_its_own():
    X = np.random.default_rng(1).normal(size=(12, 3, 6))
    model = PerPositionHead().double()
    with torch.no_grad():
        y = model(torch.as_tensor(X)).argmax(-1).numpy()  # (n, L)
    lib = LIBTransformer(model, "node", feature_axis={"node": 1}, device="cpu").fit(X)
    assert lib.activation_shape_ == (6, 5) and lib.output_shape_ == (6, 6)
    assert lib.score(X, y) == 1.0
    with pytest.raises(ValueError, match=r"feature_axis names \['nod'\]"):
        LIBTransformer(model, "node", feature_axis={"nod": 1}, device="cpu").fit(X)


def test_hugging_face_ignore_labels_are_not_scored_anywhere(rng):
    X = _sequences(rng)
    model = MaskedMixer().double()
    lib = _mixer_lib(model).fit(X)
    valid = X["attention_mask"] == 1
    with torch.no_grad():
        predicted = model(**{k: torch.as_tensor(v) for k, v in X.items()}).argmax(-1).numpy()
    y = np.where(valid, rng.integers(0, 5, size=valid.shape), -100)
    y[:, 0] = -100  # a special token: a real position, not scored
    scored = y != -100
    assert lib.score(X, y) == pytest.approx((predicted == y)[scored].mean(), abs=1e-12)
    with pytest.raises(ValueError, match="or -100 where a position is not scored"):
        lib.score(X, np.where(valid, -1, -100))


def test_a_stream_of_single_samples_is_refused_and_a_list_of_them_is_a_batch(rng):
    X = _sequences(rng, n=12)

    class Rows:  # iterates like a Hugging Face data set: one dict per sample
        def __iter__(self):
            for i in range(12):
                yield {key: value[i] for key, value in X.items()}

    with pytest.raises(ValueError, match="dict of 1-D fields.*collate the samples"):
        _mixer_lib(MaskedMixer()).fit(Rows())
    records = [{key: value[i] for key, value in X.items()} for i in range(12)]
    listed = torch.utils.data.DataLoader(records, batch_size=5, collate_fn=lambda b: b)
    expected = _mixer_lib(MaskedMixer()).fit(X).lambdas_
    np.testing.assert_allclose(_mixer_lib(MaskedMixer()).fit(listed).lambdas_, expected, rtol=1e-10)


class PaddedMLP(nn.Module):
    """Token ids and a mask -> embeddings -> an ``nn.Sequential`` MLP applied per position."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(10, 6)
        self.mlp = nn.Sequential(
            nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 5)
        )

    def forward(self, input_ids, attention_mask):
        return self.mlp(self.emb(input_ids))


@pytest.mark.parametrize("where", ["in the probe", "after the probe"])
def test_padded_positions_count_nowhere_on_closed_form_sections(where):
    """Linear -> elementwise sections whose positions the mask covers take autograd alone:
    their closed form (gathered in the statistics pass) knows nothing of padding."""
    g = torch.Generator().manual_seed(1)
    n, T = 200, 5
    ids = torch.randint(0, 10, (n, T), generator=g)
    mask = torch.ones(n, T, dtype=torch.long)
    lengths = torch.randint(2, T + 1, (n,), generator=g)
    for i in range(64 if where == "after the probe" else 0, n):
        mask[i, lengths[i] :] = 0
    X = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    params = dict(downstream_layers=["mlp.2"], batch_size=50)
    lib = LIBTransformer(PaddedMLP().double(), "mlp.0", **params).fit(X)
    # The reference: every real token as a sequence of one, all of it valid.
    tokens = ids[mask.bool()].reshape(-1, 1).numpy()
    real = {"input_ids": tokens, "attention_mask": np.ones_like(tokens)}
    ref = LIBTransformer(PaddedMLP().double(), "mlp.0", jacobian="autograd", **params).fit(real)
    for name in ("mlp.0", "mlp.2"):
        np.testing.assert_allclose(lib.bases_[name].lambdas, ref.bases_[name].lambdas, rtol=1e-9)

"""Input forms and misuse at every entry point that reads data.

Each kind of input (NaN, inf, wrong shapes and dtypes, sparse matrices,
one-shot generators, meta tensors, ragged lists, ...) goes to each entry
point (refit, transform, score, interaction_graph, transform_tokens,
ablation_curve, features_needed, ActivationTransformer) of a fitted tanh
MLP.  A bad input must get a clear error naming it and leave the estimator
(and the input) as they were; an input that is valid in another form must
give the result of its plain float64 form.
"""

import numpy as np
import scipy.sparse
import torch
from sklearn.base import clone
from torch.utils.data import DataLoader

from sklearn_lib import (
    ActivationTransformer,
    FeatureDashboard,
    LIBTransformer,
    ablation_curve,
    features_needed,
)

from . import fixtures as F
from . import models as M
from . import reference as R
from .harness import Raises, Trial, add, temp_dir

GROUP = "inputs: bad X at every entry point"
VALID = "inputs: other forms of valid X"
LABELS = "inputs: labels y"
SEQ = "inputs: token ids and dicts"

ENTRY = {
    "fit": lambda lib, X: lib.fit(X),
    "transform": lambda lib, X: lib.transform(X),
    "score": lambda lib, X: lib.score(X),
    "interaction_graph": lambda lib, X: lib.interaction_graph(X),
    "transform_tokens": lambda lib, X: lib.transform_tokens(X),
    "ablation_curve": lambda lib, X: ablation_curve(lib, X, n_features=[1, 2]),
    "features_needed": lambda lib, X: features_needed(lib, X),
    "ActivationTransformer.fit": lambda lib, X: ActivationTransformer(lib.model, "fc2").fit(X),
    "FeatureDashboard": lambda lib, X: FeatureDashboard.from_estimator(
        lib, X, n_features=2, n_examples=2, graph=None
    ),
}


def _nan_row(row):
    def make(X):
        X = X.copy()
        X[row, 1] = np.nan
        return X

    return make


def _with(value):
    def make(X):
        X = X.copy()
        X[3, 2] = value
        return X

    return make


class OneShot:
    """Not re-iterable: ``__iter__`` returns the same exhausted-after-one-pass iterator."""

    def __init__(self, X):
        self.it = iter([torch.as_tensor(X[i : i + 32]) for i in range(0, len(X), 32)])

    def __iter__(self):
        return self.it


def _stream_nan_second(X):
    X = X.copy()
    X[40, 0] = np.nan
    return DataLoader(torch.as_tensor(X), batch_size=32)


def _meta(X):
    return torch.empty(X.shape, device="meta", dtype=torch.float64)


#: kind -> (make bad X from a clean (120, 4) float64 X, regex the message must match)
BAD = {
    "NaN in row 0": (_nan_row(0), r"nan|finite"),
    "NaN in row 100 (after the probe)": (_nan_row(100), r"nan|finite"),
    "+inf": (_with(np.inf), r"inf|finite"),
    "-inf": (_with(-np.inf), r"inf|finite"),
    "complex values": (lambda X: X + 1j, r"complex"),
    "strings": (lambda X: np.full(X.shape, "abc"), r"str|numeric|convert|dtype|float"),
    "1-D": (lambda X: X[:, 0], r"1d|2d|reshape|dimension|shape"),
    "(n, 4, 1)": (lambda X: X[:, :, None], r"shape|dimension|features"),
    "5 columns": (lambda X: np.hstack([X, X[:, :1]]), r"5|features|shape"),
    "0 samples": (lambda X: X[:0], r"0 sample|empty|minimum|at least"),
    "scipy sparse": (lambda X: scipy.sparse.csr_matrix(X), r"sparse|dense"),
    "a one-shot iterator": (OneShot, r"iterator|iter|stream|start over"),
    "a generator object": (
        lambda X: (torch.as_tensor(X[i : i + 32]) for i in range(0, 120, 32)),
        r"iterator|generator|stream|start over",
    ),
    "int64 values for a float model": (lambda X: (X * 10).astype(np.int64), r"int|dtype|float"),
    "ragged list": (
        lambda X: [list(r) for r in X[:5]] + [[1.0, 2.0]],
        r"ragged|shape|inhomog"
        r"|sequence|length",
    ),
    "dict for a positional model": (lambda X: {"x": X}, r"keyword|dict|\*\*|fields"),
    "meta tensor": (_meta, r"meta"),
    "pandas with a string column": (
        lambda X: __import__("pandas").DataFrame(
            {"a": X[:, 0], "b": ["s"] * len(X), "c": X[:, 2], "d": X[:, 3]}
        ),
        r"str|convert|numeric|dtype|float",
    ),
    "list of tensors of two shapes": (
        lambda X: [torch.as_tensor(X[0]), torch.as_tensor(X[1, :3])],
        r"shape|ragged|stack|size",
    ),
    "None": (lambda X: None, r"None|X|array"),
    "a scalar": (lambda X: 3.0, r"scalar|2d|array|sample"),
    "NaN in a stream's second batch": (_stream_nan_second, r"nan|finite"),
    "a DataLoader of 5-wide rows": (
        lambda X: DataLoader(torch.as_tensor(np.hstack([X, X[:, :1]])), batch_size=32),
        r"shape|5|features",
    ),
    "a DataLoader of dicts": (
        lambda X: DataLoader([{"x": torch.as_tensor(r)} for r in X], batch_size=32),
        r"keyword|dict|\*\*|fields",
    ),
    "float16 overflow (1e5 as half)": (
        lambda X: torch.as_tensor(X * 1e5).half(),
        r"inf|finite|overflow",
    ),
}

#: Bad kinds that are fine for some entry points.
EXEMPT = {("0 samples", "features_needed")}

#: Bad kinds that an entry point may take (a fit of ActivationTransformer reads only the
#: probe of a stream, so it need not see a later batch's NaN).
MAY_TAKE = {("NaN in a stream's second batch", "ActivationTransformer.fit")}


def _bad_case(kind, entry):
    make, match = BAD[kind]

    def setup():
        lib, X = F.mlp_fit()
        bad = make(X)
        return Trial(
            lambda: ENTRY[entry](lib, bad),
            raises=Raises(match),
            either=(kind, entry) in MAY_TAKE,
            watch={"model": lib.model, "estimator": lib, "X": bad},
        )

    return setup


#: kind -> make a valid X in another form; its results equal those of the float64 array.
OTHER_FORMS = {
    "float32 array": lambda X: X.astype(np.float32),
    "float16 tensor": lambda X: torch.as_tensor(X).half(),
    "bfloat16 tensor": lambda X: torch.as_tensor(X).bfloat16(),
    "long double array": lambda X: X.astype(np.longdouble),
    "np.matrix": lambda X: np.asmatrix(X),
    "memmap": lambda X: _memmap(X),
    "masked array without a mask": lambda X: np.ma.masked_array(X),
    "list of tuples": lambda X: [tuple(r) for r in X],
    "tuple of arrays": lambda X: tuple(X),
    "DataLoader, batch_size=1": lambda X: DataLoader(torch.as_tensor(X), batch_size=1),
    "DataLoader with a partial last batch": lambda X: DataLoader(torch.as_tensor(X), batch_size=50),
    "DataLoader of (x, y) lists": lambda X: DataLoader(
        list(zip(torch.as_tensor(X), torch.zeros(len(X)))), batch_size=32
    ),
    "stream of numpy batches": lambda X: _Batches(X),
    "stream of list-of-rows batches": lambda X: _Batches(X, form=lambda b: list(b)),
    "stream with empty batches between": lambda X: _Batches(X, empty=True),
    "tensor of int64 that holds integers (float model)": None,  # a bad kind, see BAD
    "integer-valued floats": lambda X: np.round(X * 4),
    "non-contiguous tensor (every other column of 8)": lambda X: torch.as_tensor(
        np.repeat(X, 2, axis=1)
    )[:, ::2],
    "tensor on the CPU with requires_grad": lambda X: torch.as_tensor(X).requires_grad_(True),
    "pandas DataFrame": lambda X: __import__("pandas").DataFrame(X),
    "numbers as strings in an object array": lambda X: X.astype(str).astype(object),
}

#: Forms scikit-learn itself refuses or that torch has no dtype for: a clear refusal is fine.
MAY_REFUSE = {"np.matrix", "long double array", "numbers as strings in an object array"}


def _memmap(X):
    import tempfile

    f = tempfile.NamedTemporaryFile(suffix=".dat", delete=False, dir=temp_dir())
    m = np.memmap(f.name, dtype=np.float64, mode="w+", shape=X.shape)
    m[:] = X
    m.flush()
    return np.memmap(f.name, dtype=np.float64, mode="r", shape=X.shape)


class _Batches:
    def __init__(self, X, size=32, form=lambda b: b, empty=False):
        self.X, self.size, self.form, self.empty = X, size, form, empty

    def __iter__(self):
        for i in range(0, len(self.X), self.size):
            if self.empty:
                yield self.X[:0]
            yield self.form(self.X[i : i + self.size])


def _plain(form, X):
    """The float64 array a valid form holds."""
    if form in ("float16 tensor", "bfloat16 tensor"):
        t = (
            torch.as_tensor(X).half()
            if form.startswith("float16")
            else torch.as_tensor(X).bfloat16()
        )
        return t.double().numpy()
    if form == "float32 array":
        return X.astype(np.float32).astype(np.float64)
    if form == "integer-valued floats":
        return np.round(X * 4)
    return X


VALID_ENTRY = {
    "fit": lambda lib, X: clone(lib).fit(X).lambdas_,
    "transform": lambda lib, X: lib.transform(X),
    "score": lambda lib, X: lib.score(X),
    "ablation_curve": lambda lib, X: ablation_curve(lib, X, n_features=[0, 2])[1],
    "ActivationTransformer.transform": lambda lib, X: (
        ActivationTransformer(lib.model, "fc2").fit(X).transform(X)
    ),
    "FeatureDashboard": lambda lib, X: (
        FeatureDashboard.from_estimator(lib, X, n_features=2, n_examples=3, graph=None)
        .examples["LIB"]["fc2"]
        .values
    ),
}


def _valid_case(form, entry):
    def setup():
        lib, X = F.mlp_fit()
        data = OTHER_FORMS[form](X)
        plain = _plain(form, X)
        want = VALID_ENTRY[entry](lib, plain)
        return Trial(
            lambda: VALID_ENTRY[entry](lib, data),
            lambda got: R.close(np.asarray(got, dtype=float), want, rtol=1e-9, atol=1e-12),
            raises=Raises(r"matrix|longdouble|long double|dtype|str")
            if form in MAY_REFUSE
            else None,
            either=True,
            watch={"model": lib.model, "estimator": lib}
            | ({} if form.startswith("memmap") else {"X": data}),
        )

    return setup


def register_bad_inputs():
    for kind in BAD:
        for entry in ENTRY:
            if (kind, entry) in EXEMPT:
                continue
            add(
                GROUP,
                f"{entry}: {kind}",
                _bad_case(kind, entry),
                quick=entry == "transform" or kind == "NaN in row 0",
            )


def register_valid_forms():
    for form, make in OTHER_FORMS.items():
        if make is None:
            continue
        for entry in VALID_ENTRY:
            add(
                VALID,
                f"{entry}: {form}",
                _valid_case(form, entry),
                quick=entry == "transform" and form in ("float32 array", "np.matrix"),
            )


def register_one_sample():
    """One sample: a fit refuses it, R2 is undefined, the rest is defined."""

    def setup_for(entry, expect_error):
        def setup():
            lib, X = F.mlp_fit()
            one = X[:1]
            call = {
                "fit": lambda: clone(lib).fit(one),
                "transform": lambda: lib.transform(one),
                "score (R2)": lambda: lib.score(one),
                "score (accuracy)": lambda: lib.score(one, [0]),
                "interaction_graph": lambda: lib.interaction_graph(one),
                "transform_tokens": lambda: lib.transform_tokens(one)[0],
            }[entry]
            if expect_error:
                return Trial(call, raises=Raises(expect_error), watch={"estimator": lib})
            return Trial(
                call, lambda got: None if got is not None else "None", watch={"estimator": lib}
            )

        return setup

    for entry, err in [
        ("fit", r"2 sample|at least|minimum"),
        ("transform", None),
        ("score (R2)", r"2 sample|at least"),
        ("score (accuracy)", None),
        ("interaction_graph", None),
        ("transform_tokens", None),
    ]:
        add(GROUP, f"one sample: {entry}", setup_for(entry, err))


# -- labels ---------------------------------------------------------------------------------


def _accuracy_ref(lib, X, y, k):
    """Accuracy of the model with the top ``k`` features of ``lib.layer`` kept."""
    b = lib.bases_[lib.layer]
    abl = R.ablated_outputs(
        lib.model, X, lib.layer, b.mean, np.asarray(b.matrix)[:, :k], np.asarray(b.pinv)[:k]
    )
    y = y.numpy() if torch.is_tensor(y) else np.asarray(y)
    return R.accuracy(y.ravel(), abl.numpy())


def register_labels():
    def case(name, make_y, match=None, *, either=False, entry="score"):
        def setup():
            lib, X = F.mlp_fit()
            y = make_y(F.labels_of(lib, X))
            K = lib.bases_[lib.layer].lambdas.size
            k, call = {
                "score": (lib.n_components_, lambda: lib.score(X, y)),
                "ablation_curve": (3, lambda: ablation_curve(lib, X, y, n_features=[3])[1][0]),
                "features_needed": (K, lambda: features_needed(lib, X, y).baseline),
            }[entry]
            check = None
            if match is None or either:
                want = _accuracy_ref(lib, X, make_y(F.labels_of(lib, X)), k)

                def check(got):
                    return R.close(got, want, 1e-12, 1e-12, what="accuracy")

            return Trial(
                call,
                check,
                raises=Raises(match) if match else None,
                either=either,
                watch={"y": y, "estimator": lib, "X": X},
            )

        add(LABELS, f"{entry}: {name}", setup, quick=name == "wrong length")

    for entry in ("score", "ablation_curve", "features_needed"):
        case("wrong length", lambda y: y[:-3], r"y|sample|length|inconsistent", entry=entry)
        case(
            "NaN",
            lambda y: np.where(np.arange(len(y)) == 2, np.nan, y),
            r"nan|y|finite|integer",
            entry=entry,
        )
        case("strings", lambda y: y.astype(str), r"y|str|label|integer|numeric", entry=entry)
        case("fractional floats", lambda y: y + 0.5, r"y|integer|label|class|whole", entry=entry)
        case("one-hot 2-D", lambda y: np.eye(3)[y], r"y|shape|dimension|position", entry=entry)
        case(
            "a class beyond the outputs (7 of 3)",
            lambda y: np.where(y == 0, 7, y),
            r"y|class|label|range",
            either=True,
            entry=entry,
        )
        case("every label -100", lambda y: np.full_like(y, -100), r"-100", entry=entry)
        case("a tensor", lambda y: torch.as_tensor(y), entry=entry)
        case("a pandas Series", lambda y: __import__("pandas").Series(y), entry=entry)
        case("a list", lambda y: list(y), entry=entry)
        case("bools", lambda y: y.astype(bool), r"y|bool|label|integer", either=True, entry=entry)


# -- token ids, dicts and sequences ---------------------------------------------------------


def register_sequences():
    def token(name, make, match, *, entry="transform", either=False):
        def setup():
            model = M.TokenMixer().double()
            ids = M.rng().integers(0, 7, size=(60, 3))
            lib = LIBTransformer(model, "mix", downstream_layers=["head"]).fit(ids)
            bad = make(ids)
            call = {
                "transform": lambda: lib.transform(bad),
                "fit": lambda: lib.fit(bad),
                "score": lambda: lib.score(bad),
            }[entry]
            return Trial(
                call,
                raises=Raises(match),
                either=either,
                watch={"model": model, "estimator": lib, "X": bad},
            )

        add(SEQ, f"token ids, {entry}: {name}", setup)

    for entry in ("fit", "transform", "score"):
        token(
            "id 99 of a vocabulary of 7",
            lambda ids: np.where(ids == 3, 99, ids),
            r"batch|index|99|vocabulary",
            entry=entry,
        )
        token("negative ids", lambda ids: -ids - 1, r"batch|index|negative|vocabulary", entry=entry)
        token(
            "ids as floats",
            lambda ids: ids.astype(float) + 0.5,
            r"dtype|float|int|batch",
            entry=entry,
        )
        # transform reads only up to the node layer, where 4 tokens are valid activations.
        token(
            "4 positions for a 3-position model",
            lambda ids: np.hstack([ids, ids[:, :1]]),
            r"position|shape|batch|4",
            entry=entry,
            either=entry == "transform",
        )

    def gpt(name, make, match, *, entry="transform", either=False, check=None):
        def setup():
            lib, ids = F.gpt2_fit()
            data = make(ids)
            call = {
                "transform": lambda: lib.transform(data),
                "fit": lambda: lib.fit(data),
                "score": lambda: lib.score(data),
                "transform_tokens": lambda: lib.transform_tokens(data)[0],
            }[entry]
            return Trial(
                call,
                check,
                raises=Raises(match) if match else None,
                either=either,
                watch={"estimator": lib, "X": data},
                mem_mb=600,
            )

        add(SEQ, f"GPT-2, {entry}: {name}", setup, quick=name.startswith("10 tokens"))

    def lengths_differ(ids):
        return {"input_ids": ids, "attention_mask": np.ones((len(ids), 6), dtype=np.int64)}

    def rows_differ(ids):
        return {"input_ids": ids, "attention_mask": np.ones((len(ids) - 2, 8), dtype=np.int64)}

    def with_text(ids):
        return {"input_ids": ids, "text": np.array(["a"] * len(ids))}

    for entry in ("fit", "transform", "score", "transform_tokens"):
        gpt(
            "10 tokens into 8 positions",
            lambda ids: np.hstack([ids, ids[:, :2]]),
            r"position|8|10",
            entry=entry,
        )
        gpt(
            "mask narrower than the ids",
            lengths_differ,
            r"attention_mask|shape|length|6",
            entry=entry,
        )
        gpt(
            "fields with different numbers of rows",
            rows_differ,
            r"rows|sample|22|24|length",
            entry=entry,
        )
        gpt("a field of strings", with_text, r"text|str|dtype|numeric", entry=entry)
        gpt(
            "ids as a 1-D array",
            lambda ids: ids[:, 0],
            r"shape|dimension|1d|2d|position",
            entry=entry,
            either=entry == "fit",
        )
        gpt(
            "mask of 2s",
            lambda ids: {"input_ids": ids, "attention_mask": np.full(ids.shape, 2)},
            r"attention_mask|0|1",
            entry=entry,
        )
        gpt(
            "float mask of 0.5",
            lambda ids: {"input_ids": ids, "attention_mask": np.full(ids.shape, 0.5)},
            r"attention_mask|0|1",
            entry=entry,
        )
    gpt(
        "a dict after a fit on arrays",
        lambda ids: {"input_ids": ids},
        r"dict|fields|input_ids|array",
        either=True,
    )
    gpt(
        "an empty sequence (0 positions)",
        lambda ids: ids[:, :0],
        r"position|length|empty|0",
        either=True,
    )

    def bert_missing_mask():
        model = M.tiny_bert().eval()
        ids = M.token_ids(16, 6, vocab=M.BERT_VOCAB)
        data = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        lib = LIBTransformer(model, "encoder.layer.1", output="last_hidden_state").fit(data)
        return Trial(
            lambda: lib.transform({"input_ids": ids}),
            raises=Raises(r"attention_mask|fields"),
            either=True,
            check=lambda Z: R.close(Z, lib.transform(data), 1e-9, 1e-12),
            watch={"estimator": lib},
        )

    add(SEQ, "BERT: transform without the mask it was fitted with", bert_missing_mask)

    def conv(name, make, match, either=False):
        def setup():
            model = M.small_resnet()
            X = M.images(8)
            lib = LIBTransformer(model, "pool", downstream_layers=["fc"], feature_axis=1).fit(X)
            data = make(X)
            return Trial(
                lambda: lib.transform(data),
                raises=Raises(match),
                either=either,
                check=lambda Z: None if Z.shape[0] == len(data) else str(Z.shape),
                watch={"estimator": lib, "X": data, "model": model},
            )

        add(SEQ, f"conv net, transform: {name}", setup)

    conv(
        "10x10 images after a fit on 8x8",
        lambda X: M.rng().normal(size=(4, 3, 10, 10)),
        r"shape|position|5|4",
        either=True,
    )
    conv("channels-last images", lambda X: np.moveaxis(X, 1, -1), r"shape|channel|batch|3")
    conv("one channel", lambda X: X[:, :1], r"shape|channel|batch|1")

    def conv_no_axis():
        model = M.small_resnet()
        return Trial(
            lambda: LIBTransformer(model, "pool").fit(M.images(8)), raises=Raises(r"feature_axis")
        )

    add(SEQ, "conv net fitted without feature_axis", conv_no_axis)

"""
LIB vs PCA in a small language model
====================================

The paper's language-model comparison in miniature, with nothing
downloaded: train a small GPT-2 (``transformers``, random init) on
characters of the Python standard library's own source files, fit LIB and
the PCA baseline on the residual stream entering every block (and the final
LayerNorm), then compare them by node ablation (held-out next-token loss and
accuracy when only the top ``k`` features of one residual stream are kept)
and by the number of edges each section needs.  A feature dashboard (an
offline HTML page) shows the strongest token contexts of each basis' top
features at one residual stream.

The sequences have varied lengths and come as Hugging Face's default
batches: a ``DataLoader`` whose ``DataCollatorWithPadding`` pads each batch
to its own longest sequence (its ``attention_mask`` marks the padding, which
no average reads).  The PCA baseline is ``LIBTransformer(basis="pca")``, the
position-shared PCA: one basis of the residual stream's 128 dimensions for
every token, as LIB's is.  (``PCA`` after an ``ActivationTransformer`` would
flatten each sequence's positions into one vector, a different and not
comparable decomposition.)

The paper found that LIB gives language models little over PCA; the numbers
printed here (and ``docs/reproduction.md``, section *Language model*) say
how much on this model.

Exact ``M'`` needs one backward pass per output position and next-layer
feature (64 x 128 per batch here), so the LIB fit uses
``n_stochastic_sources`` random +-1 combinations of them instead, drawn for
each sequence apart: one source gives 1,024 independent draws per section
over the 1,024 fit sequences, at a single backward row per batch.  Against a
fit with 64 sources, one source kept the top-5 subspace of every node at a
cosine of 0.9996 or more (``benchmarks/README.md``, section 15); a second
fit with other signs is printed as a check.  ``n_stochastic_sources="auto"``
would measure its own error, at the price of at least 4 rounds a section.

Needs ``transformers`` (``pip install -e '.[models]'``).  Run
``python examples/plot_language_model.py`` (about 8 minutes on 2 CPU
cores, of which ``--train-seconds`` train the model; ``--smoke`` for
seconds).
"""

# %%
# Corpus: characters of the standard library's own ``.py`` files.
import argparse
import collections
import glob
import math
import os
import sys
import sysconfig
import time
import warnings

import numpy as np
import torch
from scipy.linalg import subspace_angles

from sklearn_lib import FeatureDashboard, LIBTransformer, ablation_curve, edges_needed

parser = argparse.ArgumentParser(description="LIB vs PCA in a small language model")
parser.add_argument("--smoke", action="store_true", help="tiny run for the tests")
parser.add_argument("--output-dir", default="figures")
parser.add_argument("--train-seconds", type=float, default=210.0, help="training time budget")
parser.add_argument(
    "--max-steps",
    type=int,
    default=None,
    help="train exactly this many steps instead (reproducible, unlike a time budget)",
)
parser.add_argument("--corpus-mb", type=float, default=2.0, help="megabytes of source read")
parser.add_argument("--context", type=int, default=64, help="tokens per window")
parser.add_argument("--n-layer", type=int, default=2)
parser.add_argument("--n-embd", type=int, default=128)
parser.add_argument("--fit-samples", type=int, default=1024, help="training sequences for fits")
parser.add_argument("--eval-samples", type=int, default=512, help="held-out sequences scored")
parser.add_argument(
    "--n-sources", type=int, default=1, help="n_stochastic_sources of M' (per sequence)"
)
parser.add_argument("--edge-samples", type=int, default=16, help="sequences for the edges")
parser.add_argument("--edge-sources", type=int, default=2, help="sources of the edges")
parser.add_argument(
    "--tolerance", type=float, default=0.05, help="held-out loss tolerance (nats) of 'needed'"
)
parser.add_argument("--no-edges", action="store_true", help="skip the interaction graphs")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument(
    "--threads",
    type=int,
    default=1,
    help="torch CPU threads (0: torch's default); 1 is fastest for this small model on a "
    "busy 2-core machine",
)
args = parser.parse_args()
if args.smoke:  # the gallery's pages come from smoke runs: say so where the numbers are
    print(
        "SMOKE RUN (--smoke): a tiny version of this example, to show that it runs; "
        "its numbers and figures are not results (run it without --smoke for those).\n"
    )
K_GRID = (0, 1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)  # features kept
if args.smoke:  # a tiny model on a tiny corpus: seconds
    args.max_steps, args.corpus_mb = 30, 0.25
    args.context, args.n_embd = 32, 32
    args.fit_samples, args.eval_samples, args.n_sources = 32, 32, 1
    args.edge_samples, args.edge_sources = 4, 1
    K_GRID = (0, 1, 4, 16)
os.makedirs(args.output_dir, exist_ok=True)
if args.threads:
    torch.set_num_threads(args.threads)

try:
    from tokenizers import Tokenizer, models
    from transformers import (
        DataCollatorWithPadding,
        GPT2Config,
        GPT2LMHeadModel,
        PreTrainedTokenizerFast,
    )
except ImportError:
    sys.exit("This example needs transformers: pip install -e '.[models]'")

run_start = time.perf_counter()
torch.manual_seed(args.seed)
rng = np.random.default_rng(args.seed)
T = args.context

stdlib = sysconfig.get_paths()["stdlib"]
texts, size = [], 0
for path in sorted(glob.glob(os.path.join(stdlib, "*.py"))):
    if size >= args.corpus_mb * 1e6:
        break
    with open(path, encoding="utf-8", errors="replace") as handle:
        texts.append(handle.read())
    size += len(texts[-1])
held_out = [t for i, t in enumerate(texts) if i % 10 == 5]  # every tenth file
training = [t for i, t in enumerate(texts) if i % 10 != 5]

# Character vocabulary: the 96 most frequent characters of the training files, and 0 = unknown.
counts = collections.Counter("".join(training))
chars = sorted(c for c, _ in counts.most_common(96))
index = {c: i + 1 for i, c in enumerate(chars)}
V = len(chars) + 1


def windows(files):
    """Non-overlapping windows of ``T + 1`` token ids: inputs ``[:, :T]``, labels ``[:, 1:]``."""
    ids = np.array([index.get(c, 0) for c in "".join(files)], dtype=np.int64)
    n = len(ids) // (T + 1)
    return ids[: n * (T + 1)].reshape(n, T + 1)


W_train, W_test = windows(training), windows(held_out)
W_train = W_train[rng.permutation(len(W_train))]
print(
    f"Corpus: {len(texts)} files of {stdlib} ({size / 1e6:.2f} MB), vocabulary {V} "
    f"(96 characters + unknown); {len(W_train)} training and {len(W_test)} held-out "
    f"windows of {T} tokens (held out: every tenth file)"
)

# %%
# A small GPT-2 from a config, trained for ``--train-seconds``.
config = GPT2Config(
    vocab_size=V,
    n_positions=T,
    n_embd=args.n_embd,
    n_layer=args.n_layer,
    n_head=4,
    resid_pdrop=0.0,
    embd_pdrop=0.0,
    attn_pdrop=0.0,
    bos_token_id=None,
    eos_token_id=None,
    attn_implementation="eager",
)
model = GPT2LMHeadModel(config)
n_params = sum(p.numel() for p in model.parameters())


def next_token_loss(logits, labels):
    return torch.nn.functional.cross_entropy(logits.reshape(-1, V), labels.reshape(-1))


def evaluate(W, batch=128):
    """Mean next-token cross-entropy (nats) and accuracy of the model on windows ``W``."""
    model.eval()
    loss = correct = 0.0
    with torch.no_grad():
        for start in range(0, len(W), batch):
            w = torch.from_numpy(W[start : start + batch])
            logits = model(w[:, :-1], use_cache=False).logits
            loss += float(next_token_loss(logits, w[:, 1:])) * len(w)
            correct += float((logits.argmax(-1) == w[:, 1:]).float().mean()) * len(w)
    return loss / len(W), correct / len(W)


optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
model.train()
step, start = 0, time.perf_counter()
while True:
    # Progress through the budget (steps if given, else time): cosine decay after warmup.
    if args.max_steps:
        progress = step / args.max_steps
    else:
        progress = (time.perf_counter() - start) / args.train_seconds
    if progress >= 1:
        break
    scale = min(1.0, (step + 1) / 100) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))
    for group in optimizer.param_groups:
        group["lr"] = 3e-3 * scale
    w = torch.from_numpy(W_train[rng.integers(len(W_train), size=32)])
    loss = next_token_loss(model(w[:, :-1], use_cache=False).logits, w[:, 1:])
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    step += 1
train_seconds = time.perf_counter() - start
model.eval()

W_eval = W_test[: args.eval_samples]
train_metrics = evaluate(W_train[: args.eval_samples])
test_metrics = evaluate(W_eval)

# %%
# Sequences of varied length, in Hugging Face's default batches.
# Each window is cut to a random length from T/4 to T; the collator pads each
# batch to its own longest sequence (token 0, with attention_mask 0).  The
# tokenizer is only what the collator needs of one: its padding token.
tokenizer = PreTrainedTokenizerFast(
    tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0}, unk_token="<pad>")),
    pad_token="<pad>",
)
collate = DataCollatorWithPadding(tokenizer, return_tensors="pt")


def sequences(W, seed):
    """Windows cut to random lengths: per-sample dicts, and next-token labels padded with -100.

    ``y[i, t]`` is the label of token ``t`` of sequence ``i``; positions past a
    sequence's end hold -100 (never scored), as the batches' padding does.
    """
    lengths = np.random.default_rng(seed).integers(T // 4, T + 1, size=len(W))
    features = [
        {"input_ids": w[:n].tolist(), "attention_mask": [1] * n} for w, n in zip(W, lengths)
    ]
    y = np.full((len(W), T), -100)
    for i, (w, n) in enumerate(zip(W, lengths)):
        y[i, :n] = w[1 : n + 1]
    return features, y


def batches(features, size=128):
    """The DataLoader of ``features`` (not shuffled: rows stay paired with their labels)."""
    return torch.utils.data.DataLoader(features, batch_size=size, collate_fn=collate)


fit_features, _ = sequences(W_train[: args.fit_samples], args.seed)
eval_features, y_eval = sequences(W_eval, args.seed + 1)
X_fit, X_eval = batches(fit_features), batches(eval_features)
n_fit_tokens = sum(len(f["input_ids"]) for f in fit_features)


def evaluate_sequences(loader, y):
    """Next-token loss and accuracy over the real tokens of a padded ``loader`` (labels ``y``)."""
    loss = correct = count = 0.0
    start = 0
    with torch.no_grad():
        for batch in loader:
            n, length = batch["input_ids"].shape
            logits = model(**batch, use_cache=False).logits
            labels = torch.from_numpy(y[start : start + n, :length])
            start += n
            scored = labels != -100
            loss += float(
                torch.nn.functional.cross_entropy(logits[scored], labels[scored], reduction="sum")
            )
            correct += float((logits[scored].argmax(-1) == labels[scored]).sum())
            count += float(scored.sum())
    return loss / count, correct / count


eval_metrics = evaluate_sequences(X_eval, y_eval)
print(
    f"GPT-2 with {args.n_layer} layers, width {args.n_embd}, 4 heads ({n_params:,} parameters): "
    f"{step} steps of 32 windows in {train_seconds:.0f}s"
)
print(
    f"  next-token loss / accuracy: train {train_metrics[0]:.3f} / {train_metrics[1]:.3f}, "
    f"held-out {test_metrics[0]:.3f} / {test_metrics[1]:.3f}"
)

# %%
# LIB and PCA at the residual stream entering each block and the final LayerNorm.
# One fit per basis gives every node layer (bases run backwards from the logits).
LAYERS = [f"transformer.h.{i}" for i in range(args.n_layer)] + ["transformer.ln_f"]
common = dict(
    downstream_layers=LAYERS[1:],
    output="logits",
    forward_kwargs={"use_cache": False},
    dtype="float32",
    random_state=args.seed,
)
fits, fit_seconds = {}, {}
for basis in ("lib", "pca"):
    sources = args.n_sources if basis == "lib" else None
    start = time.perf_counter()
    fits[basis] = LIBTransformer(
        model, LAYERS[0], basis=basis, n_stochastic_sources=sources, **common
    ).fit(X_fit)
    fit_seconds[basis] = time.perf_counter() - start
# Exact M' of a section: one backward pass per output position and next-node feature.
bases = fits["lib"].bases_
exact_rows = [bases[dst].n_positions * bases[dst].n_components for dst in list(bases)[1:]]
n_batches = len(X_fit)
# The Jacobian passes' share of the LIB fit, per backward pass, extrapolated to exact rows.
per_pass = max(fit_seconds["lib"] - fit_seconds["pca"], 0) / (
    n_batches * args.n_sources * len(LAYERS)
)
print(
    f"\nFits on {len(fit_features)} training sequences of {T // 4} to {T} tokens "
    f"({n_fit_tokens} tokens) in {n_batches} dynamically padded batches of 128, float32: "
    f"LIB {fit_seconds['lib']:.1f}s with n_stochastic_sources={args.n_sources} "
    f"backward passes per batch and section; PCA {fit_seconds['pca']:.1f}s.\n"
    f"  Exact M' would need {exact_rows} backward passes per batch for the sections "
    f"{', '.join(f'{a} -> {b}' for a, b in zip(LAYERS, [*LAYERS[1:], 'output']))}: "
    f"about {per_pass * n_batches * sum(exact_rows) / 3600:.1f} hours at this fit's "
    f"{per_pass:.2f}s per pass"
)

# How much the stochastic estimate moves LIB: a second fit with other random signs.
start = time.perf_counter()
params = {**common, "random_state": args.seed + 1}
again = LIBTransformer(
    model, LAYERS[0], basis="lib", n_stochastic_sources=args.n_sources, **params
).fit(X_fit)
print(
    f"  A second LIB fit with other random signs ({time.perf_counter() - start:.0f}s): "
    "overlap of the spans of the top-k read-out directions (mean squared principal cosine; "
    "1 = same span), and the largest change of the top-k Lambda relative to the first:"
)
for layer in LAYERS:
    a, b = fits["lib"].bases_[layer], again.bases_[layer]
    cells = []
    for k in (4, 16, 32):
        if k > min(a.n_components, b.n_components):
            continue
        overlap = float(np.mean(np.cos(subspace_angles(a.matrix[:, :k], b.matrix[:, :k])) ** 2))
        change = float(np.max(np.abs(a.lambdas[:k] - b.lambdas[:k])) / a.lambdas[0])
        cells.append(f"k={k}: overlap {overlap:.3f}, dLambda {change:.1e}")
    print(f"  {layer:17s} " + "   ".join(cells))
for layer in LAYERS:
    a, b = fits["lib"].bases_[layer], fits["pca"].bases_[layer]
    print(f"  {layer:17s} non-null features: LIB {a.matrix.shape[1]}, PCA {b.matrix.shape[1]}")


# %%
# Node ablation on held-out sequences: next-token loss and accuracy with the top k features.
class NextToken:
    """Scoring callable ``(y_true, outputs) -> loss``; also records the accuracy of each call.

    ``ablation_curve`` calls it once per feature count, in the order given;
    ``calls`` keeps ``(loss, accuracy)`` of each call.
    """

    def __init__(self):
        self.calls = []

    def __call__(self, y_true, logits):
        logits, labels = torch.from_numpy(logits), torch.from_numpy(np.asarray(y_true))
        loss = float(next_token_loss(logits, labels))
        self.calls.append((loss, float((logits.argmax(-1) == labels).double().mean())))
        return loss


curves = {}  # (basis, layer) -> (ks, losses, accuracies)
start = time.perf_counter()
for basis, est in fits.items():
    for layer in LAYERS:
        available = est.bases_[layer].matrix.shape[1]
        ks = sorted({k for k in K_GRID if k < available} | {available})
        scorer = NextToken()
        ks, losses = ablation_curve(est, X_eval, y_eval, n_features=ks, layer=layer, scoring=scorer)
        recorded = np.array([loss for loss, _ in scorer.calls])
        assert np.allclose(recorded, losses), "scoring calls out of the order of n_features"
        curves[(basis, layer)] = (ks, losses, np.array([acc for _, acc in scorer.calls]))
ablation_seconds = time.perf_counter() - start


def at(basis, layer, k):
    """Loss and accuracy with the top ``k`` features (the largest grid point <= k)."""
    ks, losses, accs = curves[(basis, layer)]
    i = np.searchsorted(ks, k, side="right") - 1
    return losses[i], accs[i]


def needed(basis, layer, tolerance):
    """Fewest grid features whose held-out loss is within ``tolerance`` of all features."""
    ks, losses, _ = curves[(basis, layer)]
    return int(ks[np.flatnonzero(losses <= losses[-1] + tolerance)[0]])


print(
    f"\nNode ablation on {len(eval_features)} held-out sequences ({ablation_seconds:.0f}s): "
    f"loss (nats) / accuracy, LIB vs PCA (unablated {eval_metrics[0]:.3f} / "
    f"{eval_metrics[1]:.3f})"
)
for layer in LAYERS:
    cells = []
    for k in (1, 4, 16, 32, 64):
        (la, aa), (lb, ab) = at("lib", layer, k), at("pca", layer, k)
        cells.append(f"k={k}: {la:.3f}/{aa:.3f} vs {lb:.3f}/{ab:.3f}")
    print(f"  {layer:17s} " + "   ".join(cells))
print(f"Features needed (grid; loss within {args.tolerance} nats of all features):")
for layer in LAYERS:
    a, b = (needed(basis, layer, args.tolerance) for basis in ("lib", "pca"))
    print(f"  {layer:17s} LIB {a:4d}   PCA {b:4d}")

# %%
# Edges each section needs (held-out loss within ``--edge-tolerance`` of all edges).
# The graph of each basis is computed on ``--edge-samples`` training sequences and
# edges are ablated on as many held-out sequences, to keep the time to minutes.
edges = {}
if not args.no_edges:
    X_edge = batches(fit_features[: args.edge_samples])
    edge_features, y_edge = sequences(W_test[: args.edge_samples], args.seed + 2)
    W_edge = batches(edge_features)

    def negative_loss(y_true, logits):  # higher is better, as edges_needed expects
        return -float(next_token_loss(torch.from_numpy(logits), torch.from_numpy(y_true)))

    graph_seconds, edge_seconds, graphs = {}, {}, {}
    for basis, est in fits.items():
        start = time.perf_counter()
        graphs[basis] = est.interaction_graph(X_edge, n_stochastic_sources=args.edge_sources)
        graph_seconds[basis] = time.perf_counter() - start
        start = time.perf_counter()
        edges[basis.upper()] = edges_needed(
            est,
            graphs[basis],
            W_edge,
            y_edge,
            tolerance=args.tolerance,
            scoring=negative_loss,
        )
        edge_seconds[basis] = time.perf_counter() - start
    print(
        f"\nEdges needed (graph on {args.edge_samples} training sequences with "
        f"n_stochastic_sources={args.edge_sources}; ablation on {len(edge_features)} held-out "
        f"sequences, loss within {args.tolerance} nats; graph + bisection: "
        f"LIB {graph_seconds['lib']:.0f}s + {edge_seconds['lib']:.0f}s, "
        f"PCA {graph_seconds['pca']:.0f}s + {edge_seconds['pca']:.0f}s):"
    )
    for section in graphs["lib"].sections:
        a, b = edges["LIB"][section], edges["PCA"][section]
        print(
            f"  {section[0]:>17s} -> {section[1]:17s} LIB {a.n_needed:5d} of {a.n_total:5d}"
            f"   PCA {b.n_needed:5d} of {b.n_total:5d}"
        )

# %%
# A feature dashboard: LIB's and PCA's features of one residual stream side by side,
# in one offline HTML file (``language_model_dashboard.html`` in ``--output-dir``).
# For each of the features of largest Lambda (or variance), a card shows its
# strongest held-out tokens in their context (the characters before and after, each
# highlighted by the feature's value there), its histogram and its share of the
# layer.  The token ids decode through the example's own character vocabulary (id 0
# is the unknown character; padding is never an example).  One node layer has no
# section of its own, so the page draws no graph (``graph=None``).
#
# The page of the gallery's run: `language_model_dashboard.html
# <language_model_dashboard.html>`__ (open it in a browser; it loads nothing).
start = time.perf_counter()
vocabulary = ["\N{REPLACEMENT CHARACTER}", *chars]  # id -> character, as `index` maps them
shown = LAYERS[len(LAYERS) // 2]  # the middle residual stream
dashboard = FeatureDashboard.from_estimator(
    fits["lib"],
    X_eval,
    compare=fits["pca"],
    layers=[shown],
    n_features=16 if args.smoke else 24,
    n_examples=20,
    graph=None,
    tokenizer=vocabulary,
    title=f"GPT-2 on Python source: LIB vs PCA features of the residual stream into {shown}",
)
page = dashboard.save_html(os.path.join(args.output_dir, "language_model_dashboard.html"))
print(
    f"\nDashboard of LIB vs PCA features of {shown} on {len(eval_features)} held-out "
    f"sequences ({time.perf_counter() - start:.1f}s): {page} ({page.stat().st_size / 1e3:.0f} kB)"
)

# %%
# Figures: ablation curves (loss, accuracy) per node layer, spectra, edges needed.
try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    plt = None
    print("\nmatplotlib is not installed: no figures drawn (the numbers above are the result)")
if plt is not None:
    from sklearn_lib import AblationCurveDisplay, SpectrumDisplay
    from sklearn_lib.plotting import plot_edges_needed

    short = {layer: layer.replace("transformer.", "") for layer in LAYERS}
    n = len(LAYERS)
    fig, axes = plt.subplots(2, n, figsize=(4.2 * n, 7), squeeze=False)
    for col, layer in enumerate(LAYERS):
        for row, (what, baseline) in enumerate(
            [("held-out loss (nats)", eval_metrics[0]), ("held-out accuracy", eval_metrics[1])]
        ):
            ax = axes[row, col]
            lines = {
                basis.upper(): (curves[(basis, layer)][0], curves[(basis, layer)][1 + row])
                for basis in ("lib", "pca")
            }
            AblationCurveDisplay.from_curves(lines, baseline=baseline, score_name=what, ax=ax)
            ax.set_title(f"Residual stream into {short[layer]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(args.output_dir, "language_model_ablation.png"), dpi=80)

    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), squeeze=False)
    for ax, layer in zip(axes[0], LAYERS):
        SpectrumDisplay.from_estimator(fits["lib"], fits["pca"], layer=layer, ax=ax)
        ax.set_title(f"Spectrum into {short[layer]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(args.output_dir, "language_model_spectrum.png"), dpi=80)

    if edges:
        fig, ax = plt.subplots(figsize=(2.2 * n + 2, 3.8))
        relabelled = {
            name: {tuple(s.replace("transformer.", "") for s in k): v for k, v in res.items()}
            for name, res in edges.items()
        }
        with warnings.catch_warnings():  # 0 edges needed cannot be drawn on a log axis
            warnings.simplefilter("ignore", UserWarning)
            plot_edges_needed(relabelled, ax=ax)
        ax.set_yscale("symlog", linthresh=1)
        fig.tight_layout()
        fig.savefig(os.path.join(args.output_dir, "language_model_edges.png"), dpi=80)
    print(f"\nSaved figures in {args.output_dir}/")
print(f"Total time {time.perf_counter() - run_start:.0f}s")

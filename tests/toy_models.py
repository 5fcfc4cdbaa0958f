"""Small models for the tests, at module level so that they pickle."""

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from sklearn_lib.models._modular_addition import Attention, Embed, PosEmbed, Unembed


def tanh_mlp(d_in=4, hidden=8, d_out=3, seed=0):
    """in -> fc1 -> tanh -> fc2 -> tanh -> fc3 (named layers)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(d_in, hidden),
            act1=nn.Tanh(),
            fc2=nn.Linear(hidden, hidden),
            act2=nn.Tanh(),
            fc3=nn.Linear(hidden, d_out),
        )
    ).double()


def linear_chain(widths=(5, 6, 4, 3), bias=True, seed=0):
    """A chain of Linear layers fc1, fc2, ... (no nonlinearity), float64."""
    torch.manual_seed(seed)
    layers = OrderedDict(
        (f"fc{i + 1}", nn.Linear(a, b, bias=bias))
        for i, (a, b) in enumerate(zip(widths, widths[1:]))
    )
    return nn.Sequential(layers).double()


class MixPositions(nn.Module):
    """``out_t = tanh(sum_s A[t, s] * h_s @ W)``: mixes positions, like attention."""

    def __init__(self, n_in, n_out, d):
        super().__init__()
        self.A = nn.Parameter(torch.randn(n_out, n_in) / n_in**0.5)
        self.W = nn.Parameter(torch.randn(d, d) / d**0.5)

    def forward(self, h):  # (n, P_in, d) -> (n, P_out, d)
        return torch.tanh(torch.einsum("ts,nsd,de->nte", self.A, h, self.W))


class PositionMixer(nn.Module):
    """Float inputs (n, P, d_in) -> outputs (n, P_out, V) through mixed positions.

    Node layers: ``mix`` (input shape (n, P, d)) and ``head`` (input (n, P_out, d)).
    """

    def __init__(self, d_in=3, d=5, n_pos=4, n_pos_out=2, vocab=3, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Linear(d_in, d)
        self.mix = MixPositions(n_pos, n_pos_out, d)
        self.head = nn.Sequential(nn.Linear(d, vocab), nn.Tanh())

    def forward(self, x):
        return self.head(self.mix(torch.tanh(self.embed(x))))

    def tail(self, name):
        """The section from node layer ``name`` to the output, as a plain function."""
        return {"mix": lambda h: self.head(self.mix(h)), "head": self.head}[name]


class TokenMixer(PositionMixer):
    """Token ids (n, P) -> outputs (n, P_out, V); ``embed`` is an ``nn.Embedding``."""

    def __init__(self, n_tokens=7, d=5, n_pos=3, n_pos_out=1, vocab=4, seed=0):
        super().__init__(d_in=1, d=d, n_pos=n_pos, n_pos_out=n_pos_out, vocab=vocab, seed=seed)
        self.embed = nn.Embedding(n_tokens, d)


class WideMixer(nn.Module):
    """Many output positions: ``out_t = tanh(head(tanh(sum_s A_ts mix(x)_s)))``.

    Both sections nonlinear (an affine one is exact at no cost, so "auto"
    would not run rounds on it), with 12 x 10 = 120 exact rows each.
    """

    def __init__(self, positions=12, width=10, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.mix = nn.Linear(width, width)
        self.A = nn.Parameter(torch.randn(positions, positions) / positions**0.5)
        self.head = nn.Linear(width, width)

    def forward(self, x):  # (n, P, d) -> (n, P, d)
        return torch.tanh(self.head(torch.tanh(torch.einsum("ts,nsd->ntd", self.A, self.mix(x)))))


class TanhThenLinear(nn.Module):
    """``head(tanh(body(x)))``: a head that is one ``nn.Linear`` outside any ``nn.Sequential``.

    No formula of the package serves it; inputs may carry positions ``(n, P, 3)``.
    """

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(3, 5)
        self.head = nn.Linear(5, 4)

    def forward(self, x):
        return self.head(torch.tanh(self.body(x)))


class ResidualBlock(nn.Module):
    """``h + fc(tanh(h))``: takes and returns the whole residual stream."""

    def __init__(self, d):
        super().__init__()
        self.act = nn.Tanh()
        self.fc = nn.Linear(d, d)

    def forward(self, h):
        return h + self.fc(self.act(h))


class ResidualMLP(nn.Module):
    """``h = inp(x); h = block(h); out(tanh(h))`` with the residual inside ``block``.

    ``block`` and ``out`` are cuts (their inputs carry the whole stream);
    ``block.fc`` is not, because the residual path bypasses it.
    """

    def __init__(self, d_in=4, d=6, d_out=3, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.inp = nn.Linear(d_in, d)
        self.block = ResidualBlock(d)
        self.out = nn.Linear(d, d_out)

    def forward(self, x):
        return self.out(torch.tanh(self.block(self.inp(x))))


class SharedLayer(nn.Module):
    """Calls ``shared`` twice in one forward pass."""

    def __init__(self, d=4):
        super().__init__()
        self.shared = nn.Linear(d, d)
        self.out = nn.Linear(d, 2)

    def forward(self, x):
        return self.out(self.shared(torch.tanh(self.shared(x))))


class LogOfInput(nn.Module):
    """``out(log(x))``: NaN activations for negative inputs."""

    def __init__(self, d=3):
        super().__init__()
        self.out = nn.Linear(d, 2)

    def forward(self, x):
        return self.out(torch.log(x))


def stateful_mlp(seed=0):
    """Float32 MLP with BatchNorm and Dropout, in train mode, one frozen layer."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(4, 8),
            bn=nn.BatchNorm1d(8),
            act=nn.ReLU(),
            drop=nn.Dropout(0.5),
            fc2=nn.Linear(8, 3),
        )
    )
    model.fc1.weight.requires_grad_(False)
    model.train()
    return model


class AsFloat(nn.Module):
    """Casts integer inputs to float, leaves floating inputs as they are."""

    def forward(self, x):
        return x if x.is_floating_point() else x.to(torch.get_default_dtype())


def elementwise_model():
    """Elementwise layers accept inputs of any width, as sklearn's generic checks need."""
    return nn.Sequential(AsFloat(), nn.SiLU(), nn.SiLU(), nn.SiLU())


class BatchSizeAfterCut(nn.Module):
    """Code after node layer ``mid`` reuses the input's batch size.

    ``mode="reshape"`` reshapes with it (a stacked batch fails loudly);
    ``mode="count"`` adds it to the output (a stacked batch is silently
    different; ``fit`` rejects it since outputs depend on the batch).
    ``mode="plain"`` is the same network without either.
    """

    def __init__(self, mode, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.mode = mode
        self.fc1 = nn.Linear(4, 6)
        self.mid = nn.Tanh()
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        n = x.shape[0]
        h = self.mid(self.fc1(x))
        if self.mode == "reshape":
            return self.out(h.reshape(n, -1))
        if self.mode == "count":
            return self.out(h) + 1e-3 * n
        return self.out(h)  # "plain"


def inplace_relu_mlp(seed=0):
    """``fc1 -> ReLU(inplace=True) -> fc2``: the model overwrites fc1's output."""
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(fc1=nn.Linear(4, 8), act=nn.ReLU(inplace=True), fc2=nn.Linear(8, 3))
    ).double()


def batch_statistics_mlp(seed=0):
    """BatchNorm without running statistics: samples interact even in eval mode."""
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(4, 8),
            bn=nn.BatchNorm1d(8, track_running_stats=False),
            fc2=nn.Linear(8, 3),
        )
    ).double()


def _random_biases(model):
    """``model`` in float64 with its ``b_*`` parameters drawn from N(0, 0.3^2)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.split(".")[-1].startswith("b_"):
                param.normal_(0, 0.3)
    return model.double()


def small_modadd(seed=0, p=7, d_model=16, n_heads=2, d_head=8, d_mlp=32):
    """A random small paper-architecture transformer, float64, non-zero biases."""
    from sklearn_lib.models import ModularAdditionTransformer

    torch.manual_seed(seed)
    return _random_biases(ModularAdditionTransformer(p, d_model, n_heads, d_head, d_mlp))


def modadd_tokens(n=40, p=7, seed=0):
    """Random ``(x, y, =)`` token rows for :func:`small_modadd`."""
    gen = torch.Generator().manual_seed(seed)
    pairs = torch.randint(0, p, (n, 2), generator=gen)
    return torch.cat([pairs, torch.full((n, 1), p)], dim=1)


# -- a user's own transformer: the paper's architecture, no closed forms of its own --
class RawMLP(nn.Module):
    """The paper's MLP in raw tensor ops, as a user writes it."""

    def __init__(self, d_model, d_mlp):
        super().__init__()
        self.W_in = nn.Parameter(torch.randn(d_model, d_mlp) * d_model**-0.5)
        self.b_in = nn.Parameter(torch.randn(d_mlp) * 0.3)
        self.W_out = nn.Parameter(torch.randn(d_mlp, d_model) * d_mlp**-0.5)
        self.b_out = nn.Parameter(torch.randn(d_model) * 0.3)

    def forward(self, resid):
        return resid + torch.relu(resid @ self.W_in + self.b_in) @ self.W_out + self.b_out


class UserBlock(nn.Module):
    def __init__(self, d_model, n_heads, d_head, d_mlp, n_ctx):
        super().__init__()
        self.attn = Attention(d_model, n_heads, d_head, n_ctx)
        self.mlp = RawMLP(d_model, d_mlp)

    def forward(self, resid):
        return self.mlp(self.attn(resid)[:, -1])


class UserTransformer(nn.Module):
    """A modular-addition transformer of the user's own class (no ``lib_section_*``)."""

    def __init__(self, p=7, d_model=8, n_heads=2, d_head=4, d_mlp=16):
        super().__init__()
        self.embed = Embed(p + 1, d_model)
        self.pos_embed = PosEmbed(3, d_model)
        self.blocks = nn.ModuleList([UserBlock(d_model, n_heads, d_head, d_mlp, 3)])
        self.unembed = Unembed(d_model, p + 1)

    def forward(self, tokens):
        resid = self.pos_embed(self.embed(tokens))
        for block in self.blocks:
            resid = block(resid)
        return self.unembed(resid)


def user_transformer(seed=0, **sizes):
    """A random :class:`UserTransformer`, float64, with non-zero biases."""
    torch.manual_seed(seed)
    return _random_biases(UserTransformer(**sizes))


# -- fits of the identity tests: (model, layer, downstream layers, X) ------------------


def _mlp_case(rng):
    return tanh_mlp(), "fc2", ["fc3"], rng.normal(size=(150, 4))


def _positions_case(rng):
    return PositionMixer().double(), "mix", ["head"], rng.normal(size=(120, 4, 3))


def _tokens_case(rng):
    return TokenMixer().double(), "mix", ["head"], rng.integers(0, 7, size=(100, 3))


CASES = {"mlp": _mlp_case, "positions": _positions_case, "tokens": _tokens_case}


# -- a small residual conv net (channels-first feature maps) ---------------------------


class BasicBlock(nn.Module):
    """ResNet basic block: conv-bn-relu-conv-bn plus the skip, then ReLU.

    With ``stride != 1`` or a change of width the skip is a 1x1 conv + bn projection.
    """

    def __init__(self, c_in, c_out, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )
        else:
            self.shortcut = nn.Identity()
        self.act2 = nn.ReLU()

    def forward(self, x):
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """(n, 3, H, W) images -> (n, n_classes) logits.

    ``stem`` (conv-bn-relu, ``width`` channels), ``stage1`` (basic block),
    ``stage2`` (basic block, stride 2, ``2 * width`` channels), ``pool``
    (global average), ``flatten``, ``fc``.  Node layers (inputs): ``stage2``
    (n, width, H, W), ``pool`` (n, 2 * width, H / 2, W / 2), ``fc`` (n, 2 * width).
    """

    def __init__(self, n_classes=5, width=8):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.stage1 = BasicBlock(width, width)
        self.stage2 = BasicBlock(width, 2 * width, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(2 * width, n_classes)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.stage2(self.stage1(self.stem(x))))))


def small_resnet(n_classes=5, width=8, seed=0):
    """A :class:`SmallResNet` in float64 and eval mode whose BatchNorms matter.

    Random affine BatchNorm parameters, and running statistics far from
    (0, 1) from a few training-mode passes on shifted, scaled random images,
    so that eval mode (running statistics) differs from batch statistics.
    """
    torch.manual_seed(seed)
    model = SmallResNet(n_classes, width).double()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
        model.train()
        for _ in range(5):
            model(2.0 * torch.randn(32, 3, 8, 8, dtype=torch.float64) + 0.5)
    return model.eval()


# -- tiny Hugging Face models (need ``transformers``: pip install -e '.[models]') ------------

GPT2_VOCAB = 20
BERT_VOCAB, BERT_WIDTH = 30, 16


def tiny_gpt2(seed=0):
    """A 2-layer GPT-2 LM (width 16, 2 heads, 8 positions), float32, train mode (dropout on)."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        n_layer=2,
        n_embd=16,
        n_head=2,
        vocab_size=GPT2_VOCAB,
        n_positions=8,
        bos_token_id=0,
        eos_token_id=1,
        initializer_range=0.2,  # far from linear
        attn_implementation="eager",
    )
    return transformers.GPT2LMHeadModel(config)


def tiny_bert(seed=0):
    """A 2-layer BERT encoder (width 16, 2 heads, 16 positions), float32, train mode."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.BertConfig(
        hidden_size=BERT_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        vocab_size=BERT_VOCAB,
        max_position_embeddings=16,
        initializer_range=0.2,
        attn_implementation="eager",
    )
    return transformers.BertModel(config, add_pooling_layer=False)


def tiny_tokenizer(vocab_size, pad_token_id=0):
    """A Hugging Face fast tokenizer over ``vocab_size`` made-up tokens ``t0, t1, ...``.

    Built in memory (nothing downloaded), for what collators need of a
    tokenizer: its padding (``pad_token_id``, right side by default).
    """
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(vocab_size)}
    pad = f"t{pad_token_id}"
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token=pad)),
        pad_token=pad,
        unk_token=pad,
    )


def token_features(lengths, vocab_size, seed=0, low=2):
    """Pre-tokenised samples of the given lengths, as a Hugging Face data set's rows."""
    rng = np.random.default_rng(seed)
    return [
        {
            "input_ids": rng.integers(low, vocab_size, size=length).tolist(),
            "attention_mask": [1] * length,
        }
        for length in lengths
    ]

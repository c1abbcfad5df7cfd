"""What the two hypothesis matrices share (tests/test_oracle_hypotheses.py: a PyTorch user model;
tests/test_oracle_hypotheses_flax.py: a Flax one): the model's sizes and configs, the bugs
injected, the export levels, the properties asserted, and the table docs/ORACLE.md shows. Each
matrix writes the bugs in its framework's style; the keys and levels are these. Also the
categorical model's and the score-function user's sizes (tests/test_oracle_hypotheses*.py,
tests/test_oracle_unbiased.py).
"""
from pathlib import Path

ORACLE_MD = Path(__file__).resolve().parent.parent / "docs" / "ORACLE.md"
N, D, H, K = 5, 12, 10, 3
BERNOULLI = {"format": 1, "data_dim": D, "latent_dim": K, "encoder_hidden": [H],
             "decoder_hidden": [H],
             "activation": "relu", "latent": "gaussian", "emission": "bernoulli"}
GAUSSIAN = {**BERNOULLI, "emission": "gaussian"}
# the categorical model (a Gumbel-softmax VAE: tanh layers enc, logits, dec, out; CAT_NAMES maps
# them) and its bugs, injected in both frameworks
KC, C, TAU = 2, 3, 0.5
CATEGORICAL = {"format": 1, "data_dim": D, "latent_dim": KC, "categories": C, "encoder_hidden": [H],
               "decoder_hidden": [H], "activation": "tanh", "latent": "categorical",
               "emission": "bernoulli"}
CAT_NAMES = {"enc": "encoder.0", "logits": "encoder.logits", "dec": "decoder.0",
             "out": "decoder.out"}
# bug: (the sample: "relaxed", "no-temperature" or "straight-through"; whether the KL has K·log C;
# the estimator told to refvae)
CAT_BUGS = {
    "temperature:missing": ("no-temperature", True, None),
    "straight-through:relaxed-forward": ("relaxed", True, "straight-through"),
    "gumbel-softmax:hard-forward": ("straight-through", True, None),
    "kl:-KlogC": ("relaxed", False, None),
}
# the score-function estimator's user (tests/test_oracle_unbiased.py: PyTorch;
# tests/test_oracle_hypotheses_flax_cat.py: JAX): a linear decoder, the baseline of each of the L
# samples from the (N, L) losses f (torch tensors or JAX arrays)
LINEAR = {"format": 1, "data_dim": 5, "latent_dim": 2, "encoder_hidden": [4], "decoder_hidden": [],
          "activation": "tanh", "latent": "gaussian", "emission": "gaussian", "alpha": 0.7}


def leave_one_out(f):
    return (f.sum(1)[:, None] - f) / (f.shape[1] - 1)


def mean_of_all(f):   # leave-one-out done wrong: the sample's own f is in its baseline
    return f.mean(1)[:, None]


LEVELS = {"loss": ("loss",), "grads": ("loss", "grad"), "heads": ("loss", "grad", "heads"),
          "logits": ("loss", "grad", "heads", "decoder_out"), "x": ("loss", "grad", "heads", "x"),
          "all": ("loss", "grad", "heads", "x", "decoder_out")}
MATRIX_LEVELS = ("loss", "grads", "logits", "x")   # the table's columns

# bug injected: (config, samples L). The key is the hypothesis the report names for a loss that
# sums over the batch (pytorch/examples); MEAN_KEYS: what the same mistake is in a loss that
# averages over the batch (Flax's examples), where torch.mean-style averaging over all entries
# divides by K or D alone.
BUGS = {
    "sampler:exp": (BERNOULLI, 1), "sampler:logvar": (BERNOULLI, 1),
    "sampler:unscaled": (BERNOULLI, 1), "sampler:no-noise": (BERNOULLI, 1),
    "sampler:detached": (BERNOULLI, 1), "heads:swapped": (BERNOULLI, 1),
    "kl:2": (BERNOULLI, 1), "kl:-1": (BERNOULLI, 1), "kl:0": (BERNOULLI, 1),
    "kl:+K/2": (BERNOULLI, 1), "kl:1/(N·K)": (BERNOULLI, 1), "kl:detached": (BERNOULLI, 1),
    "reconstruction:1/(N·D)": (BERNOULLI, 1), "reconstruction:L": (BERNOULLI, 2),
    "reduction:N": (BERNOULLI, 1),   # refvae is told reduction="mean", the loss sums
    "emission:-normaliser": (GAUSSIAN, 1), "emission:mse": (GAUSSIAN, 1),
}
MEAN_KEYS = {"kl:1/(N·K)": "kl:1/K", "reconstruction:1/(N·D)": "reconstruction:1/D"}
# hypotheses that the exported numbers cannot tell from the injected bug (they predict the same)
SAME: dict = {}
# which quantities each bug leaves unchanged, so that levels exporting only those must pass
INVISIBLE = {"sampler:detached": {"loss", "heads", "x", "decoder_out"},
             "kl:detached": {"loss", "heads", "x", "decoder_out"}}


def named(report) -> list:
    """The hypothesis keys a report names, in its order."""
    return [h.split("[hypothesis ")[1].split(" ")[0] for h in report.hints if "[hypothesis " in h]


def assert_named(bug: str, level: str, report, expected: str | None = None) -> None:
    """The matrix's property: a bug the level's exports cannot show passes; otherwise the report
    fails, names ``expected`` (the bug's key unless given) and nothing that is not the same."""
    key = expected or bug
    if set(LEVELS[level]) <= INVISIBLE.get(bug, set()):
        assert report.passed, str(report)   # nothing exported can show it
        return
    assert not report.passed, str(report)
    keys = named(report)
    assert key in keys, str(report)
    assert set(keys) <= {key} | SAME.get(key, set()), str(report)


def table(diagnosed, bugs=BUGS) -> str:
    """The Markdown table of ORACLE.md: bug × export level → the hypotheses named, from
    ``diagnosed(bug, level) -> report``, for the Gaussian ``bugs`` or :data:`CAT_BUGS`."""
    rows = ["| bug injected | " + " | ".join(MATRIX_LEVELS) + " |",
            "| --- |" + " --- |" * len(MATRIX_LEVELS)]
    for bug in bugs:
        cells = []
        for level in MATRIX_LEVELS:
            report = diagnosed(bug, level)
            cells.append("PASS (invisible)" if report.passed
                         else ", ".join(f"`{n}`" for n in named(report)) or "—")
        rows.append(f"| `{bug}` | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def documented(script: str) -> str:
    """The table docs/ORACLE.md prints after the line that says ``python tests/<script>``
    regenerates it."""
    text = ORACLE_MD.read_text(encoding="utf-8")
    start = text.index(f"`python tests/{script}`")
    lines = text[start:].split("\n")
    first = next(i for i, line in enumerate(lines) if line.startswith("| bug injected"))
    end = next((i for i in range(first, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(lines[first:end])

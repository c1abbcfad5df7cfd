"""How a user's parameters are laid out, and the map from their names to refvae's (ORACLE.md,
"Layouts").

Parameters may come as a flat dict or as nested dicts (JAX/Flax pytrees, leaves joined with
``.``); weights as PyTorch's ``(out, in)`` or, with ``layout="in_out"``, as ``(in, out)`` kernels
named ``kernel`` (JAX, Flax, Keras, NumPy code); a fused head (one layer emitting
``[mean | logvar]``) is split along its outputs by ``split={"theirs": ["encoder.mean",
"encoder.logvar"]}``; the name map renames modules. Gradients go through the same steps, and every
translated name remembers the user's name, for the report.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError

LAYOUTS = ("out_in", "in_out")
TREE_PREFIXES = ("grad", "heads")   # top-level groups of theirs.npz whose members are joined by "/"


# (out, in) weight or, under in_out, (in, out) kernel
WEIGHT_LEAVES = ("weight", "kernel", "W", "w")
BIAS_LEAVES = ("bias", "b")


def _array_like(value) -> bool:
    return hasattr(value, "shape") or isinstance(value, (int, float))


def children(value):
    """A container's members as ``{name: member}``, or None for a leaf: dicts and other mappings
    (Flax's FrozenDict), lists and tuples (stax, HIPS autograd: positions ``0``, ``1``, …; a pair
    ``(W, b)`` of a 2-D and a 1-D array is ``weight``, ``bias``) and objects holding arrays as
    attributes (Equinox modules, dataclasses; other attributes are ignored)."""
    if isinstance(value, dict) or (hasattr(value, "items") and not hasattr(value, "shape")):
        return dict(value.items())
    if isinstance(value, (list, tuple)):
        if len(value) == 2 and all(hasattr(v, "shape") for v
                                   in value) and len(value[0].shape) == 2 \
                and (len(value[1].shape) == 1 or tuple(value[1].shape[:1]) == (1,)):
            return {"weight": value[0], "bias": value[1]}
        return {str(i): v for i, v in enumerate(value) if v is not None and not callable(v)}
    if (not _array_like(value) and not isinstance(value, (str, bytes))
        and hasattr(value, "__dict__")):
        return {k: v for k, v in vars(value).items() if not k.startswith("_")
                and (hasattr(v, "shape") or children(v) is not None and not callable(v))}
    return None


def flatten(tree, what: str = "", prefix: str = "") -> dict:
    """``{dotted name: leaf}`` from nested containers (:func:`children`); a tree whose only key is
    ``params`` (Flax's variable collection) is read as its contents."""
    members = children(tree)
    if members is None:
        return {prefix.rstrip(".") or "value": tree}
    if list(members) == ["params"] and not prefix and children(members["params"]) is not None:
        members = children(members["params"])
    out = {}
    for key, value in members.items():
        name = f"{prefix}{key}"
        sub = children(value)
        if sub is not None and not hasattr(value, "shape"):
            out.update(flatten(value, what, name + "."))
        else:
            out[name] = value
    return out


def flatten_results(tree: dict, what: str) -> dict:
    """theirs.npz's arrays from a flat or nested dict: ``{"grad": tree}`` becomes
    ``grad/<dotted name>`` and ``{"heads": tree}`` ``heads/<name>``, the tree any container
    :func:`children` reads (a Flax dict, a stax list of ``(W, b)`` tuples, …)."""
    out = {}
    for key, value in tree.items():
        container = not hasattr(value, "shape") and children(value) is not None
        if str(key) in TREE_PREFIXES and container:
            out.update({f"{key}/{k}": v for k, v in flatten(value, what).items()})
        elif container:
            out.update(flatten(value, what, f"{key}."))
        else:
            out[str(key)] = value
    return out


@dataclass
class Layout:
    """The user's conventions: ``name_map`` ``{theirs: ours}`` (whole dotted prefixes),
    ``layout`` (``out_in`` or ``in_out``), ``split`` ``{their fused module: [our modules]}``."""

    name_map: dict = field(default_factory=dict)
    layout: str = "out_in"
    split: dict = field(default_factory=dict)

    @classmethod
    def make(cls, name_map=None, layout=None, split=None) -> "Layout":
        layout = (layout or "out_in").replace("-", "_")
        if layout not in LAYOUTS:
            raise ConfigError(f"unknown layout {layout!r}; choose out_in (PyTorch: weight is (out, "
                              "in)) "
                              "or in_out (JAX/Flax/Keras: kernel is (in, out))")
        split = dict(split or {})
        for fused, parts in split.items():
            if isinstance(parts,
                          str) or not parts or not all(isinstance(p, str) and p for p in parts):
                raise ConfigError(f"split of {fused!r} must list refvae's modules, "
                                  'e.g. {"enc_out": ["encoder.mean", "encoder.logvar"]}')
        return cls(dict(name_map or {}), layout, split)

    def native(self, name: str, arr):
        """``(name, array)`` in PyTorch's convention: ``b`` → ``bias`` (a ``(1, n)`` bias
        flattened); under ``in_out`` ``kernel``, ``W``, ``w`` → ``weight``, transposed."""
        module, dot, leaf = name.rpartition(".")
        if leaf in BIAS_LEAVES:
            name = f"{module}{dot}bias"
            if getattr(arr, "ndim", 0) == 2 and arr.shape[0] == 1:   # a (1, n) bias
                arr = arr.reshape(-1)
        if self.layout != "in_out":
            return name, arr
        if leaf in WEIGHT_LEAVES:
            name = f"{module}{dot}weight"
            if getattr(arr, "ndim", 0) == 2:
                arr = arr.T
        return name, arr


def rename(name: str, name_map: dict) -> str:
    """Apply the name map: an exact entry, else the longest entry that is a dotted prefix
    (``fc1`` renames ``fc1.weight`` to ``encoder.0.weight``, but not ``fc12.weight``)."""
    if name in name_map:
        return name_map[name]
    best = max((k for k in name_map if name.startswith(k + ".")), key=len, default=None)
    return name if best is None else name_map[best] + name[len(best):]


def split_sizes(parts, leaf: str, shapes: dict, fused: str) -> list:
    """Output sizes of the modules a fused one is split into, from refvae's parameter shapes."""
    sizes = []
    for part in parts:
        key = f"{part}.{leaf}" if leaf else part
        if key not in shapes or not shapes[key]:
            raise ConfigError(f"split of {fused!r}: {key!r} is not a weight or bias of the model; "
                              "name refvae's modules, e.g. encoder.mean, encoder.logvar")
        sizes.append(shapes[key][0])
    return sizes


def translate(arrays: dict, layout: Layout, shapes: dict, what: str, prefix: str = "") -> tuple:
    """``(arrays under refvae's names, {refvae name: the user's name})`` for the keys that start
    with ``prefix`` (``grad/`` for gradients); other keys pass unchanged."""
    out, origin = {}, {}

    def put(new, value, theirs):
        if new in out:
            raise ConfigError(f"{what}: the name map sends both {origin[new]!r} and {theirs!r} "
                              f"to {new!r}")
        out[new], origin[new] = value, theirs

    for key, value in arrays.items():
        if not key.startswith(prefix):
            put(key, value, key)
            continue
        name, value = layout.native(key[len(prefix):], value)
        module, _, leaf = name.rpartition(".")
        if module in layout.split:
            parts = layout.split[module]
            sizes = split_sizes(parts, leaf, shapes, module)
            if getattr(value, "ndim", 0) < 1 or value.shape[0] != sum(sizes):
                raise ConfigError(f"{what}: {key} "
                                  f"has {value.shape[0] if getattr(value, 'ndim', 0) else 0} "
                                  f"outputs but {', '.join(parts)} "
                                  f"take {' + '.join(map(str, sizes))}")
            start = 0
            for part, size in zip(parts, sizes):
                put(f"{prefix}{part}.{leaf}", value[start:start + size],
                    f"{key} outputs {start}:{start + size}")
                start += size
        else:
            put(prefix + rename(name, layout.name_map), value, key)
    return out, origin


def unused_entries(names, layout: Layout) -> list:
    """Name-map and split entries that match none of the (layout-converted) names."""
    native = [layout.native(n, None)[0] for n in names]
    keys = list(layout.name_map) + list(layout.split)
    return [k for k in keys if not any(n == k or n.startswith(k + ".") for n in native)]


def parse_split(pairs=()) -> dict:
    """``{theirs: [ours, ...]}`` from ``theirs=ours1,ours2`` strings (CLI ``--split``)."""
    split = {}
    for pair in pairs:
        theirs, sep, ours = pair.partition("=")
        parts = [p.strip() for p in ours.split(",") if p.strip()]
        if not sep or not theirs or len(parts) < 2:
            raise ConfigError(f"split entry {pair!r} is not of the form theirs=ours1,ours2 "
                              "(e.g. enc_out=encoder.mean,encoder.logvar)")
        split[theirs] = parts
    return split

"""Moved to :mod:`refvae.math` (activations, MLP); this path re-exports the public names."""
from ..math.activations import ACTIVATIONS, Activation, get_activation
from ..math.mlp import CURVATURE_FORMS, MLP, MLPBackward

__all__ = ["ACTIVATIONS", "Activation", "get_activation", "MLP", "MLPBackward", "CURVATURE_FORMS"]

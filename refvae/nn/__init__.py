"""Neural-network building blocks: activations and the MLP (value, gradient, Jacobian, Hessian)."""
from .activations import ACTIVATIONS, Activation, get_activation
from .mlp import CURVATURE_FORMS, MLP, MLPBackward

__all__ = ["ACTIVATIONS", "Activation", "get_activation", "MLP", "MLPBackward", "CURVATURE_FORMS"]

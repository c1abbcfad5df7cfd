"""Recognition models q(x|y): the sampling transform, KL, log-density and gradient estimators."""
from .categorical import Categorical, CategoricalState
from .flow import PlanarFlowGaussian, PlanarFlowState
from .gaussian import DiagonalGaussian, GaussianState
from .gaussian_full import FullCovarianceGaussian, FullGaussianState

__all__ = ["Categorical", "CategoricalState", "DiagonalGaussian", "GaussianState",
           "FullCovarianceGaussian", "FullGaussianState", "PlanarFlowGaussian", "PlanarFlowState",
           "make_latent"]


def make_latent(config):
    """The recognition model named by ``config.latent`` (a validated :class:`VAEConfig`)."""
    if config.latent == "gaussian":
        if config.flow_length:
            return PlanarFlowGaussian(config.latent_dim, config.flow_length, config.scale_head,
                                      config.scale_floor)
        return DiagonalGaussian(config.latent_dim, config.scale_head, config.scale_floor, config.kl)
    if config.latent == "gaussian_full":
        return FullCovarianceGaussian(config.latent_dim, config.kl)
    return Categorical(config.latent_dim, config.categories, config.categorical_kl,
                       config.prior_temperature)

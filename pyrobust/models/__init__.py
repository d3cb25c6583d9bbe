"""Pyro VAEs: the site protocol, networks, likelihoods and the VAE module."""

from pyrobust.models.io import (
    load_model,
    model_config,
    model_from_config,
    register_module,
    save_model,
)
from pyrobust.models.likelihoods import (
    BernoulliLikelihood,
    ContinuousBernoulliLikelihood,
    GaussianLikelihood,
    LaplaceLikelihood,
    Likelihood,
    make_likelihood,
)
from pyrobust.models.lipschitz import (
    BjorckLinear,
    GroupSort,
    LipschitzConstants,
    LipschitzDecoder,
    LipschitzEncoder,
    LipschitzFixedStdEncoder,
    LipschitzMLP,
    bjorck_orthonormalize,
    lipschitz_constants,
)
from pyrobust.models.nets import (
    BurgessDecoder,
    BurgessEncoder,
    ConvDecoder,
    ConvDecoder28,
    ConvEncoder,
    ConvEncoder28,
    MLPDecoder,
    MLPEncoder,
)
from pyrobust.models.sites import guide_loc_scale, model_mean
from pyrobust.models.vae import VAE

__all__ = [
    "VAE",
    "BernoulliLikelihood",
    "BjorckLinear",
    "BurgessDecoder",
    "BurgessEncoder",
    "ContinuousBernoulliLikelihood",
    "ConvDecoder",
    "ConvDecoder28",
    "ConvEncoder",
    "ConvEncoder28",
    "GaussianLikelihood",
    "GroupSort",
    "LaplaceLikelihood",
    "Likelihood",
    "LipschitzConstants",
    "LipschitzDecoder",
    "LipschitzEncoder",
    "LipschitzFixedStdEncoder",
    "LipschitzMLP",
    "MLPDecoder",
    "MLPEncoder",
    "bjorck_orthonormalize",
    "guide_loc_scale",
    "lipschitz_constants",
    "load_model",
    "make_likelihood",
    "model_config",
    "model_from_config",
    "model_mean",
    "register_module",
    "save_model",
]

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
    "BurgessDecoder",
    "BurgessEncoder",
    "ContinuousBernoulliLikelihood",
    "ConvDecoder",
    "ConvDecoder28",
    "ConvEncoder",
    "ConvEncoder28",
    "GaussianLikelihood",
    "LaplaceLikelihood",
    "Likelihood",
    "MLPDecoder",
    "MLPEncoder",
    "guide_loc_scale",
    "load_model",
    "make_likelihood",
    "model_config",
    "model_from_config",
    "model_mean",
    "register_module",
    "save_model",
]

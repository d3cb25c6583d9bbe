"""Pyro VAEs: the site protocol, networks, likelihoods and the VAE module."""

from pyrobust.models.sites import guide_loc_scale, model_mean

__all__ = ["guide_loc_scale", "model_mean"]

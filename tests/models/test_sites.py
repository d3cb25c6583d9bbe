import pyro
import pyro.distributions as dist
import pytest
import torch

from pyrobust.models import guide_loc_scale, model_mean
from tests.linear_gaussian import LinearGaussianVAE


def test_guide_loc_scale_reads_hand_written_guide():
    lg = LinearGaussianVAE()
    x = torch.randn(5, lg.d_x, dtype=lg.dtype)
    loc, scale = guide_loc_scale(lg.guide, x)
    torch.testing.assert_close(loc, x @ lg.A.T)
    torch.testing.assert_close(scale, torch.full_like(loc, lg.s))


def test_model_mean_folds_sample_dims():
    lg = LinearGaussianVAE()
    x = torch.randn(5, lg.d_x, dtype=lg.dtype)
    z = torch.randn(7, 2, 5, lg.d_z, dtype=lg.dtype)
    g = model_mean(lg.model, x, z)
    assert g.shape == (7, 2, 5, lg.d_x)
    torch.testing.assert_close(g, z @ lg.W.T)


def test_wrong_latent_site_names_sites():
    lg = LinearGaussianVAE()
    x = torch.randn(2, lg.d_x, dtype=lg.dtype)
    with pytest.raises(ValueError, match=r"no sample site named 'w'.*\['z'\].*latent_site="):
        guide_loc_scale(lg.guide, x, latent_site="w")
    with pytest.raises(ValueError, match=r"no sample site named 'y'.*obs_site="):
        model_mean(lg.model, x, torch.zeros(2, lg.d_z, dtype=lg.dtype), obs_site="y")


def test_non_normal_guide_is_rejected():
    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Laplace(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))

    with pytest.raises(ValueError, match=r"'z' must be a diagonal Normal.*Laplace"):
        guide_loc_scale(guide, torch.zeros(3, 4))


def test_z_shape_mismatch():
    lg = LinearGaussianVAE()
    x = torch.randn(5, lg.d_x, dtype=lg.dtype)
    with pytest.raises(ValueError, match="batch=5"):
        model_mean(lg.model, x, torch.zeros(4, lg.d_z, dtype=lg.dtype))

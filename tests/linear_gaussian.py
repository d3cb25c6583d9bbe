r"""The analytic test case of THEORY.md section 7, as a plain Pyro model and guide.

Encoder mean :math:`\mu(x) = A x`, constant isotropic std ``s``, decoder :math:`g(z) = W z`
with orthonormal columns. With reference ``"mean"``, :math:`\|\Delta\|^2 / s^2` is noncentral
chi-square with ``d_z`` degrees of freedom and noncentrality :math:`\|A\delta\|^2/s^2`; with
``"sample"`` replace :math:`s^2` by :math:`2s^2`.
"""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from scipy import optimize, stats


class LinearGaussianVAE:
    """Plain-Pyro linear-Gaussian VAE with exact robustness answers."""

    def __init__(self, d_x=6, d_z=3, s=0.3, obs_scale=0.1, seed=0, dtype=torch.float64):
        g = torch.Generator().manual_seed(seed)
        self.A = torch.randn(d_z, d_x, generator=g, dtype=dtype)
        q, _ = torch.linalg.qr(torch.randn(d_x, d_z, generator=g, dtype=dtype))
        self.W = q  # (d_x, d_z), W^T W = I
        self.s = s
        self.obs_scale = obs_scale
        self.d_x, self.d_z = d_x, d_z
        self.dtype = dtype

    # --- the Pyro pair -------------------------------------------------------------
    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            zero = x.new_zeros(x.shape[0], self.d_z)
            z = pyro.sample("z", dist.Normal(zero, 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T, self.obs_scale).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            loc = x @ self.A.T
            pyro.sample("z", dist.Normal(loc, self.s * torch.ones_like(loc)).to_event(1))

    # --- exact answers ---------------------------------------------------------------
    def _var(self, reference):
        return self.s**2 * (2.0 if reference == "sample" else 1.0)

    def p_robust(self, r, delta, reference="mean"):
        """Exact p(||Delta|| <= r) for perturbation(s) ``delta`` of shape (..., d_x)."""
        v = self._var(reference)
        nc = (torch.as_tensor(delta, dtype=self.dtype) @ self.A.T).pow(2).sum(-1).numpy() / v
        return stats.ncx2.cdf(np.asarray(r) ** 2 / v, self.d_z, nc)

    def degree(self, delta, reference="mean"):
        """Exact median of ||Delta||."""
        v = self._var(reference)
        nc = (torch.as_tensor(delta, dtype=self.dtype) @ self.A.T).pow(2).sum(-1).numpy() / v
        return np.sqrt(v * stats.ncx2.ppf(0.5, self.d_z, nc))

    @property
    def spectral_norm(self):
        return torch.linalg.matrix_norm(self.A, ord=2).item()

    @property
    def frobenius_norm(self):
        return torch.linalg.matrix_norm(self.A).item()

    def true_margin(self, r, reference="mean"):
        """Exact margin t*/||A||_2: t* solves ncx2.cdf(r^2/v, d_z, t^2/v) = 1/2 (0 if p_A <= 1/2)."""
        v = self._var(reference)
        if stats.chi2.cdf(r**2 / v, self.d_z) <= 0.5:
            return 0.0

        def f(t):
            return stats.ncx2.cdf(r**2 / v, self.d_z, t**2 / v) - 0.5

        hi = 1.0
        while f(hi) > 0:
            hi *= 2
        t_star = optimize.brentq(f, 0.0, hi, xtol=1e-12)
        return t_star / self.spectral_norm

    def bound(self, r, norm="frobenius", reference="mean"):
        """The [CAM] bound s * Phi^-1(p_A) / ||A|| with the exact p_A."""
        p_a = float(self.p_robust(r, torch.zeros(self.d_x, dtype=self.dtype), reference))
        if p_a <= 0.5:
            return 0.0
        n = self.spectral_norm if norm == "spectral" else self.frobenius_norm
        return self.s * stats.norm.ppf(p_a) / n

"""pyrobust.inference: disentangling objectives, schedules, the training loop, IWAE.

Objectives are Pyro ELBOs (use them with :class:`pyro.infer.SVI` like Pyro's own), and
:func:`fit` trains any model/guide pair with one of them, returning the history as an
``xarray.DataTree``.
"""

from pyrobust.inference import schedules
from pyrobust.inference.fit import fit, load_checkpoint, save_checkpoint
from pyrobust.inference.iwae import importance_log_likelihood
from pyrobust.inference.objectives import (
    BetaELBO,
    BetaTCELBO,
    CapacityELBO,
    DIPVAELoss,
    FactorVAELoss,
    JitBetaELBO,
    JitBetaTCELBO,
    JitCapacityELBO,
    JitDIPVAELoss,
    dip_covariance,
    log_aggregate_posterior,
    log_importance_weights,
    permute_dims,
    tc_decomposition,
)

__all__ = [  # noqa: RUF022 - grouped by purpose
    # objectives
    "BetaELBO",
    "BetaTCELBO",
    "CapacityELBO",
    "DIPVAELoss",
    "FactorVAELoss",
    "JitBetaELBO",
    "JitBetaTCELBO",
    "JitCapacityELBO",
    "JitDIPVAELoss",
    # their building blocks
    "dip_covariance",
    "log_aggregate_posterior",
    "log_importance_weights",
    "permute_dims",
    "tc_decomposition",
    # schedules
    "schedules",
    # training
    "fit",
    "load_checkpoint",
    "save_checkpoint",
    # evaluation
    "importance_log_likelihood",
]

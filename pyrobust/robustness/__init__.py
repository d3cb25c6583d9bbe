"""pyrobust.robustness."""

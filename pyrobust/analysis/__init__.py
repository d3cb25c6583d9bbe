"""pyrobust.analysis."""

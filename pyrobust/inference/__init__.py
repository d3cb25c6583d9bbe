"""pyrobust.inference."""

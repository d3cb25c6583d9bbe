"""pyrobust.data."""

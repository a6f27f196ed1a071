"""Analysis over arrays (numpy + matplotlib): neighbours, geometry, plots, exports."""

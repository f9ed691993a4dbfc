"""consumers/machinery."""

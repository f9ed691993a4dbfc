"""services/process."""

"""services/config."""

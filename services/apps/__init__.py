"""services/apps."""

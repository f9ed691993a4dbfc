"""services/kafka."""

"""services/domain."""

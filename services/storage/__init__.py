"""services/storage."""

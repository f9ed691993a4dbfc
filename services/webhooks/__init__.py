"""services/webhooks/delivery."""

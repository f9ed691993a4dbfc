"""services/typography/text."""

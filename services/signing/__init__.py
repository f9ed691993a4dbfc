"""Signatures on records that change what the fleet does (``control``)."""

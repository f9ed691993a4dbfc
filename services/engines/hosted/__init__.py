"""Hosted engines: image APIs called over HTTPS behind the same lanes as local pipelines."""

"""intvit.models."""

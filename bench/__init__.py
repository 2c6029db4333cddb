"""intvit.bench."""

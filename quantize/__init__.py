"""intvit.quantize."""

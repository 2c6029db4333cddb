"""intvit.calibration."""

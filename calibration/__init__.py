"""intvit.calibration: observers and post-training calibration of activation ranges."""
from .ptq import CalibrationState, calibrate
from .data import CalibrationDataError, iter_batches, load_image, load_image_folder, load_npz
from .observers import OBSERVERS, make_observer

__all__ = ["CalibrationState", "calibrate", "CalibrationDataError", "iter_batches", "load_image",
           "load_image_folder", "load_npz",
           "OBSERVERS", "make_observer"]

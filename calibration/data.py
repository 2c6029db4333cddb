"""Calibration data sources: a DataLoader, any iterable of tensors, a tensor, an ``.npz``, or a folder of images.

Every source is normalised to an iterator of float ``[B, C, H, W]`` tensors.
Items may be tensors, numpy arrays, ``(images, labels)`` pairs or dicts with
``pixel_values``. A folder of image files becomes a tensor with
``load_image_folder`` (resize, ``(x/255 − mean)/std``: the normalisation is the
model's, so the caller names it). Errors name what was wrong and what to pass
instead.
"""
from __future__ import annotations

import os
from typing import Iterable, Iterator, Mapping

import numpy as np
import torch

from ..files import check_regular_file


class ImageFileError(ValueError):
    """An image file PIL cannot read (damaged, truncated, or not an image under an image suffix)."""


class CalibrationDataError(ValueError):
    """The calibration data is missing, empty, or of the wrong shape or type."""


def _joined(images) -> torch.Tensor:
    """One ``[N, C, H, W]`` tensor of a list of ``[C, H, W]`` images or ``[B, C, H, W]`` batches (numpy or
    torch), which must share their image shape."""
    shapes = {tuple(x.shape[-3:]) for x in images}
    if len(shapes) > 1:
        raise CalibrationDataError(f"calibration images of different shapes in one batch ({sorted(shapes)}); "
                                   "resize them to the model's input size first")
    tensors = [torch.from_numpy(np.asarray(x)) if isinstance(x, np.ndarray) else x for x in images]
    return torch.stack(tensors) if tensors[0].ndim == 3 else torch.cat(tensors)


def _as_tensor(item) -> torch.Tensor:
    if isinstance(item, Mapping):
        if "pixel_values" not in item:
            raise CalibrationDataError("calibration batch is a dict without 'pixel_values'")
        item = item["pixel_values"]
    if isinstance(item, (tuple, list)):
        if not item:
            raise CalibrationDataError("calibration batch is an empty tuple")
        # a list of [C, H, W] images (a Hugging Face processor's pixel_values without return_tensors) or of
        # [B, C, H, W] batches is one batch of them all; anything else is an (images, labels, ...) tuple
        # whose first entry is the images
        ndims = {x.ndim if isinstance(x, (np.ndarray, torch.Tensor)) else None for x in item}
        item = _joined(item) if ndims in ({3}, {4}) else item[0]
    if isinstance(item, np.ndarray):
        item = torch.from_numpy(item)
    if not isinstance(item, torch.Tensor):
        raise CalibrationDataError(
            f"calibration batch of type {type(item).__name__} is not an image tensor; "
            "pass tensors [B, C, H, W], (images, labels) pairs or dicts with 'pixel_values'")
    return item


def load_npz(path: str | os.PathLike, key: str | None = None) -> torch.Tensor:
    """Images from an ``.npz`` file (key ``images``/``x``/``pixel_values`` or the only array)."""
    if not os.path.exists(path):
        raise CalibrationDataError(f"calibration file {path} does not exist")
    with np.load(path) as z:
        keys = list(z.keys())
        if key is None:
            key = next((k for k in ("images", "pixel_values", "x", "calib_images") if k in keys),
                       keys[0] if len(keys) == 1 else None)
        if key is None or key not in keys:
            raise CalibrationDataError(f"{path}: no image array found (keys: {keys}); name it 'images'")
        arr = z[key]
    if arr.dtype.kind not in "fc":
        raise CalibrationDataError(
            f"{path}:{key} holds {arr.dtype} values; store images already normalised as float32")
    return torch.from_numpy(np.ascontiguousarray(arr)).float()


def _check_npy_size(path) -> None:
    """Refuse a ``.npy`` whose header promises more bytes than the file holds (a damaged or hostile header
    would otherwise make numpy allocate what it claims, terabytes, before failing)."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            major, _ = fmt.read_magic(f)
            read_header = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
            shape, _, dtype = read_header(f)
            data_bytes = os.fstat(f.fileno()).st_size - f.tell()
    except (ValueError, OSError, EOFError):
        return                                  # not a .npy header: np.load's own error says so
    claimed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if claimed > data_bytes:
        raise CalibrationDataError(f"{path} is damaged: its header declares an array of shape {list(shape)} "
                                   f"({dtype}, {claimed:,} bytes) and the file holds {data_bytes:,} bytes of data; "
                                   "save the images again with numpy.save")


def load_npy(path, what: str = "image array") -> np.ndarray:
    """A ``.npy`` batch of images ``[N, C, H, W]``, with one clear error for a missing, unreadable (a text
    or pickle file) or wrongly shaped one."""
    if os.path.isdir(path):
        raise CalibrationDataError(f"{path} is a folder, not a .npy file; give the {what}'s file")
    check_regular_file(path, what)
    _check_npy_size(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "Object arrays" in str(exc):         # an object array: its items would be unpickled, i.e. run code
            raise CalibrationDataError(f"{path} holds Python objects, which intvit does not unpickle; save the "
                                       "images as a numeric array with numpy.save") from None
        raise CalibrationDataError(f"{path} is not a numpy .npy array file ({type(exc).__name__}); save the "
                                   "images with numpy.save") from None
    except (OSError, EOFError, OverflowError, MemoryError) as exc:    # OverflowError: a damaged header's shape
        raise CalibrationDataError(f"{path} is not a readable numpy .npy array file ({type(exc).__name__}); save "
                                   "the images with numpy.save") from None
    if isinstance(arr, np.lib.npyio.NpzFile):
        arr.close()
        raise CalibrationDataError(f"{path} is an .npz archive (several arrays), not a .npy array; name it .npz, "
                                   "or save the images alone with numpy.save")
    if not isinstance(arr, np.ndarray) or arr.ndim != 4 or 0 in arr.shape:
        shape = list(arr.shape) if isinstance(arr, np.ndarray) else type(arr).__name__
        raise CalibrationDataError(f"{path} holds an array of shape {shape}; expected a batch of images "
                                   "[N, C, H, W] with N >= 1")
    return arr


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def check_mean_std(mean, std, channels: int) -> tuple[list[float], list[float]]:
    """``(mean, std)`` of a ``(x/255 − mean)/std`` normalisation as lists of ``channels`` floats (a single value
    is repeated); ``CalibrationDataError`` unless std is positive and both are finite, with 1 or C values,
    and the mean is on the [0, 1] scale (|mean| <= 1)."""
    mean, std = (np.asarray(v, np.float64).reshape(-1) for v in (mean, std))
    if mean.size not in (1, channels) or std.size not in (1, channels):
        raise CalibrationDataError(f"mean/std need {'1 value' if channels == 1 else f'1 or {channels} values (one per channel)'}"
                                   f" for this {channels}-channel model, got {mean.size} and {std.size}")
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
        raise CalibrationDataError(f"std must be positive and mean/std finite, got mean {mean.tolist()} and "
                                   f"std {std.tolist()}")
    if np.any(np.abs(mean) > 1):            # the mean of a pixel scaled to [0, 1] cannot exceed 1
        raise CalibrationDataError(f"mean {mean.tolist()} / std {std.tolist()} look like the 0-255 scale; they "
                                   "apply after /255, e.g. mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)")
    return [float(v) for v in np.broadcast_to(mean, channels)], [float(v) for v in np.broadcast_to(std, channels)]


def load_image(path, channels: int, size: tuple[int, int], mean, std) -> torch.Tensor:
    """One image file as float32 ``[1, C, H, W]``: turned upright by its EXIF orientation, 16-bit pixels
    brought to the 8-bit scale (``round(v / 257)``), converted to grey or RGB, resized (bilinear) to
    ``size``, ``(x/255 − mean) / std``."""
    from PIL import Image, ImageOps
    if os.path.isdir(path):
        raise ImageFileError(f"{path} is a folder, not an image file; give the image files in it")
    check_regular_file(path, "image")       # missing, a link to nothing, a FIFO or device: named as such
    mean, std = (np.asarray(v, np.float32) for v in check_mean_std(mean, std, channels))
    height, width = size
    try:
        with Image.open(path) as opened:
            img = _eight_bit(ImageOps.exif_transpose(opened))
            img = img.convert("L" if channels == 1 else "RGB").resize((width, height), Image.BILINEAR)
    except (OSError, Image.DecompressionBombError) as exc:      # PIL's UnidentifiedImageError is an OSError
        raise ImageFileError(f"{path} is not a readable image ({exc}); remove or replace it") from None
    x = np.asarray(img, dtype=np.float32).reshape(height, width, -1).transpose(2, 0, 1) / 255.0
    return torch.from_numpy(((x - mean.reshape(-1, 1, 1)) / std.reshape(-1, 1, 1))[None].astype(np.float32))


def _eight_bit(img):
    """A 16-bit grey image (PIL modes ``I;16*``, or ``I`` holding values above 255) on the 8-bit scale,
    ``round(v / 257)``: PIL's own ``convert("L")`` clips such values at 255 instead of scaling them."""
    from PIL import Image
    if not (img.mode.startswith("I;16") or img.mode == "I"):
        return img
    values = np.asarray(img, dtype=np.int64)
    if img.mode == "I" and values.size and values.max() <= 255 and values.min() >= 0:
        return Image.fromarray(values.astype(np.uint8))
    return Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8))


def load_image_folder(folder, channels: int, size: tuple[int, int], mean, std,
                      max_images: int | None = None) -> torch.Tensor:
    """Every image file in ``folder`` (sorted by name, at most ``max_images``) through ``load_image``."""
    if not os.path.isdir(folder):
        raise CalibrationDataError(f"calibration folder {folder} does not exist")
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_SUFFIXES))[:max_images]
    if not files:
        raise CalibrationDataError(f"calibration folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return torch.cat([load_image(os.path.join(folder, f), channels, size, mean, std) for f in files])


def iter_batches(data, batch_size: int = 32) -> Iterator[torch.Tensor]:
    """Yield float image batches from any supported source."""
    if data is None:
        raise CalibrationDataError(
            "no calibration data given: pass a DataLoader, an iterable of image tensors, "
            "a [N, C, H, W] tensor or the path of an .npz file")
    if isinstance(data, (str, os.PathLike)) and os.path.isdir(data):
        raise CalibrationDataError(
            f"{data} is a folder: load its images with intvit.calibration.load_image_folder(folder, channels, "
            "size, mean, std) using your model's normalisation (or `intvit quantize --calib FOLDER`)")
    if isinstance(data, (str, os.PathLike)):
        data = torch.from_numpy(load_npy(data, "calibration array")) if os.fspath(data).endswith(".npy") \
            else load_npz(data)
    if isinstance(data, Mapping):                   # a Hugging Face BatchFeature / processor output
        data = _as_tensor(data)
    if _is_images_and_labels(data):                 # (images, labels), the form intvit.qat takes
        data = data[0]
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(data)
    if isinstance(data, torch.Tensor):
        if data.dim() == 3:
            data = data[None]
        data = [data[i:i + batch_size] for i in range(0, data.shape[0], batch_size)]
    if not isinstance(data, Iterable):
        raise CalibrationDataError(f"calibration data of type {type(data).__name__} is not iterable")
    for item in data:
        yield as_float_images(_as_tensor(item))


def as_float_images(t: torch.Tensor) -> torch.Tensor:
    """A batch of images as float32 ``[B, C, H, W]``: other float types are widened or rounded to float32
    (the float model's type), one image ``[C, H, W]`` becomes a batch of one; integer pixels are refused."""
    t = t.detach().cpu()
    if t.dtype == torch.uint8:
        raise CalibrationDataError("calibration images are uint8 pixels (0-255); normalise them as the float "
                                   "model expects: (x / 255 - mean) / std with its own mean and std")
    if not t.is_floating_point():
        raise CalibrationDataError(f"calibration images hold {t.dtype} values; pass float images normalised as "
                                   "the float model expects: (x / 255 - mean) / std with its own mean and std")
    if t.dim() == 3:
        t = t[None]
    return t.float()


def _is_images_and_labels(data) -> bool:
    return isinstance(data, tuple) and len(data) == 2 and all(isinstance(v, (torch.Tensor, np.ndarray)) for v in data) \
        and data[0].ndim == 4 and data[1].ndim == 1 and len(data[0]) == len(data[1])


def take_batches(data, max_images: int, batch_size: int = 32, purpose: str = "calibration") -> list[torch.Tensor]:
    """The first ``max_images`` images of ``data`` as a list of batches (``iter_batches``); an empty
    source is a ``CalibrationDataError`` that says what needed the images."""
    out, n = [], 0
    for b in iter_batches(data, batch_size):
        if n >= max_images:
            break
        out.append(b[:max_images - n])
        n += out[-1].shape[0]
    if not out:
        raise CalibrationDataError(f"{purpose} needs calibration images; the data set is empty")
    return out


def check_finite_activation(name: str, x: torch.Tensor) -> None:
    """Refuse a NaN/inf activation of the float model, naming the quant point where it first appears."""
    if not bool(torch.isfinite(x).all()):
        raise FloatingPointError(f"the float model produced NaN/inf at '{name}' during calibration; "
                                 "check the model weights and the input normalisation")


def validate_batch(batch: torch.Tensor, want: tuple[int, int, int]) -> None:
    if batch.dim() == 4 and batch.shape[1] == want[0] and tuple(batch.shape[2:]) != tuple(want[1:]):
        raise CalibrationDataError(
            f"calibration images are {batch.shape[2]}x{batch.shape[3]}, the model is set up for "
            f"{want[1]}x{want[2]}; to quantize it for {batch.shape[2]}x{batch.shape[3]} inputs pass "
            f"QuantConfig(image_size=({batch.shape[2]}, {batch.shape[3]})) (intvit quantize --image-size "
            f"{batch.shape[2]}x{batch.shape[3]}), or resize the images")
    if batch.dim() != 4 or tuple(batch.shape[1:]) != tuple(want):
        raise CalibrationDataError(
            f"calibration batch has shape {list(batch.shape)}, the model expects "
            f"[B, {want[0]}, {want[1]}, {want[2]}]")
    if batch.shape[0] == 0:
        raise CalibrationDataError("calibration batch is empty")
    if not bool(torch.isfinite(batch).all()):
        raise CalibrationDataError("calibration images contain NaN or inf")

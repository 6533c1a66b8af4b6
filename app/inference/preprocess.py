"""Image bytes to model input: decode safely, then apply a model's ``[preprocess]``.

The digits model is trained on images passed through this same code, so
what a person uploads is transformed exactly as the training data was.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from .config import Preprocess
from .errors import InferenceError

# Formats Pillow may try; anything else is refused before a decoder runs.
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
# Register every decoder now: Pillow otherwise imports its plugins inside the first
# request that sends something unexpected (130-220 ms in a fresh worker).
Image.init()
# Content cropping works on a shrunken copy: this many times the model's input side is plenty.
CONTENT_WORK_FACTOR = 16
# Strokes are measured and thickened at this many times the model's input side.
STROKE_WORK_FACTOR = 4
# A pixel belongs to the foreground when brighter than this share of the brightest one.
FOREGROUND_THRESHOLD = 0.25
# Pillow's parsers fail on corrupt files with whatever the bad bytes trip: OSError and ValueError
# mostly, but fuzzing found TypeError (a TIFF offset read as a fraction) too. All mean a bad file.
CORRUPT = Exception


def decode(data: bytes, max_pixels: int, pre: Preprocess) -> Image.Image:
    """Decode image bytes, refusing non-images, bombs and truncated files."""
    if not data:
        raise InferenceError(400, "the image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise InferenceError(415, f"not a supported image; send one of {', '.join(FORMATS)}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InferenceError(413, f"the image has more than {max_pixels} pixels") from None
    except CORRUPT:
        raise InferenceError(400, "the image header is corrupt") from None
    width, height = image.size
    if width * height > max_pixels:
        raise InferenceError(413, f"the image has {width}x{height} pixels; the limit is {max_pixels}")
    if width < 1 or height < 1:
        raise InferenceError(400, "the image has no pixels")
    # JPEG can decode at 1/2, 1/4 or 1/8 scale: far faster for photos much larger than needed.
    image.draft(pre.color_mode, _draft_size(pre, width, height))
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except CORRUPT:
        raise InferenceError(400, "the image data is corrupt or truncated") from None
    return image


def _draft_size(pre: Preprocess, width: int, height: int) -> tuple[int, int]:
    target_h, target_w = pre.size
    if pre.crop_to_content:
        side = CONTENT_WORK_FACTOR * max(pre.size)
        return side, side
    if pre.resize == "center_crop":
        side = int(max(pre.size) / pre.crop_fraction)
        return side, side
    return target_w, target_h


def to_array(image: Image.Image, pre: Preprocess) -> np.ndarray:
    """Apply ``pre`` to a decoded image: a float32 array in the model's layout, no batch axis."""
    image = _flatten_alpha(image)
    if image.mode == "LAB":  # TIFF's CIELab: Pillow converts it to RGB and nothing else
        image = image.convert("RGB")
    image = image.convert(pre.color_mode)
    if pre.invert != "never" or pre.autocontrast or pre.crop_to_content:
        image = _isolate_foreground(image, pre)
    image = _resize(image, pre)
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 2:
        array = array[:, :, None]
    if pre.autocontrast:
        peak = array.max()
        if peak > 0:
            array *= 255.0 / peak
    array = (array * pre.scale - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    if pre.layout == "NCHW":
        array = array.transpose(2, 0, 1)
    return np.ascontiguousarray(array, dtype=np.float32)


def _flatten_alpha(image: Image.Image) -> Image.Image:
    """Composite transparent images onto white, as a viewer shows them."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image


def _isolate_foreground(image: Image.Image, pre: Preprocess) -> Image.Image:
    """Invert to light-on-dark, lift the background to zero, crop to the content."""
    if pre.crop_to_content:
        side = CONTENT_WORK_FACTOR * max(pre.size)
        image.thumbnail((side, side), Image.Resampling.BOX)
    luminance = np.asarray(image.convert("L") if image.mode != "L" else image)
    array = np.asarray(image, dtype=np.float32)
    gray = array if array.ndim == 2 else array.mean(axis=2)
    inverted = pre.invert == "always" or (pre.invert == "auto" and _light_background(luminance))
    if inverted:
        array, gray = _both(array, gray, lambda a: 255.0 - a)
    if pre.autocontrast:
        # Most of a picture of one object is background: its median is the floor.
        floor = _median(luminance)
        floor = 255 - floor if inverted else floor
        peak = float(gray.max()) - floor
        if peak > 0:
            array, gray = _both(array, gray, lambda a: np.clip(a - floor, 0.0, None) * (255.0 / peak))
    if pre.crop_to_content:
        array, gray = _crop_to_content(array, gray)
    image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
    if pre.stroke_width:
        image = _thicken_strokes(image, pre)
    return image


def _both(array: np.ndarray, gray: np.ndarray, step) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``step`` to the pixels and to their grayscale twin (the same array for L images)."""
    result = step(array)
    return result, (result if gray is array else step(gray))


def _median(pixels: np.ndarray) -> int:
    """The median of 8-bit pixels, from their histogram (cheaper than sorting them)."""
    return int(np.searchsorted(np.cumsum(np.bincount(pixels.ravel(), minlength=256)), pixels.size / 2))


def _light_background(luminance: np.ndarray) -> bool:
    border = np.concatenate([luminance[0], luminance[-1], luminance[:, 0], luminance[:, -1]])
    return _median(border) > 127


def _crop_to_content(array: np.ndarray, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    peak = float(gray.max())
    if peak <= 0:
        return array, gray
    mask = gray > FOREGROUND_THRESHOLD * peak
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    box = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    return array[box], gray[box]


def _thicken_strokes(image: Image.Image, pre: Preprocess) -> Image.Image:
    """Dilate thin pen strokes to ``stroke_width`` of the content's larger side.

    Works at four times the model's input size (the data set's digits were
    drawn on 32x32 grids for 8x8 inputs). Stroke width is estimated as
    2 * area / perimeter of the inked pixels, which holds for any long, thin shape.
    """
    side = STROKE_WORK_FACTOR * max(pre.size)
    scale = side / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.Resampling.BOX)
    gray = np.asarray(image.convert("L") if image.mode != "L" else image)
    mask = gray > 0.5 * int(gray.max())
    inner = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    area = int(mask.sum())
    perimeter = area - int(inner.sum())
    if perimeter <= 0:
        return image
    passes = min(round((pre.stroke_width * side - 2.0 * area / perimeter) / 2), side // 4)
    if passes <= 0:
        return image
    # Room to grow on every side, so strokes at the crop's edge thicken outwards too.
    grown = Image.new(image.mode, (image.width + 2 * passes, image.height + 2 * passes))
    grown.paste(image, (passes, passes))
    return grown.filter(ImageFilter.MaxFilter(2 * passes + 1))


def _resize(image: Image.Image, pre: Preprocess) -> Image.Image:
    height, width = pre.size
    if pre.resize == "stretch":
        return image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=3.0)
    if pre.resize == "pad":
        # Keep the aspect ratio: fit inside the target, centred on a black canvas.
        scale = min(width / image.width, height / image.height)
        fitted = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(fitted, Image.Resampling.BOX)
        canvas = Image.new(image.mode, (width, height))
        canvas.paste(image, ((width - fitted[0]) // 2, (height - fitted[1]) // 2))
        return canvas
    # center_crop: shorter side to size / crop_fraction, then the centre (ImageNet evaluation).
    shorter = max(height, width) / pre.crop_fraction
    scale = shorter / min(image.width, image.height)
    resized = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    image = image.resize(resized, Image.Resampling.BILINEAR, reducing_gap=3.0)
    left, top = (resized[0] - width) // 2, (resized[1] - height) // 2
    return image.crop((left, top, left + width, top + height))


def sample_png() -> bytes:
    """A small picture (a dark bar on light paper) that exercises every preprocessing step."""
    image = Image.new("L", (48, 64), 230)
    image.paste(20, (20, 8, 28, 56))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def thumbnail(data: bytes, max_pixels: int, side: int = 256) -> bytes:
    """A PNG preview of an uploaded image for the result page (it never stores the upload)."""
    image = _flatten_alpha(decode(data, max_pixels, Preprocess(size=(side, side), resize="stretch")))
    # Convert first: Pillow cannot shrink every mode it decodes (16-bit grayscale, for one).
    image = image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode)
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()

"""Independent references for the corruption tests: make_cifar_c.py's recipes re-written here
with numpy, scipy and PIL, one (H, W, C) uint8 image at a time, the random parts passed in.

They follow the reference script step by step (its libraries where we have them: scipy's
zoom, gaussian_filter, map_coordinates and affine_transform, PIL's resize and JPEG), and
stand in for the ones we lack: colorsys for skimage's HSV, a literal transcription of
ImageMagick's MotionBlurImage (effect.c) for Wand, OpenCV's filter2D / GaussianBlur /
getAffineTransform / warpAffine / resize written out with numpy. No softcal code is used.
"""

from __future__ import annotations

import colorsys
import io
import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

DATA_ROOT = Path(os.environ.get("SOFTCAL_DATA_ROOT") or "data")
SAMPLE = DATA_ROOT / "cifar10-sample" / "test"


def cifar_images(count: int) -> np.ndarray:
    """``count`` real CIFAR-10 test images (N, 32, 32, 3) uint8, spread over the classes."""
    files = sorted(SAMPLE.glob("*/*.png"))
    step = max(1, len(files) // count)
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files[::step][:count]])


def to_nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def to_nhwc(images: torch.Tensor) -> np.ndarray:
    return images.permute(0, 2, 3, 1).numpy()


def as_uint8(x: np.ndarray) -> np.ndarray:
    """The script's final ``np.uint8`` of ``np.clip(x, 0, 1) * 255``."""
    return np.uint8(np.clip(x, 0, 1) * 255)


# ----------------------------------------------------------------------------- deterministic


def brightness(x: np.ndarray, c: float) -> np.ndarray:
    out = np.empty(x.shape)
    for r, col in np.ndindex(x.shape[:2]):
        h, s, v = colorsys.rgb_to_hsv(*(x[r, col] / 255.0))
        out[r, col] = colorsys.hsv_to_rgb(h, s, min(v + c, 1.0))
    return as_uint8(out)


def contrast(x: np.ndarray, c: float) -> np.ndarray:
    x = x / 255.0
    means = np.mean(x, axis=(0, 1), keepdims=True)
    return as_uint8((x - means) * c + means)


def pixelate(x: np.ndarray, c: float) -> np.ndarray:
    h, w = x.shape[:2]
    image = Image.fromarray(x.squeeze(-1) if x.shape[-1] == 1 else x)
    image = image.resize((int(w * c), int(h * c)), Image.BOX).resize((w, h), Image.BOX)
    return np.asarray(image).reshape(x.shape)


def jpeg(x: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(x.squeeze(-1) if x.shape[-1] == 1 else x).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer)).reshape(x.shape)


def _cv2_gaussian_taps(ksize: int, sigma: float) -> np.ndarray:
    """cv2.getGaussianKernel(ksize, sigma, CV_32F) for sigma > 0: float32 exponentials, their
    sum in double, each tap float32(tap / sum)."""
    x = np.arange(ksize) - (ksize - 1) / 2
    taps = np.exp(-0.5 / sigma**2 * x**2).astype(np.float32)
    return (taps.astype(np.float64) * (1.0 / taps.astype(np.float64).sum())).astype(np.float32)


def disk(radius: float, alias_blur: float) -> np.ndarray:
    grid = np.arange(-8, 8 + 1)
    xx, yy = np.meshgrid(grid, grid)
    aliased = np.array((xx**2 + yy**2) <= radius**2, dtype=np.float32)
    aliased /= np.sum(aliased)
    taps = _cv2_gaussian_taps(3, alias_blur)  # cv2.GaussianBlur(ksize=(3, 3)), reflect-101
    aliased = ndimage.correlate1d(aliased, taps, axis=0, mode="mirror")
    return ndimage.correlate1d(aliased, taps, axis=1, mode="mirror")


def defocus(x: np.ndarray, radius: float, alias_blur: float) -> np.ndarray:
    kernel = disk(radius, alias_blur).astype(np.float64)
    x = x / 255.0
    channels = [ndimage.correlate(x[..., d], kernel, mode="mirror") for d in range(x.shape[-1])]
    return as_uint8(np.stack(channels, axis=-1))  # cv2.filter2D: correlation, reflect-101


def clipped_zoom(img: np.ndarray, factor: float) -> np.ndarray:
    h = img.shape[0]
    crop = int(np.ceil(h / factor))
    top = (h - crop) // 2
    img = ndimage.zoom(img[top : top + crop, top : top + crop], (factor, factor, 1), order=1)
    trim = (img.shape[0] - h) // 2
    return img[trim : trim + h, trim : trim + h]


def zoom_blur(x: np.ndarray, end: float) -> np.ndarray:
    factors = np.arange(1, end, 0.01)
    x = (x / 255.0).astype(np.float32)
    out = np.zeros_like(x)
    for factor in factors:
        out += clipped_zoom(x, factor)
    return as_uint8((x + out) / (len(factors) + 1))


# ----------------------------------------------------------------------------- random, draws given


def gaussian_noise(x: np.ndarray, sigma: float, normal: np.ndarray) -> np.ndarray:
    return as_uint8(x / 255.0 + normal * sigma)


def shot_noise(x: np.ndarray, rate: float, uniform: np.ndarray) -> np.ndarray:
    from scipy.stats import poisson

    return as_uint8(poisson.ppf(uniform, x / 255.0 * rate) / rate)


def glass(x: np.ndarray, sigma: float, iterations: int, offsets: np.ndarray) -> np.ndarray:
    """``offsets``: (iterations, 2, H, W) of (dy, dx), used where the script draws them."""
    blur_sigma = (sigma, sigma, 0)
    x = np.uint8(ndimage.gaussian_filter(x / 255.0, blur_sigma, mode="nearest", truncate=4.0) * 255)
    for i in range(iterations):
        x = shuffle(x, offsets[i, 0], offsets[i, 1])
    return as_uint8(ndimage.gaussian_filter(x / 255.0, blur_sigma, mode="nearest", truncate=4.0))


def shuffle(x: np.ndarray, dy: np.ndarray, dx: np.ndarray, max_delta: int = 1) -> np.ndarray:
    """The script's sequential pixel swaps, literally."""
    x = x.copy()
    h_size, w_size = x.shape[:2]
    for h in range(h_size - max_delta, max_delta, -1):
        for w in range(w_size - max_delta, max_delta, -1):
            hp, wp = h + dy[h, w], w + dx[h, w]
            x[h, w], x[hp, wp] = x[hp, wp].copy(), x[h, w].copy()
    return x


def motion(x: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """ImageMagick's MotionBlurImage on 8-bit values, rounded to 8 bits (an 8-bit PNG)."""
    width = int(2 * math.ceil(radius) + 1)
    kernel = np.array([math.exp(-(i * i) / (2 * sigma * sigma)) for i in range(width)])
    kernel /= kernel.sum()
    px, py = width * math.sin(math.radians(angle)), width * math.cos(math.radians(angle))
    h, w = x.shape[:2]
    out = np.zeros(x.shape)
    rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
    for i in range(width):
        ox = math.ceil(i * py / math.hypot(px, py) - 0.5)
        oy = math.ceil(i * px / math.hypot(px, py) - 0.5)
        out += kernel[i] * x[np.clip(rows + oy, 0, h - 1), np.clip(cols + ox, 0, w - 1)]
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def snow(x: np.ndarray, c: tuple, normal: np.ndarray, angle: float) -> np.ndarray:
    """``normal``: (H, W) standard normals, the script's ``np.random.normal`` before scaling."""
    x = np.array(x, dtype=np.float32) / 255.0
    layer = normal * c[1] + c[0]
    layer = clipped_zoom(layer[..., np.newaxis], c[2])
    layer[layer < c[3]] = 0
    layer = (np.clip(layer.squeeze(), 0, 1) * 255).astype(np.uint8)
    layer = motion(layer[..., None], c[4], c[5], angle) / 255.0
    grey = x if x.shape[-1] == 1 else (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    x = c[6] * x + (1 - c[6]) * np.maximum(x, grey * 1.5 + 0.5)
    return as_uint8(x + layer + np.rot90(layer, k=2))


def plasma_fractal(noises: list[np.ndarray], mapsize: int, wibbledecay: float) -> np.ndarray:
    """The script's diamond-square; ``noises`` yields its uniform(-wibble, wibble) draws as
    uniforms on [0, 1), in the order the script draws them."""
    maparray = np.empty((mapsize, mapsize), dtype=np.float64)
    maparray[0, 0] = 0
    stepsize, wibble = mapsize, 100.0
    draws = iter(noises)

    def wibbledmean(array: np.ndarray) -> np.ndarray:
        return array / 4 + wibble * (-wibble + 2 * wibble * next(draws))

    while stepsize >= 2:
        half = stepsize // 2
        cornerref = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        squareaccum = cornerref + np.roll(cornerref, shift=-1, axis=0)
        squareaccum += np.roll(squareaccum, shift=-1, axis=1)
        maparray[half:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(squareaccum)
        drgrid = maparray[half:mapsize:stepsize, half:mapsize:stepsize]
        ulgrid = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        ltsum = (drgrid + np.roll(drgrid, 1, axis=0)) + (ulgrid + np.roll(ulgrid, -1, axis=1))
        maparray[0:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(ltsum)
        ttsum = (drgrid + np.roll(drgrid, 1, axis=1)) + (ulgrid + np.roll(ulgrid, -1, axis=0))
        maparray[half:mapsize:stepsize, 0:mapsize:stepsize] = wibbledmean(ttsum)
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / maparray.max()


def fog(x: np.ndarray, weight: float, fractal: np.ndarray) -> np.ndarray:
    h, w = x.shape[:2]
    x = np.array(x) / 255.0
    max_val = x.max()
    x += weight * fractal[:h, :w][..., np.newaxis]
    return as_uint8(x * max_val / (max_val + weight))


def cv2_shrink(photo: np.ndarray, factor: float = 0.2) -> np.ndarray:
    """cv2.resize(photo, (0, 0), fx=factor, fy=factor) with INTER_LINEAR: half-pixel centres,
    edge clamping, output size rounded; written out for any position (no subsampling shortcut)."""
    h, w = photo.shape[:2]
    out_h, out_w = int(np.rint(h * factor)), int(np.rint(w * factor))
    src_r = np.clip((np.arange(out_h) + 0.5) / factor - 0.5, 0, h - 1)
    src_c = np.clip((np.arange(out_w) + 0.5) / factor - 0.5, 0, w - 1)
    r0, c0 = np.floor(src_r).astype(int), np.floor(src_c).astype(int)
    r1, c1 = np.minimum(r0 + 1, h - 1), np.minimum(c0 + 1, w - 1)
    fr, fc = (src_r - r0)[:, None, None], (src_c - c0)[None, :, None]
    p = photo.astype(np.float64)
    top = p[r0][:, c0] * (1 - fc) + p[r0][:, c1] * fc
    bottom = p[r1][:, c0] * (1 - fc) + p[r1][:, c1] * fc
    return np.rint(top * (1 - fr) + bottom * fr).astype(np.uint8)


def frost(x: np.ndarray, c: tuple, shrunk: np.ndarray, start: tuple[int, int]) -> np.ndarray:
    h, w = x.shape[:2]
    crop = shrunk[start[0] : start[0] + h, start[1] : start[1] + w].astype(np.float64)
    if x.shape[-1] == 1:
        crop = crop @ np.array([0.299, 0.587, 0.114])[:, None]
    return np.uint8(np.clip(c[0] * np.array(x) + c[1] * crop, 0, 255))


def elastic(x: np.ndarray, c: tuple, shifts: np.ndarray, dx_uniform: np.ndarray,
            dy_uniform: np.ndarray) -> np.ndarray:  # fmt: skip
    """``c`` in pixels; ``shifts`` (3, 2) and the dx/dy uniforms in [-1, 1), as the script draws."""
    image = np.array(x, dtype=np.float32) / 255.0
    h, w = image.shape[:2]
    centre = np.float32([w // 2, h // 2])
    s = min(h, w) // 3
    pts1 = np.float32([centre + s, [centre[0] + s, centre[1] - s], centre - s])
    pts2 = pts1 + shifts.astype(np.float32)
    # cv2.getAffineTransform(pts1, pts2): forward map; warpAffine samples at its inverse.
    system = np.zeros((6, 6))
    for k in range(3):
        system[2 * k, 0:2], system[2 * k, 2] = pts1[k], 1
        system[2 * k + 1, 3:5], system[2 * k + 1, 5] = pts1[k], 1
    m = np.linalg.solve(system, pts2.astype(np.float64).reshape(-1)).reshape(2, 3)
    inverse = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
    # scipy works in (row, col): swap x and y of the inverse map.
    matrix = inverse[::-1, 1::-1]
    offset = inverse[::-1, 2]
    warped = np.stack([ndimage.affine_transform(image[..., d], matrix, offset, order=1, mode="mirror")
                       for d in range(image.shape[-1])], axis=-1)  # fmt: skip
    dx = (ndimage.gaussian_filter(dx_uniform, c[1], mode="reflect", truncate=3) * c[0]).astype(np.float32)
    dy = (ndimage.gaussian_filter(dy_uniform, c[1], mode="reflect", truncate=3) * c[0]).astype(np.float32)
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    out = [ndimage.map_coordinates(warped[..., d], [rows + dy, cols + dx], order=1, mode="reflect")
           for d in range(image.shape[-1])]  # fmt: skip
    return as_uint8(np.stack(out, axis=-1))

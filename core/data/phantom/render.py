"""Pixels: a phantom's anatomy seen through its view as an X-ray projection.

Attenuation line integrals add up (soft tissue, air, bone), then transmission, scatter, quantum and electronic
noise, detector blur, log, workstation processing and a window/gamma (or film) curve. Smooth fields (neck, airway,
shoulders) are computed on a coarse grid and upsampled; bones are polygons drawn with Pillow in local patches, with
cortical rims from a distance transform. Markers, burned-in text and JPEG artifacts go on last.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from core.data.phantom.anatomy import Anatomy, Bone
from core.data.phantom.geometry import smooth_curve, ellipse, ribbon, smoothstep
from core.data.phantom.view import View


def _linear_taps(n_in: int, n_out: int, factor: int):
    """Source indices and weights of a bilinear resize along one axis; a coarse cell spans ``factor`` pixels."""
    x = np.clip((np.arange(n_out) + 0.5) / factor - 0.5, 0, n_in - 1)
    i0 = np.floor(x).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (x - i0).astype(np.float32)


def _upsample(coarse: np.ndarray, height: int, width: int, factor: int) -> np.ndarray:
    """Bilinear upsampling of a grid of ``factor``-pixel cells (see _block_mean) to (height, width)."""
    if factor == 1:
        return coarse[:height, :width]
    coarse = coarse.astype(np.float32, copy=False)
    r0, r1, rw = _linear_taps(coarse.shape[0], height, factor)
    rows = coarse[r0] * (1 - rw)[:, None] + coarse[r1] * rw[:, None]
    c0, c1, cw = _linear_taps(coarse.shape[1], width, factor)
    return rows[:, c0] * (1 - cw) + rows[:, c1] * cw


def _block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return image
    h, w = -(-image.shape[0] // factor) * factor, -(-image.shape[1] // factor) * factor
    padded = np.pad(image, ((0, h - image.shape[0]), (0, w - image.shape[1])), mode="edge")
    return padded.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def _lowpass(image: np.ndarray, sigma_mm: float, spacing: float) -> np.ndarray:
    """Gaussian low-pass (sigma in mm) of a full-size image, computed on cells of about sigma / 3.

    A wide blur on a coarse grid costs a few passes over the image at any size.
    """
    factor = max(1, int(sigma_mm / (3.0 * spacing)))
    coarse = ndimage.gaussian_filter(_block_mean(image, factor), sigma_mm / (factor * spacing), mode="nearest")
    return _upsample(coarse, image.shape[0], image.shape[1], factor)


class _Film:
    """Attenuation line integrals on the image grid; bones are added in local patches."""

    def __init__(self, view: View, texture: np.ndarray):
        self.att = np.zeros((view.height, view.width), np.float32)
        self.texture = texture
        self.px_per_mm = 1.0 / view.spacing

    def add(self, polygon_px: np.ndarray, bone: Bone, weight: float = 1.0) -> None:
        h, w = self.att.shape
        x0, y0 = np.floor(polygon_px.min(axis=0)).astype(int) - 2
        x1, y1 = np.ceil(polygon_px.max(axis=0)).astype(int) + 3
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 - x0 < 1 or y1 - y0 < 1:
            return
        canvas = Image.new("L", (x1 - x0, y1 - y0), 0)
        ImageDraw.Draw(canvas).polygon([(float(x), float(y)) for x, y in polygon_px - [x0, y0]], fill=255)
        mask = np.asarray(canvas) > 0
        if not mask.any():
            return
        value = np.full(mask.shape, bone.fill, np.float32)
        if bone.texture:
            value *= 1.0 + bone.texture * self.texture[y0:y1, x0:x1]
        if bone.rim or bone.ramp_mm:
            depth = ndimage.distance_transform_edt(mask).astype(np.float32) - 0.5
            if bone.ramp_mm:
                value *= np.sqrt(np.clip(depth / (bone.ramp_mm * self.px_per_mm), 0.05, 1.0))
            if bone.rim:
                value += bone.rim * np.exp(-depth / max(bone.rim_mm * self.px_per_mm, 0.35))
        self.att[y0:y1, x0:x1] += weight * value * mask


def shoulder_top(u: np.ndarray, anatomy: Anatomy, shift: float, which: int) -> np.ndarray:
    """v (mm) of the top edge of the left (0) or right (1) shoulder above patient-frame u."""
    p = anatomy.params
    c7 = anatomy.column.local(p["length"], [0, 0])[0]
    peak = c7[0] + p["shoulder_peak"] - 10 * which
    return c7[1] + p["shoulder"] + shift + which * p["shoulder_gap"] + 25.0 * ((u - peak) / 80.0) ** 2


def _soft_tissue(anatomy: Anatomy, view: View, factor: int) -> np.ndarray:
    """Neck, face, airway and shoulders as attenuation on a coarse grid (cells of ``factor`` pixels)."""
    p, col = anatomy.params, anatomy.column
    gh, gw = -(-view.height // factor), -(-view.width // factor)
    # Column coordinates vary smoothly: find them on ~2 mm cells, interpolate to this grid.
    k = max(1, int(round(2.0 / (factor * view.spacing))))
    sh, sw = -(-gh // k), -(-gw // k)
    ys, xs = np.mgrid[0:sh, 0:sw].astype(np.float64)
    sparse = np.stack([(xs.ravel() + 0.5) * k * factor - 0.5, (ys.ravel() + 0.5) * k * factor - 0.5], axis=1)
    s, n = (_upsample(c.reshape(sh, sw), gh, gw, k).ravel().astype(np.float64)
            for c in col.coordinates(view.to_mm(sparse)))
    ys, xs = np.mgrid[0:gh, 0:gw].astype(np.float64)
    mm = view.to_mm(np.stack([(xs.ravel() + 0.5) * factor - 0.5, (ys.ravel() + 0.5) * factor - 0.5], axis=1))
    L, hd = p["length"], p["hd"]
    half = p["widths"]["C4"][0] / 2
    per_mm = 1.0 / 110.0  # soft tissue: the neck's mid line integrates to about 1

    # Neck in (s, n): the front jumps forward above the submental line (face), the back widens at the head.
    # The submental skin runs obliquely: lower towards the chin.
    face = smoothstep((p["chin_s"] - s + 0.3 * np.maximum(n - half - p["neck_front"], 0)) / 4.0)
    front = half + p["neck_front"] + face * (90 + p["neck_front"]) + np.maximum(s - L - 15, 0) * 0.9
    back = -(half + p["neck_back"]) - 25 * smoothstep((-hd - 5 - s) / 12.0) - np.maximum(s - L, 0) * 0.4
    mid, semi = (front + back) / 2, (front - back) / 2
    lateral = p["neck_width"] * (1 + 0.1 * face + 0.3 * smoothstep((-hd - 10 - s) / 10))
    neck = lateral * np.sqrt(np.clip(1 - ((n - mid) / semi) ** 2, 0, 1)) * per_mm
    mottle = ndimage.gaussian_filter(np.random.default_rng(p["mottle_seed"]).standard_normal((gh, gw)),
                                     6.0 / (factor * view.spacing))  # fat and muscle planes
    neck *= 1 + 0.04 * mottle.ravel() / max(float(mottle.std()), 1e-6)

    # Airway: pharynx behind a thin prevertebral stripe that thickens below C4 (oesophagus), the
    # larynx narrowing it, the trachea; the nasopharynx curves forward above C2 under the skull base.
    c5 = anatomy.levels["C5"][0]
    pv_up, pv_low = p["prevertebral"]
    prevert = pv_up + (pv_low - pv_up) * smoothstep((s - c5) / 6.0)
    hw = p["airway_half"] * (1 - (1 - p["larynx"]) * np.exp(-(((s - anatomy.levels["C5"][1]) / 7.0) ** 2)))
    centre = half + prevert + hw + 22 * smoothstep((-hd + 6 - s) / 7.0)
    top = smoothstep((s - (-hd - 12)) / 3.0)
    air = np.clip(1 - ((n - centre) / hw) ** 4, 0, 1) ** 0.5 * top
    pocket = np.exp(-(((s - p["chin_s"] - 3) / 5) ** 2 + ((n - centre - 14) / 7) ** 2)) * (1 - face)  # vallecula
    airway = -(p["airway_width"] * air + 12 * pocket) * per_mm

    # Shoulders: left and right domes in the patient frame, from C6 to below T2.
    u, v = mm[:, 0], mm[:, 1]
    shoulders = np.zeros_like(u)
    for which in (0, 1):
        depth = np.maximum(v - shoulder_top(u, anatomy, view.params["shoulder_shift"], which), 0)
        shoulders += p["shoulder_density"] / 2 * (1 - np.exp(-depth / 10.0))
    inside = np.clip(1 - ((n - mid) / (semi + 60)) ** 2, 0, 1) ** 0.5
    field = neck + airway * (neck > 0.05) + shoulders * np.maximum(inside, 0.3)
    return field.reshape(gh, gw).astype(np.float32)


def _bone_texture(rng: np.random.Generator, view: View) -> np.ndarray:
    """Trabecular pattern, zero mean and unit spread: a mesh of thin bright struts around dark marrow spaces.

    The struts are the zero crossings of band-pass noise (~1 mm cells, stretched along the column,
    as the load-bearing vertical trabeculae are), plus a little fine grain.
    """
    factor = max(1, int(round(0.3 / view.spacing)))
    gh, gw = -(-view.height // factor), -(-view.width // factor)
    noise = rng.standard_normal((gh, gw)).astype(np.float32)
    cell = max(0.6, 0.45 / (view.spacing * factor))
    band = ndimage.gaussian_filter(noise, (1.6 * cell, cell)) - ndimage.gaussian_filter(noise, 3 * cell)
    band /= max(float(band.std()), 1e-6)
    struts = np.exp(-4.0 * band**2)  # near 1 on the zero crossings: a connected network of lines
    mesh = struts + 0.3 * ndimage.gaussian_filter(noise, 0.6)
    mesh -= mesh.mean()
    mesh /= max(float(mesh.std()), 1e-6)
    return _upsample(mesh, view.height, view.width, factor)


def attenuation(anatomy: Anatomy, view: View, rng: np.random.Generator) -> np.ndarray:
    """Line integrals of attenuation (neck mid line ~ 1) on the image grid, facing right."""
    film = _Film(view, _bone_texture(rng, view))
    yaw = view.params["yaw_mm"]
    for bone in anatomy.bones:
        if bone.spread:
            for side in (-0.5, 0.5):
                film.add(view.to_px(bone.polygon + side * bone.spread * yaw), bone, 0.5)
        else:
            film.add(view.to_px(bone.polygon), bone)
    # Shoulder girdle bones: clavicles low in front, humeral heads behind (both sides).
    p = anatomy.params
    c7 = anatomy.column.local(p["length"], [0, 0])[0]
    for side in (-1.0, 1.0):
        shift = np.array([side * 5.0, side * 4.0 + p["clavicle"]]) + view.params["shoulder_shift"] * np.array([0, 1])
        clavicle = smooth_curve([c7 + [75, 42], c7 + [45, 32], c7 + [15, 22], c7 + [-20, 20]], 16) + shift
        film.add(view.to_px(ribbon(clavicle, 6.0, 5.0)), Bone(np.empty((0, 2)), 0.14, 0.35, 1.8, 4.0, 0.3), 0.5)
        humerus = ellipse(c7 + [-50 + side * 8, 60 + p["clavicle"] + side * 6], 24, 24)
        film.add(view.to_px(humerus), Bone(np.empty((0, 2)), 0.2, 0.35, 2.0, 6.0, 0.3), 0.5)
    factor = max(1, int(round(0.6 / view.spacing)))
    att = film.att + _upsample(_soft_tissue(anatomy, view, factor), view.height, view.width, factor)
    if view.params["backboard"]:  # cross-table lateral: a spine board behind the neck, straight across the film
        back = float(view.to_px(anatomy.column.local(anatomy.params["length"] / 2,
                                                     [[-anatomy.params["neck_back"] - 20.0, 0]]))[0, 0])
        x = np.arange(view.width, dtype=np.float32)
        att += view.params["backboard"] * smoothstep((back - x) / 2.0)[None, :].astype(np.float32)
    return att


def expose(att: np.ndarray, view: View, rng: np.random.Generator) -> np.ndarray:
    """Film/detector chain: transmission, scatter, quantum noise, blur, log, processing, window."""
    vp = view.params
    transmission = np.exp(-vp["attenuation"] * att)
    transmission += vp["scatter"] * _lowpass(transmission, 25.0, view.spacing)  # scatter veil
    heel = 1 + vp["heel"] * np.linspace(-1, 1, view.height, dtype=np.float32)[:, None]
    photons = np.float32(vp["photons"] * math.exp(vp["attenuation"])) * heel  # soft tissue gets `photons`
    counts = transmission * photons
    counts += rng.standard_normal(counts.shape, dtype=np.float32) * np.sqrt(np.maximum(counts, 1.0))
    if vp["read_noise"] > 0:  # electronic (Gaussian) noise: the same everywhere, so it dominates behind bone
        counts += rng.standard_normal(counts.shape, dtype=np.float32) * np.float32(
            vp["read_noise"] * math.sqrt(vp["photons"]))
    blur_px = vp["blur_mm"] / view.spacing
    if blur_px > 0.25:
        counts = ndimage.gaussian_filter(counts, blur_px)
    density = -np.log(np.maximum(counts, 0.5) / photons)
    # Processing as on a DR workstation: compress the large-scale range, enhance edges.
    local = _lowpass(density, 1.5, view.spacing)
    low = _lowpass(density, 10.0, view.spacing)
    level = float(np.median(low[::4, ::4]))
    density = density - vp["compression"] * (low - level) + vp["sharpen"] * (density - local)
    if vp["strong_sharpen"]:  # the wide unsharp mask of CR/DX processing: halos along every edge
        density = density + vp["strong_sharpen"] * (density - _lowpass(density, 4.0, view.spacing))
    lo, hi = np.percentile(density[::3, ::3], [vp["low_pct"], vp["high_pct"]])
    image = np.clip((density - lo) / max(float(hi - lo), 1e-6), 0, 1)
    if vp["film_curve"]:  # film's S-shaped characteristic curve: toe and shoulder compress both ends
        k = vp["film_curve"]
        image = (1 / (1 + np.exp(-k * (image - 0.5))) - 1 / (1 + math.exp(k / 2))) / (1 - 2 / (1 + math.exp(k / 2)))
    else:
        image = image ** vp["gamma"]
    image = vp["black"] + (1 - vp["black"]) * image
    if vp["collimate"]:  # unexposed strips at the film's sides, clear of the spine
        left, right = vp["collimate"]
        image[:, :left] = vp["collimate_value"]
        image[:, view.width - right:] = vp["collimate_value"]
    if vp["collimate_tb"]:
        top, bottom = vp["collimate_tb"]
        image[:top] = vp["collimate_value"]
        image[view.height - bottom:] = vp["collimate_value"]
    if vp["border"]:  # a scanned film's black frame
        edge = max(1, int(vp["border"] * min(view.width, view.height)))
        image[:edge], image[-edge:], image[:, :edge], image[:, -edge:] = 0.0, 0.0, 0.0, 0.0
    return image.astype(np.float32)


def draw_marker(image: np.ndarray, corner: int, px_per_mm: float, keep_clear: list[float]) -> None:
    """A lead side marker: a bright plate with a letter in a corner, as on most lateral films."""
    h, w = image.shape
    size = int(round(12 * px_per_mm))
    if size < 6 or size * 4 > min(h, w):
        return
    x0 = int(0.04 * w) if corner in (0, 2) else w - int(0.04 * w) - size
    y0 = int(0.04 * h) if corner in (0, 1) else h - int(0.04 * h) - size
    x1, y1, x2, y2 = keep_clear
    if x0 < x2 and x0 + size > x1 and y0 < y2 and y0 + size > y1:
        return
    plate = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(plate)
    stroke = max(1, size // 6)
    draw.rectangle([0, 0, size - 1, size - 1], outline=150, width=max(1, stroke // 2))
    draw.line([(size * 0.32, size * 0.2), (size * 0.32, size * 0.8), (size * 0.75, size * 0.8)], fill=255, width=stroke)
    region = image[y0:y0 + size, x0:x0 + size]
    region[...] = np.maximum(region, np.asarray(plate, np.float32) / 255.0 * 0.97)


def draw_text(image: np.ndarray, text: str, corner: int, height_frac: float, bright: bool,
               keep_clear: list[float], line: int = 0) -> None:
    """Burned-in annotation text along an edge of the film, off the spine (skipped where it would cover it)."""
    from PIL import ImageFont

    h, w = image.shape
    size = max(6, int(round(height_frac * h)))
    font = ImageFont.load_default(size=size)
    left, top, right, bottom = font.getbbox(text)
    tw, th = right - left + 2, bottom - top + 2
    if tw >= w * 0.9 or th >= h * 0.3:
        return
    x0 = int(0.03 * w) if corner in (0, 2) else w - int(0.03 * w) - tw
    step = int(0.06 * h) * line  # later lines further in, so two in one corner do not overprint
    y0 = int(0.12 * h) + step if corner in (0, 1) else h - int(0.12 * h) - th - step  # beside the side marker
    x1, y1, x2, y2 = keep_clear
    if (x0 < x2 and x0 + tw > x1 and y0 < y2 and y0 + th > y1) or x0 < 0 or y0 < 0 or y0 + th > h:
        return
    patch = Image.new("L", (tw, th), 0)
    ImageDraw.Draw(patch).text((1 - left, 1 - top), text, fill=255, font=font)
    ink = np.asarray(patch, np.float32) / 255.0
    region = image[y0:y0 + th, x0:x0 + tw]
    region[...] = region * (1 - ink) + ink * (0.98 if bright else 0.02)


def jpeg_artifacts(image: np.ndarray, quality: int) -> np.ndarray:
    """JPEG's block and ringing artifacts added to the float image (as the difference an 8-bit round trip
    makes), so 8- and 16-bit output keep agreeing and 16-bit keeps its fine levels."""
    import io

    eight = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(eight).save(buffer, format="JPEG", quality=int(quality))
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())), np.float32)
    return np.clip(image + (decoded - eight.astype(np.float32)) / 255.0, 0, 1).astype(np.float32)

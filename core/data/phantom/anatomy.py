"""The geometric spine model: one patient's bones and soft-tissue parameters, in millimetres.

Patient frame: ``u`` towards the face, ``v`` down, canonical facing right. The cervical column is a curve whose
tangent angle ``phi(s)`` changes along the arc length ``s``; the change between the C2 and the C7 inferior
endplates *is* the requested C2–C7 Cobb angle, because every endplate is laid perpendicular to the local tangent.
Curvature is concentrated in the discs (as in real necks); a sigmoid profile adds an S that integrates to zero.

``build_anatomy`` draws from one generator in a fixed order (levels, column, bodies, C2, C1, facets, posterior
elements, skull, mandible, hyoid, soft tissue): the helpers below are called in that order, so a seed keeps its
patient. Reordering them changes every phantom.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from core.data.measure import LANDMARK_NAMES, RuleThresholds
from core.data.phantom.geometry import Column, smooth_curve, ellipse, polygon_centroid, ribbon, rounded_polygon

# Margin (degrees) that sampled targets keep from the rule thresholds, so classes are unambiguous.
_CLASS_MARGIN = 4.0
_LEVELS = ("C3", "C4", "C5", "C6", "C7", "T1", "T2")


@dataclass
class Bone:
    """One bony outline in the patient frame (mm) and how it attenuates.

    ``fill`` rises over ``ramp_mm`` from the edge inwards (a rounded solid seen side-on); ``rim`` is the
    cortex seen tangentially, decaying over ``rim_mm``; ``texture`` scales the trabecular pattern.
    ``spread`` > 0 draws two half-density copies (left and right structures) apart by the view's yaw.
    """

    polygon: np.ndarray
    fill: float
    rim: float = 0.0
    rim_mm: float = 1.0
    ramp_mm: float = 0.0
    texture: float = 0.0
    spread: float = 0.0


@dataclass
class Anatomy:
    target_cobb: float
    profile: str
    column: Column
    landmarks_mm: np.ndarray  # (23, 2) canonical (facing right)
    bones: list[Bone]
    levels: dict  # name -> (s_top, s_bot) along the column
    params: dict


def sample_target(rng: np.random.Generator, curvature_class: str, thresholds: RuleThresholds) -> float:
    lo_t, hi_t = thresholds.reversed_max_deg, thresholds.normal_min_deg
    if curvature_class == "normal":
        return float(rng.uniform(hi_t + _CLASS_MARGIN, max(hi_t + _CLASS_MARGIN + 1, 40.0)))
    if curvature_class == "reversed":
        return float(rng.uniform(min(lo_t - _CLASS_MARGIN - 1, -25.0), lo_t - _CLASS_MARGIN))
    low, high = lo_t + 2.0, hi_t - _CLASS_MARGIN
    if low >= high:
        low = high = (lo_t + hi_t) / 2
    return float(rng.uniform(low, high))


def _curvature_profile(s, seg_weight, length, target_deg, profile, skew, s_amp_deg):
    """Curvature kappa(s) (rad/mm) whose integral over [0, length] is exactly the target angle."""
    inside = (s >= 0) & (s <= length)
    w = np.where(inside, seg_weight, 0.0)
    ds = np.gradient(s)
    base = w * (1.0 + skew * (s / length - 0.5))
    kappa = base * (math.radians(target_deg) / np.sum(base * ds))
    if profile != "arc":
        wave = np.cos(np.pi * s / length)
        wave = wave - np.sum(w * wave * ds) / np.sum(w * ds)  # zero net angle: the Cobb stays the target
        sign = 1.0 if profile == "sigmoid1" else -1.0
        amp = math.radians(s_amp_deg) * math.pi / length / 2
        kappa = kappa + sign * amp * w * wave
    return kappa


class _Bones:
    """The bones of one patient as they are added: outlines in mm, densities scaled by the patient's bone mineral
    density and edge widths by their size."""

    def __init__(self, scale: float, density: float):
        self.scale, self.density = scale, density
        self.bones: list[Bone] = []

    def add(self, polygon, fill, rim=0.0, rim_mm=1.0, ramp_mm=0.0, texture=0.0, spread=0.0) -> None:
        self.bones.append(Bone(np.asarray(polygon, float), fill * self.density, rim * self.density,
                               rim_mm * self.scale, ramp_mm * self.scale, texture, spread))


@dataclass
class _Axis:
    """C2's rigid frame at its inferior endplate (s = 0) and its sizes (mm): the dens, C1, C2's posterior elements
    and the skull are all placed in it."""

    column: Column
    w2: float  # body width
    hb: float  # body height
    hd: float  # endplate to dens tip
    dhw: float  # dens half width
    adc: float  # dens axis (anterior offset)

    def local(self, ab) -> np.ndarray:
        """Points given in the C2 frame."""
        return self.column.local(0.0, ab)


def build_anatomy(rng: np.random.Generator, target_cobb: float, profile: str = "arc") -> Anatomy:
    """Bones and soft-tissue parameters of one patient, canonical facing right, mm."""
    scale = rng.uniform(0.9, 1.1)
    degenerative = rng.random() < 0.55  # most clinical films (CSXA: 96 %) show some spondylosis
    density = rng.uniform(0.8, 1.15)  # bone mineral density: osteopenic .. dense
    levels, widths, discs = _level_spans(rng, scale, degenerative)
    length = levels["C7"][1]
    # Cervical bodies are wedged against the curve: shorter in front, so their endplates do not follow the column's
    # tangent and the discs carry more than the whole lordosis. Measured on the official landmarks of the 6 real
    # CSXA dev films: body wedge (upper minus lower endplate tilt) -10.5 to +3.2 deg, mostly -1 to -7; discs +2 to
    # +17 deg. Phantoms with parallel endplates taught the landmark model a prior that put real C2 and C6 endplates
    # 10-15 deg off.
    wedge = {name: math.radians(rng.uniform(0.5, 8.0)) for name in _LEVELS}
    # C7's lower endplate, tilted up in front by half its wedge, takes that much off the angle measured to it
    column = _column(rng, levels, length, target_cobb + math.degrees(wedge["C7"]) / 2, profile)

    bones = _Bones(scale, density)
    corners = _add_bodies(bones, rng, column, levels, widths, wedge, degenerative)
    axis, c2_points = _add_c2(bones, rng, column)
    _add_c1(bones, rng, axis)
    joints = _facet_joints(rng, column, levels, discs, widths, scale)
    _add_c2_posterior(bones, rng, axis, joints)
    _add_posterior_elements(bones, rng, column, levels, widths, joints)
    head = _add_skull_base(bones, rng, axis)
    gonion = _add_mandible(bones, rng, axis, head)
    _add_hyoid(bones, rng, column, levels, widths)

    landmarks = np.full((len(LANDMARK_NAMES), 2), np.nan)
    landmarks[0], landmarks[1], landmarks[2] = c2_points
    for i, name in enumerate(("C3", "C4", "C5", "C6", "C7")):
        landmarks[3 + 4 * i: 7 + 4 * i] = corners[name]  # pt, at, pb, ab: facing right, posterior = image left
    chin_s = float(gonion[1] - axis.hd) + 2.0  # the mandible's lower border along the column (dens tip v = -hd)
    params = _soft_tissue_params(rng, scale, length, widths, axis.hd, chin_s)
    return Anatomy(target_cobb, profile, column, landmarks, bones.bones, levels, params)


def _level_spans(rng: np.random.Generator, scale: float, degenerative: bool) -> tuple[dict, dict, dict]:
    """(levels, widths, discs): each level's (s_top, s_bot) with the C2 inferior endplate at s = 0, then disc/body
    pairs down to T2; each body's (top, bottom) width; each level's disc height above it."""
    disc = {"C3": 5.0, "C4": 5.3, "C5": 5.5, "C6": 5.3, "C7": 5.0, "T1": 4.5, "T2": 4.0}
    height = {"C3": 13.5, "C4": 13.3, "C5": 13.0, "C6": 13.2, "C7": 14.3, "T1": 16.0, "T2": 17.0}
    width_top = {"C3": 15.0, "C4": 15.3, "C5": 15.8, "C6": 16.3, "C7": 16.8, "T1": 18.0, "T2": 19.5}
    levels, widths, discs, s_cursor = {}, {}, {}, 0.0
    for name in _LEVELS:
        d = disc[name] * scale * rng.uniform(0.85, 1.15)
        if degenerative and name in ("C5", "C6", "C7") and rng.random() < 0.5:
            d *= rng.uniform(0.35, 0.7)  # narrowed disc
        h = height[name] * scale * rng.uniform(0.94, 1.06)
        levels[name] = (s_cursor + d, s_cursor + d + h)
        discs[name] = d
        wt = width_top[name] * scale * rng.uniform(0.95, 1.05)
        widths[name] = (wt, wt * rng.uniform(1.0, 1.06))
        s_cursor += d + h
    return levels, widths, discs


def _column(rng: np.random.Generator, levels: dict, length: float, target_deg: float, profile: str) -> Column:
    """The column curve turning by ``target_deg`` from C2 to C7 (curvature mostly in the discs), leaning forward."""
    s = np.arange(-260.0, length + 260.0, 0.2)
    seg = np.full_like(s, 1.0)
    for top, bot in levels.values():
        seg[(s > top) & (s < bot)] = 0.3
    kappa = _curvature_profile(s, seg, length, target_deg, profile, rng.uniform(-0.7, 0.7), rng.uniform(14, 24))
    phi = -np.concatenate([[0.0], np.cumsum((kappa[1:] + kappa[:-1]) / 2 * np.diff(s))])
    phi -= np.interp(0.0, s, phi)
    column = Column(s, phi)
    # Forward lean: C2 anterior of C7, the C2->C7 chord leaning back by `lean` going down.
    chord = column.local(length, [0, 0])[0] - column.local(0.0, [0, 0])[0]
    phi = phi - math.radians(rng.uniform(6, 22)) - math.atan2(chord[0], chord[1])
    return Column(s, phi)


def _add_bodies(bones: _Bones, rng: np.random.Generator, column: Column, levels: dict, widths: dict, wedge: dict,
                degenerative: bool) -> dict:
    """C3..T2 bodies: wedged (shorter in front), concave endplates, anterior waist. Returns each body's corners
    (posterior top, anterior top, posterior bottom, anterior bottom)."""
    scale, add = bones.scale, bones.add
    corners = {}
    for name in _LEVELS:
        top, bot = levels[name]
        wt, wb = widths[name]
        dt, db = math.tan(wedge[name] / 2) * wt / 2, math.tan(wedge[name] / 2) * wb / 2  # b runs down
        pt, at = column.local(top, [[-wt / 2, -dt], [wt / 2, dt]])
        pb, ab = column.local(bot, [[-wb / 2, db], [wb / 2, -db]])
        corners[name] = (pt, at, pb, ab)
        _, e, t = column.frame((top + bot) / 2)
        dent = rng.uniform(0.2, 1.0, 4) * scale  # endplate concavity, anterior waist: vary per body
        outline = [pt, (pt + at) / 2 + dent[0] * t, at, (at + ab) / 2 - (0.4 + dent[1]) * e, ab,
                   (ab + pb) / 2 - 0.5 * dent[2] * t, pb, (pb + pt) / 2 + 0.4 * dent[3] * e]
        add(rounded_polygon(outline, 1.4 * scale), 0.36, 0.42, 0.8, 3.0, 0.2)
        # Uncinate process: a faint hump over the posterior half of the upper endplate.
        add(rounded_polygon([pt + 0.5 * e, pt + 0.45 * (at - pt), pt + 0.3 * (at - pt) - 2.0 * t, pt - 1.5 * t], 0.8),
            0.06, 0.12, 0.5)
        if degenerative and name in ("C4", "C5", "C6", "C7") and rng.random() < 0.6:
            for corner, sign in ((at, -1.0), (ab, 1.0)):  # anterior osteophytes (spurs) at the disc
                spur = rng.uniform(1.2, 3.5) * scale
                add([corner - 2.5 * sign * t - 0.6 * e, corner + spur * (0.6 * e + sign * t), corner - 1.5 * e],
                    0.2, 0.35, 0.7)
    return corners


def _add_c2(bones: _Bones, rng: np.random.Generator, column: Column) -> tuple[_Axis, tuple]:
    """C2 with the dens, in the rigid frame at its inferior endplate (s = 0). Returns that frame and C2's three
    landmarks (centroid, bottom left, bottom right)."""
    scale, add = bones.scale, bones.add
    w2 = rng.uniform(15.0, 17.0) * scale
    hb = rng.uniform(20.0, 23.0) * scale  # body height
    hd = rng.uniform(36.0, 40.0) * scale  # endplate to dens tip
    dhw = rng.uniform(4.4, 5.3) * scale  # dens half width
    adc = -w2 / 2 + dhw + 0.8  # dens axis
    arc = np.linspace(0, np.pi, 9)
    tip = np.stack([adc + dhw * np.cos(arc), -hd + dhw - dhw * np.sin(arc)], 1)
    waist = 0.8 * dhw
    c2_outline = np.concatenate([
        [[-w2 / 2, 0], [w2 / 2, 0], [w2 / 2 + 0.9, 1.3 * scale], [w2 / 2 + 0.7, -3], [w2 / 2 - 0.6, -12 * scale],
         [w2 / 2 - 2.8, -hb + 0.5], [adc + waist + 0.5, -hb - 1.0], [adc + waist, -hb - 4.0], [adc + dhw, -hd + dhw]],
        tip,
        [[adc - dhw + 0.3, -hd + dhw + 4], [adc - dhw + 0.6, -hb - 1.5], [-w2 / 2 - 0.4, -hb + 1.0],
         [-w2 / 2 - 0.3, -10 * scale]],
    ])
    axis = _Axis(column, w2, hb, hd, dhw, adc)
    c2 = axis.local
    add(rounded_polygon(c2(c2_outline), 1.4 * scale), 0.38, 0.42, 0.9, 3.0, 0.2)
    c2_centroid = polygon_centroid(c2([[-w2 / 2, 0], [w2 / 2, 0], [w2 / 2 - 2.2, -hb], [-w2 / 2 - 0.4, -hb + 1.0]]))
    c2_left, c2_right = c2([[-w2 / 2, 0], [w2 / 2, 0]])
    return axis, (c2_centroid, c2_left, c2_right)


def _add_c1(bones: _Bones, rng: np.random.Generator, axis: _Axis) -> None:
    """C1: anterior arch (an oval ring), lateral masses over the dens, posterior arch with its tubercle."""
    scale, add = bones.scale, bones.add
    c2, w2, hd, dhw, adc = axis.local, axis.w2, axis.hd, axis.dhw, axis.adc
    adi = rng.uniform(1.5, 3.0)
    add(c2(ellipse((adc + dhw + adi + 4.2 * scale, -hd + 8.5 * scale), 4.2 * scale, 6.3 * scale, rng.uniform(-15, 5))),
        0.22, 0.45, 1.0, 2.0, 0.2)
    add(c2(rounded_polygon([[-w2 / 2 - 1, -hd + 1], [w2 / 2 - 3, -hd + 2], [w2 / 2 - 4, -hd + 15], [-w2 / 2 - 4, -hd + 16]],
                    4.0)), 0.14, 0.1, 1.5, 3.0, 0.2)
    post = smooth_curve([[-w2 / 2 - 3, -hd + 11], [-w2 / 2 - 17, -hd + 11.5], [-w2 / 2 - 30, -hd + 9.5]], 12)
    add(c2(ribbon(post, 3.4 * scale, 2.6 * scale)), 0.16, 0.3, 1.0, 1.5, 0.2, spread=1.0)
    add(c2(ellipse((-w2 / 2 - 33 * scale, -hd + 9.5), 4.5 * scale, 6.0 * scale, -10)), 0.2, 0.35, 1.0, 2.0, 0.2)


def _facet_joints(rng: np.random.Generator, column: Column, levels: dict, discs: dict, widths: dict,
                  scale: float) -> dict:
    """Facet joints between articular pillars, sloping down and back: per level (anterior end, posterior end,
    the column's tangent there)."""
    facet = math.radians(rng.uniform(30, 45))
    joints = {}
    for name in _LEVELS:
        top, _ = levels[name]
        c, e, t = column.frame(top - discs[name] / 2 - 0.8 * scale)
        centre = c - (widths[name][0] / 2 + 9.0 * scale) * e
        direction = -math.cos(facet) * e + math.sin(facet) * t
        joints[name] = (centre - 6.5 * scale * direction, centre + 6.5 * scale * direction, t)
    return joints


def _add_c2_posterior(bones: _Bones, rng: np.random.Generator, axis: _Axis, joints: dict) -> None:
    """C2 posterior elements: pars and inferior articular process, then lamina and the large spinous process."""
    scale, add = bones.scale, bones.add
    c2, w2, hb = axis.local, axis.w2, axis.hb
    a3, p3, t3 = joints["C3"]
    c2_pars = np.concatenate([c2([[-w2 / 2 + 0.5, -hb + 3], [-w2 / 2 - 12, -hb + 6]]), [p3 - 0.8 * t3, a3 - 0.8 * t3]])
    add(rounded_polygon(c2_pars, 3.0 * scale), 0.28, 0.3, 1.0, 2.5, 0.2, spread=1.0)
    sp_len = rng.uniform(38, 46) * scale
    spine2 = smooth_curve([[-w2 / 2 - 8, -10], [-w2 / 2 - 20, -7], [-w2 / 2 - sp_len, 1]], 14)
    add(c2(ribbon(spine2, 5.5 * scale, 3.8 * scale)), 0.2, 0.35, 1.0, 2.5, 0.25)


def _add_posterior_elements(bones: _Bones, rng: np.random.Generator, column: Column, levels: dict, widths: dict,
                            joints: dict) -> None:
    """C3..T1: pedicles, articular pillars between the facet joints, lamina + spinous process."""
    scale, add = bones.scale, bones.add
    spine_len = {"C3": 8, "C4": 9, "C5": 12, "C6": 19, "C7": 28, "T1": 30}
    droop_deg = {"C3": 32, "C4": 32, "C5": 28, "C6": 20, "C7": 12, "T1": 25}
    for name, nxt in zip(_LEVELS[:-1], _LEVELS[1:]):
        top, bot = levels[name]
        w = widths[name][0]
        mid = (top + bot) / 2
        _, e, t = column.frame(mid)
        (a1, p1, t1), (a2, p2, t2) = joints[name], joints[nxt]
        add(rounded_polygon([a1 + 0.8 * t1, p1 + 0.8 * t1, p2 - 0.8 * t2, a2 - 0.8 * t2], 2.5 * scale),
            0.3, 0.3, 0.9, 2.5, 0.25, spread=1.0)
        h = bot - top
        add(column.local(mid, rounded_polygon([[-w / 2 + 1, -h / 2 + 1], [-w / 2 - 6, -h / 2 + 2], [-w / 2 - 6, -h / 2 + 6],
                                        [-w / 2 + 1, -h / 2 + 6]], 1.5)), 0.05, 0.06, 0.8, 1.0, spread=1.0)
        start = column.local(mid, [[-w / 2 - 11 * scale, -1.0]])[0]
        junction = column.local(mid, [[-w / 2 - 19 * scale, 1.5]])[0]
        droop = math.radians(droop_deg[name] + rng.uniform(-6, 6))
        reach = spine_len[name] * scale * rng.uniform(0.85, 1.15)
        tip_pt = junction + reach * (-math.cos(droop) * e + math.sin(droop) * t)
        path = smooth_curve([start, junction, (junction + tip_pt) / 2 + 0.6 * t, tip_pt], 14)
        long_spine = name in ("C6", "C7", "T1")
        add(ribbon(path, 3.4 * scale, (2.6 if long_spine else 1.8) * scale), rng.uniform(0.11, 0.18), 0.3, 0.8, 2.0,
            0.25)
        if not long_spine:  # bifid tip: the two tubercles project slightly apart
            add(ellipse(tip_pt + 1.2 * t, 2.2 * scale, 1.6 * scale), 0.08, 0.2, 0.6, 1.0, spread=0.6)


def _add_skull_base(bones: _Bones, rng: np.random.Generator, axis: _Axis):
    """Skull base, in a head frame: the C2 frame tilted about the dens tip. Returns that frame (a function of
    points), which the mandible shares."""
    add = bones.add
    c2 = axis.local
    tilt = math.radians(rng.uniform(-14, 14))  # head flexed or extended on the neck
    dens_tip = np.array([axis.adc, -axis.hd])

    def head(ab):
        ab = np.atleast_2d(np.asarray(ab, float))
        c, s_ = math.cos(tilt), math.sin(tilt)
        return c2(np.stack([c * ab[:, 0] + s_ * ab[:, 1], -s_ * ab[:, 0] + c * ab[:, 1]], 1) + dens_tip)

    basion = np.array([1.0, -5.0])
    opisthion = np.array([-rng.uniform(30, 36), -9.0])
    clivus_top = np.array([20.0, -46.0])
    occiput = smooth_curve([opisthion, [-46, -16], [-61, -36], [-71, -62], [-74, -100], [-66, -145], [-45, -190]], 40)
    palate_b = rng.uniform(-4, 4)
    cranium = np.concatenate([occiput[::-1], [[-20, -7], [-8, -4], basion, clivus_top, [30, -70], [10, -260]]])
    add(head(cranium), 0.42, ramp_mm=6.0, texture=0.1)  # posterior fossa: both skull walls, brain
    face = smooth_curve([clivus_top, [38, -30], [44, palate_b - 6], [80, palate_b - 9], [125, palate_b - 6]], 20)
    add(head(np.concatenate([face, [[125, -260], [10, -260], [30, -70]]])), 0.22, ramp_mm=8.0, texture=0.3)
    add(head(ribbon(occiput, 3.0, 6.0)), 0.25, 0.4, 1.5, 2.0, 0.3)  # occipital squama, outer and inner tables
    add(head(ribbon(smooth_curve([basion, [9, -24], clivus_top], 12), 4.0)), 0.22, 0.3, 1.2, 2.0, 0.2)  # clivus
    add(head(ellipse([-22, -2], 7, 4.5, 10)), 0.14, 0.3, 1.0, 2.0, 0.2, spread=1.0)  # occipital condyles
    add(head(ellipse([-14, -12], 8.0, 14.0, 15)), 0.2, 0.25, 1.2, 4.0, 0.7, spread=2.0)  # mastoid air cells
    add(head(ribbon(smooth_curve([[-30, -24], [-8, -36], [22, -54]], 14), 7.0, 2.0)), 0.3, 0.15, 1.5, 5.0, 0.3,
        spread=2.0)  # petrous ridge
    add(head(ellipse([32, -38], 9.0, 7.0, 0)), -0.25, ramp_mm=3.0)  # sphenoid sinus (air)
    add(head(ribbon(smooth_curve([[45, palate_b], [75, palate_b - 1], [110, palate_b - 3]], 12), 2.2, 4.0)),
        0.2, 0.3, 1.0, 1.5, 0.2)  # hard palate
    return head


def _add_mandible(bones: _Bones, rng: np.random.Generator, axis: _Axis, head) -> np.ndarray:
    """Mandible: ramus from the condyle (in front of the ear) to the angle (C2/C3), body to the chin, with teeth.
    Returns the gonion in the head frame."""
    scale, add = bones.scale, bones.add
    dens_tip = np.array([axis.adc, -axis.hd])
    gonion = np.array([axis.w2 / 2 + rng.uniform(8, 22), rng.uniform(-8, 10)]) - dens_tip
    condyle = np.array([rng.uniform(18, 28), -10.0])
    drop = rng.uniform(-4, 8)  # mandibular plane
    chin = gonion + [76 * scale, 9 + drop]
    mandible = np.concatenate([
        smooth_curve([condyle + [-3, -2], condyle + [-4, 9], (condyle + gonion) / 2 + [-4, 0], gonion + [-2, -8]], 14),
        smooth_curve([gonion + [-2, -8], gonion + [3, 2], gonion + [30, 5 + drop / 3], chin], 16),
        smooth_curve([chin, chin + [6, -12], chin + [3, -25], gonion + [36, -24 + drop / 2], gonion + [27, -24]], 16),
        smooth_curve([gonion + [27, -24], condyle + [27, 4], condyle + [26, -3], condyle + [17, 9], condyle + [6, 4],
                condyle + [3, -4]], 16),
    ])
    add(head(rounded_polygon(mandible, 1.5)), 0.12, 0.42, 2.2, 3.0, 0.25, spread=3.0)
    alveolus = gonion + [32, -24 + drop / 2]
    for k in range(int(rng.integers(3, 7))):  # molars/premolars, lower and upper, in occlusion
        x = alveolus[0] + 3 + 9.5 * k
        y = alveolus[1] + k * drop / 12
        half = rng.uniform(3.4, 4.4)
        for sign, y0 in ((1, y), (-1, y - 14.5)):  # lower tooth: root down; upper tooth: root up
            crown = [[x - half, y0 - sign * 7], [x + half, y0 - sign * 7], [x + half - 0.4, y0], [x - half + 0.4, y0]]
            apex = y0 + sign * 12
            root = [[x - half + 0.8, y0 - 1], [x + half - 0.8, y0 - 1], [x + 0.8, apex], [x - 0.8, apex]]
            add(head(rounded_polygon(root, 1.0)), 0.12, 0.15, 0.8, 1.0, spread=1.0)
            add(head(rounded_polygon(crown, 2.2)), 0.25, 0.55, 1.0, 1.5, spread=1.0)
    return gonion


def _add_hyoid(bones: _Bones, rng: np.random.Generator, column: Column, levels: dict, widths: dict) -> None:
    """Hyoid at C3/C4, well anterior of the bodies."""
    add = bones.add
    hy_s = levels["C3"][1] + rng.uniform(-4, 6)
    hy_a = widths["C3"][0] / 2 + rng.uniform(28, 40)
    add(column.local(hy_s, ellipse([hy_a, 0], 5.5, 3.0, -20)), 0.18, 0.4, 1.0, 1.5, 0.2)
    horn = column.local(hy_s, smooth_curve([[hy_a - 2, -1], [hy_a - 12, -6], [hy_a - 20, -12]], 10))
    add(ribbon(horn, 1.6, 1.2), 0.1, 0.25, 0.8, 1.0, spread=1.0)


def _soft_tissue_params(rng: np.random.Generator, scale: float, length: float, widths: dict, hd: float,
                        chin_s: float) -> dict:
    """Neck, airway and shoulders (the renderer's smooth fields); about a third of patients' shoulders hide C7."""
    hidden = rng.random() < 0.35
    return dict(
        scale=scale, length=length, widths=widths, hd=hd, chin_s=chin_s,
        neck_front=rng.uniform(34, 50) * scale, neck_back=rng.uniform(62, 85) * scale,
        neck_width=rng.uniform(95, 125) * scale, prevertebral=(rng.uniform(3, 6), rng.uniform(12, 19)),
        airway_half=rng.uniform(5.0, 8.0), airway_width=rng.uniform(35, 50), larynx=rng.uniform(0.45, 0.8),
        shoulder=rng.uniform(-26, -8) if hidden else rng.uniform(2, 35),
        # thin to heavy-set: shoulders over C7 from faint to white
        shoulder_density=rng.uniform(1.2, 3.8), shoulder_gap=rng.uniform(3, 14), shoulder_peak=rng.uniform(-45, 0),
        clavicle=rng.uniform(5, 30), mottle_seed=int(rng.integers(2**31)),
    )

"""The Label page's workflow as plain Python (no Streamlit here, so every rule is testable on its own).

The film is edited in the browser by the keypoints component (``ui/components/keypoints``): the box, the 23 points,
"not visible" marks, the class, undo and reset, zoom and window/level all happen there, with no server round trip
per click. The component talks to Python only when the annotator acts on the film as a whole — save, save and go on,
go to another film, ask the models for a draft — and then sends everything it holds in one message.

This module is the Python side of that conversation:

- :class:`Annotation` is one film's reading while it is edited (kept per image in session state by the page): the
  truth the component starts from and the edits it sends back, validated, in full-image pixels.
- :func:`component_state` is what the component is drawn from; its ``revision`` tells the component when Python's
  copy changed (a draft applied, a save, another film), so that it drops its local copy for Python's.
- :func:`read_message` checks a component message; :class:`LabelQueue` is the queue and the position in it;
  :func:`handle` carries a message out (take the edits, save, move, draft) through callables the page passes in.
- :func:`opening_queue` picks the queue shown when the page opens (a queue with films in it, said so).
- :func:`point_names`, :func:`diagram_points`, :data:`VERTEBRA_COLOURS`: how the 23 points are named (anterior and
  posterior, from the side the face is on), drawn in the order diagram and coloured by vertebra.
"""
from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from core.data.measure import LANDMARK_NAMES, LEVELS

N_POINTS = len(LANDMARK_NAMES)
VERTEBRAE = ("C2",) + LEVELS
# One colour per vertebra, picked to stay apart from each other and from the box (cyan) on a grey film.
VERTEBRA_COLOURS = {"C2": "#ff5252", "C3": "#ffa726", "C4": "#ffee58", "C5": "#66bb6a", "C6": "#5c8dff",
                    "C7": "#e07bff"}
BOX_COLOUR = "#00e5ff"
FACINGS = ("left", "right")
ACTIONS = ("save", "move", "draft")
# The queue opened when the annotator has not chosen one: the first of these with films in it.
OPENING_QUEUES = ("unlabeled", "rejected", "others", "mine", "all")


# ------------------------------------------------------------------ naming and drawing the 23 points


def vertebra_of(index: int) -> str:
    """"C2" for the first three points, then C3..C7 four points each (CSXA order)."""
    if not 0 <= index < N_POINTS:
        raise ValueError(f"landmark index must be 0..{N_POINTS - 1}, got {index}")
    return LANDMARK_NAMES[index].split(" ")[0]


def point_colours() -> list[str]:
    return [VERTEBRA_COLOURS[vertebra_of(i)] for i in range(N_POINTS)]


def image_side(index: int) -> str | None:
    """"left" or "right": the image side a CSXA name means (None for the C2 centroid)."""
    words = LANDMARK_NAMES[index].split(" ")
    return words[-1] if words[-1] in FACINGS else None


def point_name(index: int, facing: str | None) -> str:
    """The landmark named for a person placing it: "C4 top, anterior" rather than CSXA's "C4 top left", whose
    left/right means the image side (ambiguous: the patient's left?). ``facing`` is the image side the face is on,
    so the corner on that side is anterior; None (not known yet) names the image side: "C4 top, image left"."""
    if facing is not None and facing not in FACINGS:
        raise ValueError(f"facing must be 'left', 'right' or None, got {facing!r}")
    words = LANDMARK_NAMES[index].split(" ")
    side = image_side(index)
    if side is None:
        return "C2 centroid (centre of the body)"
    edge = words[1] if len(words) == 3 else "bottom"
    if facing is None:
        return f"{words[0]} {edge}, image {side}"
    return f"{words[0]} {edge}, {'anterior' if side == facing else 'posterior'}"


def point_names(facing: str | None) -> list[str]:
    return [point_name(i, facing) for i in range(N_POINTS)]


def component_names() -> dict[str, list[str]]:
    """The names for each facing the component may show: "left", "right", and "unknown" (image sides)."""
    return {"left": point_names("left"), "right": point_names("right"), "unknown": point_names(None)}


def diagram_points() -> list[list[float]]:
    """Where each of the 23 points sits in the order diagram, in a unit-wide frame (y down, about 1.75 tall): the
    bodies C2..C7 stacked with their discs, each point on the image side its CSXA name says (the component adds the
    posterior elements and the face on the sides the facing gives)."""
    sides = {"left": 0.22, "right": 0.78}
    points = [[0.5, 0.17], [sides["left"], 0.3], [sides["right"], 0.3]]  # C2: centroid, bottom corners
    top = 0.43
    for _level in LEVELS:
        bottom = top + 0.16
        points += [[sides["left"], top], [sides["right"], top], [sides["left"], bottom], [sides["right"], bottom]]
        top = bottom + 0.13
    return [[round(x, 3), round(y, 3)] for x, y in points]


# ------------------------------------------------------------------ one film's reading


def _point_or_none(value: Any, image_size: tuple[int, int], what: str) -> tuple[float, float] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"{what}: expected [x, y] or null, got {value!r}")
    x, y = (float(v) for v in value)
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ValueError(f"{what}: not a finite point: {value!r}")
    width, height = image_size
    if not (-0.5 <= x <= width + 0.5 and -0.5 <= y <= height + 0.5):
        raise ValueError(f"{what}: ({x:.1f}, {y:.1f}) lies outside the {width} x {height} film")
    return round(x, 2), round(y, 2)


def checked_box(value: Any, image_size: tuple[int, int]) -> list[float] | None:
    """A box from the browser as [x1, y1, x2, y2] (corners in any order), clipped to the film; None stays None."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise ValueError(f"box: expected [x1, y1, x2, y2], got {value!r}")
    x1, y1, x2, y2 = (float(v) for v in value)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise ValueError(f"box: not finite: {value!r}")
    width, height = image_size
    left, right = sorted((min(max(x1, 0.0), width), min(max(x2, 0.0), width)))
    top, bottom = sorted((min(max(y1, 0.0), height), min(max(y2, 0.0), height)))
    if right - left < 1 or bottom - top < 1:
        raise ValueError(f"box: smaller than a pixel inside the film: {value!r}")
    return [round(left, 2), round(top, 2), round(right, 2), round(bottom, 2)]


@dataclass
class Annotation:
    """One image's reading while it is being edited (the page keeps one per image in session state).

    ``landmarks`` holds the placed points (nan where none); ``hidden`` the points marked not visible (stored as
    missing). ``revision`` goes up whenever Python's copy changes, so the component knows to start again from it."""

    image_id: int
    image_size: tuple[int, int]
    roi_box: list[float] | None = None
    landmarks: np.ndarray = field(default_factory=lambda: np.full((N_POINTS, 2), np.nan))
    hidden: set[int] = field(default_factory=set)
    curvature_class: str | None = None
    note: str = ""
    draft: dict | None = None        # the model draft it started from (store record)
    facing: str | None = None        # the side the annotator said the face is on (names anterior/posterior)
    dirty: bool = False              # edited since opened or saved
    revision: int = 0
    seconds: float = 0.0             # time spent on it before the current visit
    opened_at: float | None = None
    uid: str = field(default_factory=lambda: uuid.uuid4().hex[:12])  # this copy (a fresh copy starts afresh)

    @classmethod
    def from_reading(cls, image_id: int, image_size: tuple[int, int], *, curvature_class=None, roi_box=None,
                     landmarks=None, note=None, draft=None) -> "Annotation":
        """A saved reading (or a draft) to continue from; a saved missing point comes back as not visible."""
        work = cls(image_id, (int(image_size[0]), int(image_size[1])),
                   roi_box=None if roi_box is None else [float(v) for v in roi_box],
                   curvature_class=curvature_class, note=note or "", draft=draft)
        if landmarks is not None:
            work._set_points(np.asarray(landmarks, dtype=float).reshape(N_POINTS, 2), all_placed=True)
        return work

    def _set_points(self, points: np.ndarray, all_placed: bool) -> None:
        self.landmarks = points.copy()
        missing = {i for i in range(N_POINTS) if not np.isfinite(points[i]).all()}
        self.landmarks[sorted(missing)] = np.nan
        self.hidden = missing if all_placed else set()

    # -- state

    @property
    def placed_points(self) -> list[int]:
        return [i for i in range(N_POINTS) if np.isfinite(self.landmarks[i]).all()]

    @property
    def next_index(self) -> int | None:
        """The next landmark to place (CSXA order), None when every one is placed or marked not visible."""
        return next((i for i in range(N_POINTS) if i not in self.hidden and not np.isfinite(self.landmarks[i]).all()),
                    None)

    def saved_landmarks(self) -> np.ndarray | None:
        """The points to store: nan for not visible and not yet placed; None when nothing was placed or hidden."""
        return None if not self.placed_points and not self.hidden else self.landmarks.copy()

    def touch(self, now: float | None = None) -> None:
        """Start (or go on) timing this image."""
        if self.opened_at is None:
            self.opened_at = time.monotonic() if now is None else now

    def leave(self, now: float | None = None) -> None:
        """Stop timing (moving to another image); the time so far is kept."""
        if self.opened_at is not None:
            self.seconds += (time.monotonic() if now is None else now) - self.opened_at
            self.opened_at = None

    def elapsed(self, now: float | None = None) -> float:
        current = 0.0 if self.opened_at is None else (time.monotonic() if now is None else now) - self.opened_at
        return self.seconds + current

    def saved(self, now: float | None = None) -> None:
        """After a save: nothing unsaved, and the clock starts again for any later edit."""
        self.dirty = False
        self.seconds = 0.0
        self.opened_at = time.monotonic() if now is None else now
        self.revision += 1

    # -- edits

    def choose_class(self, curvature_class: str | None) -> None:
        if curvature_class != self.curvature_class:
            self.curvature_class = curvature_class
            self.dirty = True

    def set_note(self, note: str) -> None:
        if note != self.note:
            self.note = note
            self.dirty = True

    def clear_points(self) -> None:
        self.landmarks = np.full((N_POINTS, 2), np.nan)
        self.hidden = set()
        self.dirty = True
        self.revision += 1

    def apply_draft(self, record: Mapping[str, Any]) -> None:
        """Fill box, points and class from a model draft (``Draft.record()``); the draft is kept as provenance."""
        if record.get("roi_box") is not None:
            self.roi_box = [float(v) for v in record["roi_box"]]
        if record.get("landmarks") is not None:
            points = np.array([[np.nan if v is None else v for v in row] for row in record["landmarks"]], dtype=float)
            self._set_points(points.reshape(N_POINTS, 2), all_placed=True)
        if record.get("curvature_class"):
            self.curvature_class = record["curvature_class"]
        self.draft = dict(record)
        self.dirty = True
        self.revision += 1

    def take(self, edit: Mapping[str, Any], classes: Sequence[str]) -> bool:
        """Take the component's copy of the film (box, points, hidden, class, facing), checked; returns True when
        it differs from Python's. Points come in full-image pixels (the component maps its zoom and pan)."""
        size = self.image_size
        box = checked_box(edit.get("box"), size)
        raw_points = edit.get("points")
        if not isinstance(raw_points, (list, tuple)) or len(raw_points) != N_POINTS:
            raise ValueError(f"points: expected a list of {N_POINTS} entries")
        points = np.full((N_POINTS, 2), np.nan)
        for i, value in enumerate(raw_points):
            point = _point_or_none(value, size, LANDMARK_NAMES[i])
            if point is not None:
                points[i] = point
        hidden = set()
        for value in edit.get("hidden") or []:
            index = int(value)
            if not 0 <= index < N_POINTS:
                raise ValueError(f"hidden: no landmark {value!r}")
            hidden.add(index)
        points[sorted(hidden)] = np.nan
        curvature_class = edit.get("curvature_class") or None
        if curvature_class is not None and curvature_class not in classes:
            raise ValueError(f"class must be one of {', '.join(classes)}, got {curvature_class!r}")
        facing = edit.get("facing")
        if facing is not None and facing not in FACINGS:
            raise ValueError(f"facing must be 'left' or 'right', got {facing!r}")
        if facing is not None:
            self.facing = facing
        changed = ((box is None) != (self.roi_box is None)
                   or (box is not None and not np.allclose(box, self.roi_box, atol=0.005))
                   or not np.allclose(points, self.landmarks, atol=0.005, equal_nan=True)
                   or hidden != self.hidden or curvature_class != self.curvature_class)
        if changed:
            self.roi_box, self.landmarks, self.hidden = box, points, hidden
            self.curvature_class = curvature_class
            self.dirty = True
        return changed


def component_state(work: Annotation, facing: str | None = None) -> dict:
    """The film's reading as the component starts from it (JSON-ready, full-image pixels). ``facing``: the side
    the face is on when the page knows it (read from the film with saved points); the annotator's own choice on
    this film wins."""
    return {
        "image_id": int(work.image_id),
        "uid": work.uid,
        "revision": int(work.revision),
        "facing": work.facing or facing,
        "box": None if work.roi_box is None else [float(v) for v in work.roi_box],
        "points": [[float(x), float(y)] if np.isfinite([x, y]).all() else None for x, y in work.landmarks.tolist()],
        "hidden": sorted(int(i) for i in work.hidden),
        "curvature_class": work.curvature_class,
        "dirty": bool(work.dirty),
        "draft": work.draft is not None,
    }


# ------------------------------------------------------------------ messages from the component


@dataclass(frozen=True)
class Message:
    """One action of the component: ``save``; ``move`` by ``step`` (``skip`` sends the film to the end of the
    queue; ``save`` saves first, ``discard`` drops unsaved edits); ``draft`` asks the models. ``edit`` is the
    component's copy of the film at that moment."""

    nonce: str
    action: str
    image_id: int
    edit: dict
    step: int = 0
    skip: bool = False
    save: bool = False
    discard: bool = False


def read_message(value: Any, last_nonce: str | None) -> Message | None:
    """The component's newest message, or None when there is none or it was handled already (the component's
    value stays the same on every rerun until it sends another)."""
    if not isinstance(value, Mapping) or value.get("nonce") in (None, "", last_nonce):
        return None
    action = value.get("action")
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
    step = int(value.get("step") or 0)
    if step not in (-1, 0, 1):
        raise ValueError(f"step must be -1, 0 or 1, got {step}")
    return Message(str(value["nonce"]), action, int(value.get("image_id")), dict(value.get("edit") or {}),
                   step=step, skip=bool(value.get("skip")), save=bool(value.get("save")),
                   discard=bool(value.get("discard")))


# ------------------------------------------------------------------ the queue


@dataclass
class LabelQueue:
    """The films of one queue (image ids, in order) and where the annotator is in it."""

    ids: list[int]
    position: int = 0
    key: tuple = ()

    @property
    def current(self) -> int | None:
        return self.ids[min(self.position, len(self.ids) - 1)] if self.ids else None

    @property
    def at_end(self) -> bool:
        return self.position >= len(self.ids) - 1

    def move(self, step: int, skip: bool = False) -> bool:
        """Go ``step`` places through the queue; ``skip`` also sends the current film to the end of it (the film
        after it comes up). Returns True when another film is shown."""
        if not self.ids:
            return False
        before = self.current
        position = min(self.position, len(self.ids) - 1)
        if skip and len(self.ids) > 1:
            self.ids.append(self.ids.pop(position))
            self.position = position if position < len(self.ids) - 1 else 0
            return self.current != before
        self.position = max(0, min(len(self.ids) - 1, position + step))
        return self.current != before


def opening_queue(fetch: Callable[[str], Sequence[Any]], names: Mapping[str, str],
                  order: Sequence[str] = OPENING_QUEUES) -> tuple[str, list, str | None]:
    """The queue to open when the annotator has not picked one: the first in ``order`` with films, and a line
    saying why when that is not the first (an empty "Unlabeled" queue on the demo said nothing and showed nothing).
    ``fetch(name)`` lists a queue's items. Returns (queue name, its items, note or None)."""
    for name in order:
        items = list(fetch(name))
        if items:
            if name == order[0]:
                return name, items, None
            return name, items, (f"Nothing in “{names[order[0]]}”: opened “{names[name]}” "
                                 f"({len(items)} film{'s' if len(items) != 1 else ''}).")
    return order[0], [], None


# ------------------------------------------------------------------ carrying a message out


@dataclass
class Outcome:
    """What :func:`handle` did: a message for the annotator (``flash``, or ``error`` when something failed), the
    label id saved, whether another film is shown."""

    flash: str | None = None
    error: str | None = None
    saved_label: int | None = None
    moved: bool = False


def handle(message: Message, works: dict[int, Annotation], queue: LabelQueue, *, classes: Sequence[str],
           save: Callable[[Annotation], tuple[int, str]], draft: Callable[[Annotation], str | None],
           errors: tuple[type[BaseException], ...] = (ValueError,)) -> Outcome:
    """Carry out one component message.

    The component's copy of the film is taken first, whatever the action, so nothing the annotator did is lost when
    an action fails (Python's copy then equals the browser's, and the component starts again from it). A film with
    no change since it was opened or saved is not saved again.
    ``save(work)`` stores the reading and returns (label id, a line to show); ``draft(work)`` fills the film from
    the models and returns a line or None. Failures of the kinds in ``errors`` come back as ``Outcome.error``."""
    work = works.get(message.image_id)
    if work is None or message.image_id != queue.current:
        return Outcome(error="That film is no longer the one shown; nothing was changed.")
    outcome = Outcome()
    try:
        work.take(message.edit, classes)
    except ValueError as exc:
        return Outcome(error=f"The film's edits were refused: {exc}")
    work.revision += 1
    try:
        if message.action == "draft":
            outcome.flash = draft(work)
            return outcome
        if message.action == "save" or (message.action == "move" and message.save):
            if work.dirty:
                outcome.saved_label, outcome.flash = save(work)
                work.saved()
            else:  # Save & next on a film left as it was: no empty or repeated row in the history
                outcome.flash = f"Image {work.image_id}: nothing changed, nothing saved."
        if message.action == "move":
            if message.discard:
                works.pop(work.image_id, None)  # opened again from the store next time
            else:
                work.leave()
            outcome.moved = queue.move(message.step, message.skip)
            if not outcome.moved and message.step > 0:
                outcome.flash = " ".join(filter(None, [outcome.flash, "That was the last film in this queue."]))
    except errors as exc:
        outcome.error = str(exc)
    return outcome

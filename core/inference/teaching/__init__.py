"""The Teach page's engine (``python -m core quiz`` uses it too).

Explore: a phantom drawn for a C2–C7 angle, facing, shoulders, exposure and noise, measured on its own
ground-truth landmarks (Cobb four-line construction, Ishihara index with its four distances, arc depth, rule class)
and read by the promoted models (class, probabilities, Grad-CAM, their own angle).
Measure it yourself: a student's four endplate corners give an angle, set against the truth and the models'.
Self-test: quizzes (``core.data.quizzes``) with the models' answer frozen into each film at creation.

What repeats is cached per process, so moving one slider redraws only what it changes: a phantom per
(seed, patient, angle, facing, size), the patient chosen for a seed and shoulder setting, and the models' answer
per (film, model files). Exposure and noise are applied to the drawn film (they cost milliseconds): the phantom
generator draws each film's own exposure and noise from its seed and has no knob for them.

The package, one module per part, each importing only the ones before it:

- ``films``: the film settings, the phantom and dataset films, their caches and the prefetcher; ``TeachingError``;
- ``geometry``: endplate tilts, the student's Cobb angle and the four-line / Ishihara / arc construction;
- ``drawing``: the layers drawn over a film and their colours;
- ``explore``: the models' answer on a film, an Explore redraw and a "Measure it yourself" attempt;
- ``quiz``: quizzes (``core.data.quizzes``): creating them with the models' answers frozen in, their films,
  answers and results.

Import the module you need (``from core.inference.teaching import films, quiz``); this file re-exports nothing.
"""

"""The demo build: a working workspace from nothing — phantom films and the three demo models.

A run like any other (task ``demo`` in ``core.runs.registry``, checked by ``DemoConfig``): ``python -m core demo``
builds in the foreground (:func:`build`); the app's Build button queues it through ``core.runs.launch`` like a
training run (:func:`start_build`), so one launcher spawns, watches and cancels every background process. Its run
folder's status.json says where it is: ``step`` of ``steps`` (also ``epoch`` of ``epochs``, for the Runs page),
``stage`` and ``message``; each step is also printed as ``[k/6] stage: message`` (in train.log when queued).

1. write a synthetic phantom set in the CSXA layout (``core.data.phantom.write_phantoms``, on every core)
2. import it as dataset ``phantom-demo`` (``core.data.importers.import_csxa``) and make patient-level splits
3. train the ROI detector (``core.training.detect.fit``) in a process of its own while this one trains the heatmap
   landmark model on ROI crops (``core.training.landmarks.fit``; YOLO-pose stays selectable in the Train page and
   CLI, but is far less precise at this budget: see core/training/landmarks.py); each a run folder under ``runs/``.
   Neither keeps two cores busy on its own (Ultralytics' small batches run mostly on one), so together they take
   ~2/3 of the time one after the other. The detector's process is the build's child, in the run's process group:
   a cancel reaches it too
4. train the S-ResNet-34 classifier (``core.training.classify.train``, a run folder under ``runs/``)
5. promote the three runs (``core.runs.promotion.promote``); each ``promoted.json`` gets ``demo_quality``
6. check the promoted models on held-out phantoms (new patients): box IoU >= 0.5 rate, Cobb MAE and the
   share within 5 deg, mean landmark error (px and % of C2-C7), class accuracy -> ``demo_report.json`` in the run
   folder and the workspace, and the promoted models' ``promoted.json``

Qualities: ``full`` (default: the models the README measures), ``quick`` (weaker models, a third of the time) and
``tiny`` (for tests: minimal sizes, the same code path end to end; the models are not useful). The time each step
took is in ``demo_report.json`` (``step_seconds``). Demo models are trained on synthetic phantoms only: they
demonstrate the product, not clinical accuracy.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from core import settings
from core.data.accounts import SHELL, authorize
from core.runs import launch, layout, promotion
from core.runs.configs import DemoConfig
from core.runs.recorder import RunRecorder

DATASET = "phantom-demo"
STEPS = ("generating phantoms", "importing dataset", "training detector and landmark model", "training classifier",
         "promoting models", "checking on held-out phantoms")
REPORT_FILE = "demo_report.json"
# what benchmarks/demo_build.py measured, per quality: the app's build offer quotes it rather than typed figures
MEASURED_BUILDS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "demo_build.json"
HOLDOUT_SEED = 7_000_003  # held-out patients never share a seed with the training set


@dataclass(frozen=True)
class DemoProfile:
    quality: str
    patients: int
    images_per_patient: int
    image_size: int          # phantom height in px (real films: 1500-2500)
    detector_epochs: int
    detector_imgsz: int
    landmark_epochs: int     # heatmap model (core.training.landmarks): ~40 steps an epoch in the full profile
    landmark_input: int
    classifier_epochs: int
    classifier_input: int
    batch: int               # YOLO batch: small, for more optimizer steps per image
    holdout: int             # held-out images for step 6
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)  # train/val/test by patient
    classifier_batch: int = 16


# Detector epochs stay at 10 or fewer on purpose: Ultralytics turns mosaic augmentation off for the last 10
# epochs (close_mosaic), and from scratch on these small synthetic sets YOLO learns several times faster without
# it (measured: pose mAP stayed 0 after 600 mosaic steps, and started rising after ~1000 mosaic-free ones).
# More images, not more epochs, buy the optimizer steps.
# full: the landmark model trains beside the detector (step 3), so its epochs are the step's length; at 36 its
# validation error was still falling (1.57 px, Cobb 2.7 deg) as the cosine schedule ended.
PROFILES = {
    "full": DemoProfile("full", patients=300, images_per_patient=3, image_size=512, detector_epochs=7,
                        detector_imgsz=160, landmark_epochs=42, landmark_input=128, classifier_epochs=8,
                        classifier_input=96, batch=4, holdout=60),
    # quick: two films per patient at 320 px rather than one at 384: the detector gets twice the optimizer steps per
    # epoch and every model twice the variety for about the same compute (the 240 x 1 x 384 px profile reached a box
    # on 79-96 % and class accuracy 0.62-0.83 on 24 held-out films in two runs)
    "quick": DemoProfile("quick", patients=240, images_per_patient=2, image_size=320, detector_epochs=8,
                         detector_imgsz=128, landmark_epochs=36, landmark_input=96, classifier_epochs=8,
                         classifier_input=96, batch=4, holdout=60),
    "tiny": DemoProfile("tiny", patients=12, images_per_patient=1, image_size=128, detector_epochs=1,
                        detector_imgsz=64, landmark_epochs=1, landmark_input=64, classifier_epochs=1,
                        classifier_input=64, batch=8, holdout=3, fractions=(0.5, 0.25, 0.25), classifier_batch=8),
}


# ------------------------------------------------------------------------------------ starting and watching a build
_start_lock = threading.Lock()  # two clicks in one server queue one build


def latest_build() -> dict | None:
    """The newest demo run's status (``layout.read_status``: ``interrupted`` when its process is gone) with its
    ``run_id``; None when no demo was ever built here."""
    # by folder name (``<date>-<time>-demo-<quality>-<hex>``): the app asks on every rerun, and reading every run's
    # status for it (layout.list_runs) would double what a rerun reads
    root = settings.runs_dir()
    builds = sorted(root.glob("????????-??????-demo-*"), reverse=True) if root.is_dir() else []
    return layout.read_status(builds[0]) if builds else None


def measured_builds() -> dict[str, dict]:
    """quality -> the last measured build of it (``wall_s``, ``cpu_count``, ``mean_load``, ``class_accuracy``,
    ``cobb_mae_deg``, ``measured_at``, ...); empty where none was measured or the file is unreadable."""
    try:
        measured = json.loads(MEASURED_BUILDS.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(measured, dict):
        return {}
    needed = ("wall_s", "cpu_count", "class_accuracy", "cobb_mae_deg")  # what the offer quotes
    return {quality: entry for quality, entry in measured.items() if isinstance(entry, dict)
            and all(isinstance(entry.get(key), (int, float)) for key in needed)}


def building(status: dict | None) -> bool:
    """A build waits in the queue or runs (``status``: :func:`latest_build`'s)."""
    return bool(status) and status.get("state") in ("queued", "running")


def start_build(quality: str, *, actor=None) -> Path:
    """Queue a demo build in this workspace (it starts when the device is free); its run folder.

    ValueError when one is already waiting or running. It imports data and trains: an admin's action."""
    authorize(actor, "import", "demo")
    with _start_lock:
        if building(latest_build()):
            raise ValueError("a demo build is already running in this workspace")
        return launch.start_run({"task": "demo", "quality": quality}, actor=actor)


# ------------------------------------------------------------------------------------ building
def build(quality: str = "full", seed: int = 0) -> dict:
    """Build the demo in this process (``python -m core demo``), in a new run folder; the held-out check."""
    config = DemoConfig.from_dict({"quality": quality, "seed": seed})
    return fit(config, layout.new_run_dir(quality, "demo"))


def fit(config: Mapping[str, Any] | DemoConfig, run_dir: str | Path, *, resume: bool = False) -> dict:
    """The registry's entry point (a queued build runs ``python -m core train`` on its config).

    A resumed build starts again from step 1: its steps up to training take a minute, and each model is a run of
    its own, so nothing half-trained is promoted."""
    import torch

    cfg = config if isinstance(config, DemoConfig) else DemoConfig.from_dict(config)
    profile = PROFILES[cfg.quality]
    torch.set_num_threads(settings.cpu_threads())
    with RunRecorder(run_dir, "demo", model=cfg.quality) as run:
        run.write_config(cfg.to_dict())
        if resume:
            run.update(message="resumed: building again from step 1")
        report = _build(profile, _Reporter(run), cfg.seed, Path(run_dir))
        run.done(f"done in {report['seconds']:.0f} s: class accuracy {report['class_accuracy']:.2f}, "
                 f"box IoU>=0.5 {_fmt(report['box_iou50_rate'])}, Cobb MAE {_fmt(report['cobb_mae_deg'], ' deg')}",
                 epoch=len(STEPS), step=len(STEPS))
    return report


def evaluate(run_dir: str | Path, split: str = "test") -> dict:
    """A build trains no model of its own: its three models are runs of their own, evaluated as such."""
    report = Path(run_dir) / REPORT_FILE
    runs = json.loads(report.read_text(encoding="utf-8")).get("runs", {}) if report.exists() else {}
    raise layout.JobError("a demo build is not a model: evaluate the runs it trained ("
                          + (", ".join(runs.values()) or "none finished") + f"); its held-out check is {report}")


class _Reporter:
    """Progress lines and the run's status.json, from one place."""

    def __init__(self, run: RunRecorder):
        self.run = run
        self.step, self.stage = 0, ""
        self.lock = threading.Lock()  # the run watcher reports from its own thread
        self.background: Callable[[], str] | None = None  # what a training in another process is at
        # per step: wall seconds, and CPU seconds of this process and its reaped children (the detector, the phantom
        # pool): on a shared machine the CPU time shows what a step costs when the wall clock cannot
        self.timings: dict[str, dict[str, float]] = {}
        self._mark: tuple[float, float] | None = None

    @staticmethod
    def _cpu() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def close_step(self) -> None:
        if self._mark is not None and self.stage:
            wall, cpu = self._mark
            self.timings[self.stage] = {"wall_s": round(time.time() - wall, 1), "cpu_s": round(self._cpu() - cpu, 1)}
        self._mark = (time.time(), self._cpu())

    def begin(self, step: int, message: str = "") -> None:
        self.close_step()
        self.step, self.stage = step, STEPS[step - 1]
        self.say(message or "started")

    def say(self, message: str) -> None:
        if threading.current_thread() is threading.main_thread():
            self.run.check_cancel()  # a cancel asked for while a library swallowed it (see cancel_on_sigterm)
        if self.background is not None:
            message = f"{message}; {self.background()}"
        with self.lock:
            print(f"[{self.step}/{len(STEPS)}] {self.stage}: {message}", flush=True)
            # epoch = finished steps, for the views every run shares
            self.run.update(stage=self.stage, step=self.step, steps=len(STEPS), epoch=self.step - 1,
                            epochs=len(STEPS), message=message)


class _RunWatcher:
    """Reports a run folder's status.json (epoch, ETA, metric) while a training call without a progress
    callback (``core.training.classify.train``) blocks this thread."""

    def __init__(self, run_dir: Path, reporter: _Reporter, every_s: float = 1.0):
        self.run_dir, self.reporter, self.every_s = run_dir, reporter, every_s
        self.stop = threading.Event()
        self.last = None
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=5)

    def _loop(self) -> None:
        while not self.stop.wait(self.every_s):
            try:
                status = json.loads((self.run_dir / layout.STATUS_FILE).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            epoch, epochs = status.get("epoch") or 0, status.get("epochs") or 0
            message = f"epoch {epoch}/{epochs}"
            if status.get("best_metric") is not None:
                message += f", best {float(status['best_metric']):.3f}"
            if status.get("eta_s"):
                message += f", about {int(status['eta_s'])} s left"
            if status.get("message") and "epoch" not in str(status["message"]):
                message += f" ({status['message']})"
            if message != self.last:
                self.last = message
                self.reporter.say(message)


def _fmt(value, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:.2f}{unit}"


def _build(profile: DemoProfile, reporter: _Reporter, seed: int, run_dir: Path) -> dict:
    from core.data import datasets, importers, phantom

    started = time.time()
    demo_dir = settings.home() / "demo"
    phantoms = demo_dir / "phantoms"

    reporter.begin(1, f"{profile.patients * profile.images_per_patient} images of {profile.patients} patients, "
                      f"{profile.image_size} px")
    every = max(1, profile.patients * profile.images_per_patient // 10)

    def phantom_progress(done: int, total: int, case) -> None:
        if done % every == 0 or done == total:
            reporter.say(f"{done}/{total} images")

    phantom.write_phantoms(phantoms, profile.patients, profile.images_per_patient, seed=seed, size=profile.image_size,
                           formats=("csxa",), progress=phantom_progress, overwrite=True,
                           workers=settings.cpu_threads())

    reporter.begin(2, f"CSXA layout -> dataset {DATASET}")
    imported = importers.import_csxa(phantoms / "csxa", dataset=DATASET, annotator="demo")
    counts = datasets.make_splits(DATASET, profile.fractions, seed=seed)
    reporter.say(f"{imported.imported} new, {imported.unchanged} unchanged; splits " + ", ".join(
        f"{name} {sum(v.values())}" for name, v in counts.items()))

    reporter.begin(3, f"detector {profile.detector_epochs} epochs at {profile.detector_imgsz} px, heatmap landmark "
                      f"model {profile.landmark_epochs} epochs at {profile.landmark_input} px on ROI crops")
    with _BackgroundDetector(profile, reporter, seed) as detector:
        landmark_run = _train_landmarks(profile, reporter, seed)
        detect_run = detector.wait()
    classify_run = _train_classifier(4, profile, reporter, seed)

    reporter.begin(5)
    for task, run in (("detect", detect_run), ("landmarks", landmark_run), ("classify", classify_run)):
        dest = promotion.promote(run, task, actor=SHELL)  # the demo process was started by an admin
        _annotate_promoted(dest, {"demo_quality": profile.quality, "dataset": DATASET})
        reporter.say(f"{task}: {run.name}")

    reporter.begin(6, f"{profile.holdout} new phantom patients")
    report = check_holdout(profile, seed=HOLDOUT_SEED + seed, out=demo_dir / "holdout", reporter=reporter)
    reporter.close_step()
    report.update({"quality": profile.quality, "profile": asdict(profile), "seconds": round(time.time() - started, 1),
                   "step_seconds": reporter.timings,
                   "runs": {"detect": detect_run.name, "landmarks": landmark_run.name, "classify": classify_run.name},
                   "build_run": run_dir.name})
    for folder in (run_dir, settings.home()):  # the workspace's copy is the demo its models came from
        layout.atomic_write_text(folder / REPORT_FILE, json.dumps(report, indent=1))
    check = {k: report[k] for k in ("images", "class_accuracy", "box_iou50_rate", "cobb_mae_deg", "cobb_within_5deg",
                                     "mean_landmark_error_px", "ood_flag_rate")}
    _annotate_promoted(settings.promoted_dir() / "classify", {"demo_check": check})
    _annotate_promoted(settings.promoted_dir() / "landmarks", {"demo_check": check})
    _annotate_promoted(settings.promoted_dir() / "detect", {"demo_check": check})
    return report


def _annotate_promoted(dest: Path, extra: dict) -> None:
    path = dest / promotion.PROMOTED_FILE
    record = json.loads(path.read_text(encoding="utf-8"))
    record.update(extra)
    layout.atomic_write_text(path, json.dumps(record, indent=1))


def _detector_config(profile: DemoProfile, seed: int) -> dict:
    from core.training import detect

    return {"task": "detect", "dataset": DATASET, "model": detect.DEFAULT_DETECT_MODEL,
            "epochs": profile.detector_epochs, "imgsz": profile.detector_imgsz, "batch": profile.batch,
            "device": "auto", "seed": seed, "patience": profile.detector_epochs}


def _fit_detector(config: dict, run_dir: str) -> None:
    """The detector process: one run folder. Its status.json says how it ended (SIGTERM: ``cancelled``; an error:
    ``failed`` with the message, the traceback in its train.log), which the demo reads; so nothing is printed."""
    from core.runs.recorder import RunCancelled
    from core.training import detect

    # Ultralytics' progress bars would tear the demo's own progress lines apart; its log lines go to train.log
    sys.stdout = sys.stderr = open(os.devnull, "w", encoding="utf-8")
    try:
        detect.fit(config, Path(run_dir))
    except (RunCancelled, KeyboardInterrupt):
        sys.exit(130)
    except Exception:
        sys.exit(1)


@contextlib.contextmanager
def _cancel_held(signals=(signal.SIGTERM, signal.SIGINT)):
    """Hold a cancel (SIGTERM, SIGINT) that arrives inside the block, and deliver it when the block is done.
    (Masking the signal would not do: the kernel hands it to any of torch's threads that does not mask it.)"""
    arrived: list[int] = []
    previous = {number: signal.signal(number, lambda signum, frame: arrived.append(signum)) for number in signals}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if arrived:
            signal.raise_signal(arrived[0])  # the previous handler runs now (RunRecorder's raises RunCancelled)


class _BackgroundDetector:
    """The detector's training in a process of its own, watched through its status.json."""

    def __init__(self, profile: DemoProfile, reporter: _Reporter, seed: int):
        self.config, self.reporter = _detector_config(profile, seed), reporter
        self.run_dir = layout.new_run_dir(self.config["model"], "detect")
        self.process = None

    def __enter__(self):
        import multiprocessing

        # spawn: this process holds torch's thread pool, which a forked child would inherit broken
        self.process = multiprocessing.get_context("spawn").Process(
            target=_fit_detector, args=(self.config, str(self.run_dir)), name="demo-detector")
        # A cancel (SIGTERM raises in this process) landing inside start() would cut the child's pickled start-up
        # data short, and the child would die printing a traceback: hold it until the child has it all.
        try:
            with _cancel_held():
                self.process.start()
        except BaseException:  # the held cancel, raised before `with` would call __exit__: stop the child now
            self.__exit__()
            raise
        self.reporter.background = self.progress
        return self

    def progress(self) -> str:
        status = layout.read_status_file(self.run_dir)
        if status.get("state") == "done":
            return "detector done"
        metric = status.get("best_metric")
        return (f"detector epoch {status.get('epoch') or 0}/{self.config['epochs']}"
                + (f", mAP50-95 {float(metric):.3f}" if metric is not None else ""))

    def wait(self) -> Path:
        """The finished run folder; a failed or cancelled detector run ends the demo with its reason."""
        while self.process.is_alive():
            self.reporter.say("landmark model done, waiting for the detector")
            self.process.join(2.0)
        status = layout.read_status_file(self.run_dir)
        if status.get("state") != "done":
            raise ValueError(f"the detector's training ended {status.get('state') or 'without a status'}: "
                             f"{status.get('message') or f'exit code {self.process.exitcode}'} "
                             f"(see {self.run_dir / 'train.log'})")
        self.reporter.say(f"detector: {status.get('message') or 'done'}")
        return self.run_dir

    def __exit__(self, *exc):
        self.reporter.background = None
        if self.process is not None and self.process.is_alive():  # the demo was cancelled or failed
            self.process.terminate()  # SIGTERM: the run marks itself cancelled
            self.process.join(60)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()


def _train_landmarks(profile: DemoProfile, reporter: _Reporter, seed: int) -> Path:
    from core.training import landmarks

    epochs, size = profile.landmark_epochs, profile.landmark_input
    config = {"task": "landmarks", "model": landmarks.MODEL_NAME, "dataset": DATASET, "epochs": epochs,
              "input_size": size, "seed": seed, "device": "auto"}
    run_dir = layout.new_run_dir(landmarks.MODEL_NAME, "landmarks")
    started = time.time()

    def epoch_done(epoch: int, epochs: int, row: dict) -> None:
        left = (time.time() - started) / epoch * (epochs - epoch)
        cobb = row.get("val_cobb_mae_deg")
        reporter.say(f"landmarks epoch {epoch}/{epochs}, val error {row['val_mean_error_px']:.1f} px"
                     + (f", Cobb MAE {cobb:.1f} deg" if cobb is not None else "")
                     + (f", about {left:.0f} s left" if epoch < epochs else ""))

    result = landmarks.fit(config, run_dir, progress_callback=epoch_done)
    reporter.say(f"landmarks done: test error {_fmt(result.get('mean_error_px'), ' px')}, "
                 f"Cobb MAE {_fmt(result.get('cobb_mae_deg'), ' deg')}")
    return run_dir


def _train_classifier(step: int, profile: DemoProfile, reporter: _Reporter, seed: int) -> Path:
    from core.training import classify
    from core.runs.configs import ClassifyConfig

    reporter.begin(step, f"S-ResNet-34, {profile.classifier_epochs} epochs at {profile.classifier_input} px")
    cfg = ClassifyConfig.from_dict({
        "model": "s_resnet34", "dataset": DATASET, "input_size": profile.classifier_input,
        "epochs": profile.classifier_epochs, "batch_size": profile.classifier_batch, "lr": 1e-3,
        "patience": profile.classifier_epochs, "aug_hflip": True,  # phantoms face both ways
        "seed": seed, "n_boot": 200 if profile.quality != "tiny" else 0, "device": "auto",
    })
    run_dir = layout.new_run_dir(cfg.model, "classify")
    with _RunWatcher(run_dir, reporter):
        classify.train(cfg, run_dir)
    reporter.say(f"done: {layout.read_status(run_dir).get('message', '')}")
    return run_dir


def check_holdout(profile: DemoProfile, seed: int, out: Path, reporter: _Reporter | None = None,
                  predictor=None) -> dict:
    """The promoted models on new phantom patients (classes in turn): what the demo models can do.

    Box IoU is the detector's box against the ground-truth ROI (a missed box counts as a failure); the Cobb
    error is the landmark model's C2-C7 angle against the truth; accuracy is the network's class.
    """
    import torch
    from PIL import Image
    from torchvision.ops import box_iou

    from core.data.measure import landmark_errors
    from core.data.phantom import generate_case
    from core.inference.pipeline import Predictor

    predictor = predictor or Predictor()
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(profile.holdout):
        truth = settings.CLASSES[index % len(settings.CLASSES)]
        case = generate_case(seed + index, size=profile.image_size, curvature_class=truth,
                             patient_id=f"H{index + 1:04d}")
        name = f"holdout_{index + 1:03d}_{truth}.png"
        Image.fromarray(case.image).save(out / name)  # kept: sample images to try the Predict page with
        result = predictor.predict(out / name, name=name, cam_method=None)
        iou = (float(box_iou(torch.tensor([result.roi_box]), torch.tensor([case.roi_box]))[0, 0])
               if result.box_source == "detector" else 0.0)
        # the angle the user sees (pipeline, inferred facing); the point errors as measure.landmark_errors has them
        cobb_error = None if result.measurements is None else abs(result.measurements.cobb_c2c7 - case.cobb_c2c7)
        if cobb_error is not None and not np.isfinite(cobb_error):  # C7 not found: measured to C6 only
            cobb_error = None
        points = None if result.landmarks is None else landmark_errors([(result.landmarks, case.landmarks)])
        rows.append({"file": name, "truth": truth, "predicted": result.curvature_class, "box_iou": round(iou, 4),
                     "box_source": result.box_source, "cobb_true": round(case.cobb_c2c7, 2),
                     "ood_score": result.ood_score, "out_of_distribution": result.out_of_distribution,
                     "cobb_error_deg": None if cobb_error is None else round(cobb_error, 2),
                     "landmark_error_px": None if points is None else round(points["mean_error_px"], 2),
                     "landmark_error_pct_c2c7": None if points is None else round(points["mean_error_pct_c2c7"], 3)})
        if reporter is not None:
            reporter.say(f"{index + 1}/{profile.holdout} images")
    errors = [r["cobb_error_deg"] for r in rows if r["cobb_error_deg"] is not None]
    points = [r for r in rows if r["landmark_error_px"] is not None]
    return {
        "images": len(rows),
        "class_accuracy": float(np.mean([r["truth"] == r["predicted"] for r in rows])) if rows else 0.0,
        "box_iou50_rate": float(np.mean([r["box_iou"] >= 0.5 for r in rows])) if rows else None,
        "mean_box_iou": float(np.mean([r["box_iou"] for r in rows])) if rows else None,
        "cobb_mae_deg": float(np.mean(errors)) if errors else None,
        "cobb_measured": len(errors),
        "cobb_within_5deg": float(np.mean(np.asarray(errors) <= 5.0)) if errors else None,
        # held-out phantoms are in distribution: the share flagged is the warning's false-alarm rate
        "ood_flag_rate": float(np.mean([r["out_of_distribution"] for r in rows])) if rows else None,
        "mean_landmark_error_px": float(np.mean([r["landmark_error_px"] for r in points])) if points else None,
        "mean_landmark_error_pct_c2c7": (float(np.mean([r["landmark_error_pct_c2c7"] for r in points]))
                                         if points else None),
        "rows": rows,
    }

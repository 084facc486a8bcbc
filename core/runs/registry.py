"""The task registry: each task declared once, and everything else (CLI, queue, promotion, pages, demo) reads it.

A task is what a run trains: ``classify`` (the curvature class), ``detect`` (the C2-C7 box), ``landmarks`` (the 23
points), ``compare`` (the study's models side by side) and ``demo`` (the demo workspace, built in six steps). Its
entry says which config class checks its config, which module trains it (``fit(config, run_dir, resume=...)``,
``evaluate(run_dir, split)``, ``load(path)``, imported only when the task runs: a classifier run never imports
Ultralytics), the words people see, and what can be done with its runs (promote, fine-tune, train on several GPUs,
continue). Torch-free, so ``runs start`` checks a config before any process starts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from core.runs.configs import (LANDMARK_UNET, ClassifyConfig, CompareConfig, ConfigError, DemoConfig, HeatmapConfig,
                               StrictConfig, YoloConfig, read_config_source)


@dataclass(frozen=True)
class Trainer:
    """One way to train a task: its config class and the module that implements fit / evaluate / load."""

    config: type[StrictConfig]
    module: str
    continues_from: str = "checkpoint"  # "checkpoint": init_from the run; "yolo": Ultralytics' own last.pt


@dataclass(frozen=True)
class TaskSpec:
    name: str
    title: str               # the word people see: sidebar, Train page, Runs
    description: str
    trainers: tuple[Trainer, ...]
    # which trainer a config uses (index into trainers); landmarks choose by model
    pick: Callable[[Mapping[str, Any]], int] = lambda data: 0
    promotable: bool = False     # Predict uses a promoted run of it
    fine_tunable: bool = False   # init_from: promoted (core.training.finetune)
    distributed: bool = False    # torchrun DDP over several GPUs
    continuable: bool = True     # "continue for N epochs" makes a new run from this one's weights
    promoted_as: str | None = None  # the promotable task its best.pt serves (a comparison's: its best classifier)
    unit: str = "epochs"         # what its status counts (epoch / epochs)
    offered: bool = True         # on the Train page's task list (the demo has its own panel)
    onnx: bool = False           # its promoted model exports to ONNX (core.inference.onnx_export; YOLO has its own)

    def trainer(self, data: Mapping[str, Any]) -> Trainer:
        return self.trainers[self.pick(data)]

    @property
    def model_task(self) -> str | None:
        """The task whose promoted model this task's runs can become (None: they have none)."""
        return self.name if self.promotable else self.promoted_as


def _landmark_trainer(data: Mapping[str, Any]) -> int:
    return 0 if str(data.get("model") or LANDMARK_UNET).strip().lower() == LANDMARK_UNET else 1


TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (
    TaskSpec("classify", "Classifier", "curvature class: S-ResNet-34 and the study's models",
             (Trainer(ClassifyConfig, "core.training.classify"),), promotable=True, fine_tunable=True,
             distributed=True, onnx=True),
    TaskSpec("detect", "Detector", "C2-C7 box: YOLO detector",
             (Trainer(YoloConfig, "core.training.detect", "yolo"),), promotable=True),
    TaskSpec("landmarks", "Landmark model", "the 23 CSXA landmarks: heatmap U-Net (or YOLO-pose)",
             (Trainer(HeatmapConfig, "core.training.landmarks"), Trainer(YoloConfig, "core.training.detect", "yolo")),
             pick=_landmark_trainer, promotable=True, fine_tunable=True, onnx=True),
    TaskSpec("compare", "Comparison", "the study's models trained and scored on the same splits",
             (Trainer(CompareConfig, "core.training.compare"),), continuable=False, promoted_as="classify",
             unit="models"),
    TaskSpec("demo", "Demo build", "phantom films and the three demo models, trained, promoted and checked",
             (Trainer(DemoConfig, "core.demo"),), continuable=False, unit="steps", offered=False),
)}
# The tasks Predict uses, in its order: classifier, detector, landmark model.
PROMOTABLE = tuple(name for name, spec in TASKS.items() if spec.promotable)
FINE_TUNABLE = tuple(name for name, spec in TASKS.items() if spec.fine_tunable)
ONNX_EXPORTABLE = tuple(name for name, spec in TASKS.items() if spec.onnx)


def spec(task: str) -> TaskSpec:
    if task not in TASKS:
        raise ConfigError(f"task '{task}' is not one of: {', '.join(TASKS)}")
    return TASKS[task]


def task_of(data: Mapping[str, Any]) -> TaskSpec:
    return spec(str(data.get("task", "classify")))


def config_class(data: Mapping[str, Any]) -> type[StrictConfig]:
    """The config class of a config's task (and, for landmarks, its model)."""
    return task_of(data).trainer(data).config


def parse_config(data: Mapping[str, Any]) -> StrictConfig:
    """A validated config object of the right class for ``data``'s task."""
    data = dict(data)
    if data.get("task", "classify") == "landmarks":
        data.setdefault("model", LANDMARK_UNET)
    return config_class(data).from_dict(data)


def resolve_config(source: str | Path | Mapping[str, Any] | None = None, overrides: Sequence[str] = ()) -> dict:
    """The validated config of any task as a plain dict (what a run folder's config.yaml holds)."""
    return parse_config(read_config_source(source, overrides)).to_dict()


def load_config(source: str | Path | Mapping[str, Any] | None = None, overrides: Sequence[str] = ()) -> StrictConfig:
    """The validated config object (its task's class) of a file or dict plus ``key=value`` overrides."""
    return parse_config(read_config_source(source, overrides))

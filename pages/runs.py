"""Runs: every run of every task, one run's evaluation, several side by side, and the models Predict uses.

Thin: the table, details and comparison are ``core.runs.reports`` reads (``python -m core runs list|show|compare``);
promote, roll back, delete, analyse and ONNX export are one core call each (``runs promote|rollback|delete``,
``python -m core analyse``, ``python -m core onnx``). Promoting a model that scores worse than the promoted one,
and rolling back, each ask for a confirmation that says what will happen; the model card and the ONNX file are
downloads. Metric names are ``reports.metric_name``'s, run states ``reports.run_state``'s (as on the Train page).
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from core import settings
from core.runs import launch, layout, promotion, registry, reports
from ui import charts
from ui.frame import engine_errors, frame
from ui.run_views import curves, format_seconds, live_view

state = frame("Runs")
runs = state["runs"]
if not runs:
    st.info("No run yet: start one on the **Train** page (or `python -m core runs start --config configs/classify.yaml`).")
    st.stop()
promoted = {task: info["run_id"] for task, info in state["models"].items() if info}

# ------------------------------------------------------------------ the table, with filters
rows = pd.DataFrame(reports.run_rows(runs, promoted))
rows["task"] = rows["task"].map(lambda name: registry.TASKS[name].title if name in registry.TASKS else name)
filters = st.columns([2, 2, 3])
tasks = filters[0].multiselect("Task", sorted(rows["task"].unique()), key="runs_tasks")
states = filters[1].multiselect("State", sorted(rows["state"].unique()), key="runs_states")
search = filters[2].text_input("Model, dataset or run contains", key="runs_search")
shown = rows
if tasks:
    shown = shown[shown["task"].isin(tasks)]
if states:
    shown = shown[shown["state"].isin(states)]
if search:
    text = search.lower()
    shown = shown[shown[["run", "model", "dataset"]].apply(lambda r: text in " ".join(map(str, r)).lower(), axis=1)]
st.dataframe(shown.drop(columns=["message"]), hide_index=True, width="stretch",
             column_config={"duration s": st.column_config.NumberColumn("duration s", format="%d"),
                            "best val": st.column_config.NumberColumn("best val", format="%.3f"),
                            "labels": st.column_config.TextColumn("labels", help="fingerprint of the labels trained on")})
st.caption("test score: the test split's headline metric, point [95 % patient-bootstrap interval] where the task "
           "has one · labels: fingerprint of the labels a run started on (same fingerprint = same data)")

selected = st.multiselect("Open one run, or pick several to compare", list(shown["run"]), key="runs_selected")


# ------------------------------------------------------------------ one run
def classifier_detail(run_dir) -> None:
    detail = reports.classification_detail(run_dir)
    if detail is None:
        st.caption("No test report with predictions yet (it is written when the run ends, if its test split has images).")
        return
    st.caption(f"Test split: {detail['n_images']} images of {detail['n_patients']} patients")
    scores = {reports.metric_name(key): value for key, value in detail["metrics"].items()}
    st.dataframe(pd.DataFrame([scores]).T.rename(columns={0: "point [95 % interval]"}), width="stretch")
    columns = st.columns(3)
    columns[0].plotly_chart(charts.confusion(detail["confusion"], detail["classes"]), key=f"cm_{run_dir.name}")
    if detail["roc"]:
        columns[1].plotly_chart(charts.roc(detail["roc"]), key=f"roc_{run_dir.name}")
    columns[2].plotly_chart(charts.reliability(detail["reliability"]), key=f"rel_{run_dir.name}")
    st.dataframe(pd.DataFrame(detail["per_class"]).rename(columns={"f1": reports.metric_name("f1"),
                                                                   "roc_auc": reports.metric_name("roc_auc")}),
                 hide_index=True, width="stretch")
    for note in detail["notes"]:
        st.caption(f"Note: {note}")


def analysis_detail(run_dir, task: str) -> None:
    report = reports.test_report(run_dir)
    if report:
        scalars = {reports.metric_name(k): v for k, v in report.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        st.dataframe(pd.DataFrame([scalars]), hide_index=True, width="stretch")
    saved = reports.read_json(run_dir / "test_analysis.json")
    if st.button("Analyse the test split" if not saved else "Analyse again", key=f"analyse_{run_dir.name}",
                 help="Per-landmark errors and Bland–Altman of the C2–C7 angle" if task == "landmarks"
                 else "IoU of each test image's best box"):
        from core.inference import run_analysis

        with engine_errors("Analysing"), st.spinner("Running the model on the test split…"):
            saved = run_analysis.analyse(run_dir, "test", actor=state["actor"])
    if not saved:
        return
    if saved.get("task") == "landmarks":
        st.caption(f"{saved['images']} test images ({saved['missed']} without an answer)")
        columns = st.columns(2)
        columns[0].plotly_chart(charts.per_landmark(saved["per_landmark"]), key=f"pl_{run_dir.name}")
        if saved.get("bland_altman"):
            ba = saved["bland_altman"]
            columns[1].plotly_chart(charts.bland_altman(ba), key=f"ba_{run_dir.name}")
            st.caption(f"Bias {ba['bias_deg']:+.2f}°, 95 % limits of agreement {ba['lower_deg']:+.2f}° to "
                       f"{ba['upper_deg']:+.2f}° over {len(ba['difference_deg'])} images")
    else:
        st.caption(f"{saved['images']} test images · mean IoU {saved['mean_iou'] or 0:.3f} · "
                   f"found at IoU ≥ 0.5: {saved['found_at_iou50'] or 0:.0%}")
        st.plotly_chart(charts.iou_histogram(saved["iou"]), key=f"iou_{run_dir.name}")


def actions(run_dir, info) -> None:
    st.markdown("##### Actions")
    left, middle = st.columns(2)
    target = registry.spec(info.task).model_task
    with left.container(border=True):
        check = None
        with engine_errors("Comparing with the promoted model"):
            check = promotion.check_against_promoted(run_dir)
        confirm = promotion.worse_confirmation(check) if check else None
        if check and check["warning"]:
            st.warning(f"Worse than the promoted model: {check['warning']}")
        elif check and check["promoted"] and check["worse"] is False:
            st.caption(f"Better than or equal to the promoted {check['promoted_run']} "
                       f"({check['promoted']['name']} {reports.format_score(check['promoted'])}).")
        confirmed = confirm is None or st.checkbox(confirm, key=f"promote_anyway_{run_dir.name}")
        if target and st.button(f"Promote to Predict ({registry.TASKS[target].title.lower()})",
                                key=f"promote_{run_dir.name}", icon=":material/upgrade:",
                                disabled=info.state != "done" or promoted.get(target) == info.run_id or not confirmed):
            if not confirmed:  # a click that reached the server anyway: nothing happens without the tick
                st.error("Not promoted: tick the box above first, it says what promoting this run replaces.")
            else:
                with engine_errors("Promoting"):
                    promotion.promote(run_dir, actor=state["actor"])
                    st.rerun()
    with middle.container(border=True):
        sure = st.checkbox("Yes, delete this run's folder", key=f"sure_{run_dir.name}")
        if st.button("Delete run", key=f"delete_{run_dir.name}", icon=":material/delete:", disabled=not sure):
            with engine_errors("Deleting"):
                launch.delete_run(run_dir, actor=state["actor"])
                st.session_state.pop("runs_selected", None)
                st.rerun()


def one_run(run_id: str) -> None:
    info = next(r for r in runs if r.run_id == run_id)
    run_dir = layout.run_path(run_id)
    data = reports.data_record(run_dir)
    row = rows[rows["run"] == run_id].iloc[0]
    st.markdown(f"### {run_id}")
    st.caption(f"{row['task']} · {info.model} · dataset {row['dataset'] or '–'} · labels "
               f"{data.get('fingerprint', 'not recorded')} · {row['state']} · "
               f"{format_seconds(row['duration s']) if row['duration s'] == row['duration s'] else '–'}"
               f" · {row['device'] or 'device not recorded'}")
    if info.state in ("queued", "running"):
        live_view(run_id, row["state"])
        return
    figures = curves(layout.read_metrics(run_dir), info.task)
    columns = st.columns(max(1, min(3, len(figures))))
    for index, figure in enumerate(figures):
        columns[index % len(columns)].plotly_chart(figure, key=f"detail_curve_{index}")
    if info.task == "classify":
        classifier_detail(run_dir)
    elif info.task in ("landmarks", "detect"):
        analysis_detail(run_dir, info.task)
    elif info.task == "compare":
        table = reports.test_report(run_dir).get("models") or {}
        if table:
            st.dataframe(pd.DataFrame({model: {reports.metric_name(k): reports.format_score(v)
                                               for k, v in scores.items()}
                                       for model, scores in table.items()}).T, width="stretch")
    actions(run_dir, info)


# ------------------------------------------------------------------ several runs
def several(run_ids: list[str]) -> None:
    run_dirs = [layout.run_path(r) for r in run_ids]
    result = reports.comparison(run_dirs)
    st.markdown(f"### {len(run_ids)} runs side by side")
    curves = result["curves"]
    columns = st.columns(3)
    for index, column in enumerate(("val_loss", "val_macro_f1", "val_acc", "train_loss", "val_mean_error_px", "mAP50")):
        figure = charts.overlaid(curves, column, reports.metric_name(column))
        if figure is not None:
            columns[index % 3].plotly_chart(figure, key=f"overlay_{column}")
    st.markdown("##### Config keys that differ")
    if result["differing"]:
        st.dataframe(pd.DataFrame(result["differing"]).T.astype(str), width="stretch")
    else:
        st.caption("The configs are the same (apart from where they ran).")
    st.markdown("##### Test metrics in the study's layout")
    table = pd.DataFrame(result["table"])
    st.dataframe(table, hide_index=True, width="stretch")
    st.plotly_chart(charts.study_bars(result["table"], result["paper"], reports.STUDY_METRICS), key="study_bars")
    st.caption("Point [95 % patient-bootstrap interval] on each run's own test split; the published row is "
               "Liang et al. 2025 (240 real patients, no intervals given) — a reference line, not the same data.")


if len(selected) == 1:
    one_run(selected[0])
elif len(selected) > 1:
    several(selected)

# ------------------------------------------------------------------ promoted models


def demoted(markdown: str) -> str:
    """A card's headings three levels down, so it sits inside the page's own headings."""
    return "\n".join("###" + line if line.startswith("#") else line for line in markdown.splitlines())


def onnx_panel(task: str, info: dict) -> None:
    """Export the promoted model to ONNX (checked against torch), then offer the file as a download."""
    folder = settings.promoted_dir() / task
    # onnx_export.ONNX_FILE and the check record beside it (that module imports torch: only imported to export)
    exported, record = folder / "model.onnx", reports.read_json(folder / "model.json")
    difference = record.get("max_abs_diff")
    checked = isinstance(difference, (int, float)) and difference <= 1e-3
    if exported.is_file() and record.get("run_id") == info.get("run_id") and checked:
        # a callable: Streamlit reads the file when the button is clicked, not on every rerun of the page
        st.download_button("Download ONNX", exported.read_bytes, key=f"onnx_download_{task}", on_click="ignore",
                           file_name=f"cervicurve-{task}-{info.get('run_id')}.onnx", mime="application/octet-stream",
                           icon=":material/download:",
                           help="The promoted model as ONNX (opset {opset}), for onnxruntime and other tools".format(
                               opset=record.get("opset", "?")))
        st.caption(f"Checked against torch: max abs difference {difference:.2e} on a "
                   f"{record.get('input_shape')} input · {exported.stat().st_size / 2 ** 20:.1f} MiB")
        return
    if st.button("Export to ONNX", key=f"onnx_{task}", icon=":material/output:",
                 help="Convert the promoted model to ONNX and check onnxruntime's output against torch's"):
        from core.inference import onnx_export

        with engine_errors("Exporting to ONNX"), st.spinner("Exporting and checking against torch…"):
            onnx_export.export_promoted(task, actor=state["actor"])
            st.rerun()


st.subheader("Models Predict uses")
for task in registry.PROMOTABLE:
    title = registry.TASKS[task].title
    info = state["models"][task]
    with st.container(border=True):
        if info is None:
            st.caption(f"**{title}:** none promoted")
            continue
        card = promotion.promoted_card(task) or {}
        promoted_at = promotion.when(info.get("promoted_at"))
        st.markdown(f"**{title}:** {info.get('model')} from run `{info.get('run_id')}`"
                    + (f", promoted {promoted_at}" if promoted_at else "")
                    + (f" (rolled back from {info['rolled_back_from']})" if info.get("rolled_back_from") else ""))
        if card:
            st.caption(promotion.card_summary(card))
            text = promotion.card_markdown(card)
            with st.expander("Model card"):
                st.markdown(demoted(text))
            st.download_button("Download the model card", text.encode("utf-8"), key=f"card_download_{task}",
                               on_click="ignore",
                               file_name=f"MODEL_CARD-{task}-{info.get('run_id')}.md", mime="text/markdown",
                               icon=":material/download:")
        left, right = st.columns(2)
        with left:
            back = promotion.rollback_confirmation(task)
            sure = back is not None and st.checkbox(back, key=f"rollback_sure_{task}")
            if st.button("Roll back", key=f"rollback_{task}", disabled=not sure, icon=":material/undo:",
                         help="Tick the box above first" if back else "No earlier promoted model"):
                if not sure:
                    st.error("Not rolled back: tick the box above first, it says which model comes back.")
                else:
                    with engine_errors("Rolling back"):
                        promotion.rollback(task, actor=state["actor"])
                        st.rerun()
        if task in registry.ONNX_EXPORTABLE:
            with right:
                onnx_panel(task, info)

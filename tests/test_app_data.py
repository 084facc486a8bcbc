"""Data page through AppTest: importing uploaded zips, refusing unsafe ones, splits and export."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from streamlit.testing.v1 import AppTest

from core.data.store import AnnotationStore

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def png(seed: int, size: int = 64) -> bytes:
    pixels = (np.random.default_rng(seed).random((size, size)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def class_tree(per_class: int) -> dict[str, bytes]:
    folders = ("normal", "straight", "kyphotic")  # synonyms of the three classes
    return {f"spines/{folder}/P{c}{i:02d}.png": png(10 * c + i)
            for c, folder in enumerate(folders) for i in range(per_class)}


def data_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page("pages/data.py").run()
    assert not at.exception
    return at


def import_zip(at: AppTest, name: str, data: bytes) -> AppTest:
    at.selectbox(key="import_layout").set_value("folder").run()
    at.file_uploader(key="zip_upload_folder").upload(name, data, "application/zip").run()
    at.button(key="import_button").click().run()
    assert not at.exception
    return at


def test_zip_of_class_folders_is_imported_and_counted(workspace):
    members = class_tree(per_class=2) | {"spines/normal/broken.png": b"not a png at all"}
    at = import_zip(data_page(), "spines.zip", zip_of(members))

    assert [s.value for s in at.success] == [
        "Dataset **spines**: 6 imported, 0 updated, 0 already present, 1 skipped."]
    skipped = at.dataframe[0].value
    assert skipped["file"].tolist() == ["spines/normal/broken.png"]
    assert "not a supported image" in skipped["reason"][0]
    # Overview: counts from the real store, and the sidebar's workspace line.
    assert [m.value for m in at.metric][:2] == ["6", "6"]
    assert any(c.value.startswith("6 images · 1 datasets") for c in at.sidebar.caption)
    with AnnotationStore() as store:
        assert store.summary("spines")["classes"] == {"normal": 2, "straightened": 2, "reversed": 2}
    assert not list((workspace / "uploads").iterdir()), "the scratch folder of the upload is removed"


def test_zip_with_parent_members_is_refused_and_nothing_imported(workspace, tmp_path):
    members = class_tree(per_class=1) | {"../escaped.png": png(99)}
    at = import_zip(data_page(), "evil.zip", zip_of(members))

    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "outside" in errors[0] and "escaped.png" in errors[0]
    assert not at.success
    with AnnotationStore() as store:
        assert store.datasets() == []
    assert not list(tmp_path.rglob("escaped.png"))
    assert not [p for p in (workspace / "images").rglob("*") if p.is_file()], "no image reached the workspace"


def test_make_splits_groups_patients_and_export_gives_a_zip(workspace):
    at = import_zip(data_page(), "spines.zip", zip_of(class_tree(per_class=8)))
    at.button(key="make_splits").click().run()
    assert not at.exception and not [e.value for e in at.error]
    with AnnotationStore() as store:
        splits = store.summary("spines")["splits"]
    assert splits["unsplit"] == 0 and splits["train"] > splits["val"] > 0 and splits["test"] > 0

    at.selectbox(key="export_kind").set_value("csv")
    at.button(key="export_button").click().run()
    assert not at.exception and not at.error
    archives = list((workspace / "exports").glob("spines-csv-*.zip"))
    assert len(archives) == 1
    with zipfile.ZipFile(archives[0]) as archive:
        names = archive.namelist()
    assert "manifest.csv" in names and sum(n.endswith(".png") for n in names) == 24
    assert at.get("download_button"), "a download button offers the zip"


def test_unrelated_zip_for_a_yolo_import_says_what_is_missing(workspace):
    at = data_page()
    at.selectbox(key="import_layout").set_value("yolo").run()
    at.file_uploader(key="zip_upload_yolo").upload("x.zip", zip_of(class_tree(1)), "application/zip").run()
    at.button(key="import_button").click().run()
    assert not at.exception
    assert ["no data.yaml" in e.value for e in at.error] == [True]


def test_generated_phantoms_arrive_with_class_box_and_landmarks(workspace):
    at = data_page()
    at.selectbox(key="import_layout").set_value("phantom").run()
    at.number_input(key="phantom_patients").set_value(3)
    at.number_input(key="phantom_size").set_value(128)
    at.button(key="import_button").click().run()
    assert not at.exception and not at.error
    assert [s.value for s in at.success] == [
        "Dataset **phantoms**: 3 imported, 0 updated, 0 already present, 0 skipped."]
    with AnnotationStore() as store:
        summary = store.summary("phantoms")
    assert summary["images"] == summary["patients"] == summary["boxes"] == summary["landmarks"] == 3
    assert summary["unlabeled"] == 0
    assert len(at.get("image")) == 3  # thumbnails in the overview


def test_dicom_files_are_imported_de_identified(workspace):
    from pydicom.data import get_testdata_file

    at = data_page()
    at.selectbox(key="import_layout").set_value("dicom").run()
    ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    at.file_uploader(key="dicom_upload").set_value([("ct.dcm", ct, "application/dicom"),
                                                     ("notes.dcm", b"not dicom", "application/dicom")]).run()
    at.button(key="import_button").click().run()
    assert not at.exception
    assert [s.value for s in at.success] == ["Dataset **ct**: 1 imported, 0 updated, 0 already present, 1 skipped."]
    assert at.dataframe[0].value["file"].tolist() == ["notes.dcm"]
    with AnnotationStore() as store:
        (image,) = store.images("ct")
    assert image.patient_id != "1CT1" and "CompressedSamples" not in image.patient_id  # a pseudonym
    assert (workspace / image.path).read_bytes() != ct  # the workspace keeps the de-identified copy only


def test_bad_input_corpus_gets_a_message_for_each_file_and_nothing_is_stored(workspace):
    from tests.helpers.bad_inputs import ARCHIVES, IMAGES, workspace_is_empty

    from PIL import Image as PILImage

    members = {f"bad/normal/{name}": data for name, (data, _) in IMAGES.items() if data is not None}
    blank = io.BytesIO()
    PILImage.fromarray(np.zeros((64, 64), np.uint16)).save(blank, format="TIFF")
    members["bad/normal/blank16.tif"] = blank.getvalue()
    at = import_zip(data_page(), "bad.zip", zip_of(members))

    assert [e.value for e in at.error] == ["Dataset **bad**: 0 imported, 0 updated, 0 already present, 8 skipped."]
    reasons = dict(zip(at.dataframe[0].value["file"], at.dataframe[0].value["reason"]))
    for name, (_, message) in IMAGES.items():
        assert message in reasons[f"bad/normal/{name}"], name
    for name, (data, message) in ARCHIVES.items():
        at.file_uploader(key="zip_upload_folder").upload(name, data, "application/zip").run()
        at.button(key="import_button").click().run()
        assert not at.exception
        assert [message in e.value for e in at.error] == [True], name
    assert workspace_is_empty(workspace)


def test_dicom_uploads_sharing_a_name_are_both_imported(workspace):
    from pydicom.data import get_testdata_file

    at = data_page()
    at.selectbox(key="import_layout").set_value("dicom").run()
    files = [("IM0001.dcm", Path(get_testdata_file(name)).read_bytes(), "application/dicom")
             for name in ("CT_small.dcm", "MR_small.dcm")]
    at.file_uploader(key="dicom_upload").set_value(files).run()
    at.text_input(key="dataset_name_dicom").set_value("films").run()
    at.button(key="import_button").click().run()
    assert not at.exception
    assert [s.value for s in at.success] == ["Dataset **films**: 2 imported, 0 updated, 0 already present, 0 skipped."]
    with AnnotationStore() as store:
        assert len(store.images("films")) == 2


def test_manifest_with_a_patient_in_two_splits_is_refused_on_the_page(workspace):
    manifest = "path,label,patient_id,split\na.png,normal,P1,train\nb.png,normal,P1,test\n"
    at = data_page()
    at.selectbox(key="import_layout").set_value("csv").run()
    upload = zip_of({"set/manifest.csv": manifest.encode(), "set/a.png": png(1), "set/b.png": png(2)})
    at.file_uploader(key="zip_upload_csv").upload("set.zip", upload, "application/zip").run()
    at.button(key="import_button").click().run()
    assert not at.exception
    (error,) = [e.value for e in at.error]
    assert "patient 'P1' is in test and train" in error and "manifest.csv line 2" in error
    with AnnotationStore() as store:
        assert store.datasets() == []


def test_frozen_test_split_is_kept_by_the_split_button(workspace):
    at = import_zip(data_page(), "spines.zip", zip_of(class_tree(per_class=6)))
    at.checkbox(key="freeze_test").check().run()
    at.button(key="make_splits").click().run()
    assert not at.exception and not at.error
    with AnnotationStore() as store:
        test = {i.image_id for i in store.images("spines") if i.split == "test"}
        assert test and store.test_frozen_at("spines") is not None
    at.number_input(key="split_seed").set_value(5).run()
    at.button(key="make_splits").click().run()
    assert not at.exception and not at.error
    assert any("frozen since" in c.value for c in at.caption)
    with AnnotationStore() as store:
        assert {i.image_id for i in store.images("spines") if i.split == "test"} == test

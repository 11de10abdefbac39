"""Multi-class segmentation (issue 22): label maps in, label maps out.

Replicas in each native layout (3D-IRCADb with two structures, MSD NIfTI with labels 1 and 2, a folder of
0/1/2 masks) train a tiny U-Net for an epoch or two at 32 px, are evaluated and predicted end to end, and the
written label maps' values and geometry are checked. Class identity is checked with a stub network whose
logits follow the image's intensity bands: a run whose class order differs from its mask values must write
each class's value where that class is, and score each class against its own truth.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from medseg.adapters import load_dataset
from medseg.adapters.base import class_specs
from medseg.data.sampling import class_presence, sample_balanced
from medseg.errors import MedsegError
from medseg.planning.plan import Plan

from conftest import run_cli
from replica_ircadb import write_ircadb_replica
from replica_nifti import DIRECTION, ORIGIN, SPACING, write_msd_replica

DCIODVFY = shutil.which("dciodvfy")
TINY = ["--set", 'model_args={"features": [8, 16, 32], "res_units": 1}', "--image-size", "32", "--batch-size", "2"]
BRIGHT, MID, DARK = 230, 128, 25  # folder replica: class value 1 bright (left disc), value 2 mid grey (right disc)


def write_folder_labels(root: Path, n: int = 8, size: int = 32) -> Path:
    """images/ + masks/ PNGs, masks 0/1/2: value 1 a disc on the left, value 2 a disc on the right."""
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        one = np.hypot(yy - size / 2, xx - size * 0.28) < size * (0.16 + 0.01 * (i % 3))
        two = np.hypot(yy - size / 2 + i % 2, xx - size * 0.72) < size * 0.14
        mask = np.where(one, 1, np.where(two, 2, 0)).astype(np.uint8)
        img = np.choose(mask, [DARK, BRIGHT, MID]).astype(np.uint8)
        for sub, arr in (("images", img), ("masks", mask)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / sub / f"img_{i}.png")
    return root


class BandStub(torch.nn.Module):
    """Logits from the input's intensity: class k (1-based) wins where the image lies in bands[k - 1].
    Takes [0, 1] images (includes_normalization: the predictor does not normalise for it)."""

    includes_normalization = True

    def __init__(self, bands: list[tuple[float, float]]):
        super().__init__()
        self.bands = bands

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x[:, :1]
        return torch.cat([torch.zeros_like(v)] + [10.0 * ((v > lo) & (v <= hi)).float() for lo, hi in self.bands], 1)


def stub_checkpoint(monkeypatch, bands):
    """Every checkpoint loaded from now on is the run's plan with a BandStub in place of its network."""
    from medseg.inference import checkpoint, predictor
    real = checkpoint.load_checkpoint

    def load(folder):
        _, plan = real(folder)
        return BandStub(bands), plan
    monkeypatch.setattr(predictor, "load_checkpoint", load)


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory) -> tuple[Path, Path]:
    root = write_folder_labels(tmp_path_factory.mktemp("folder") / "data")
    run = root.parent / "run"
    assert run_cli("train", str(root), "--out", str(run), "--epochs", "2", *TINY, "--set", "intensity_norm=none") == 0
    return run, root


def test_folder_label_maps_train_evaluate_predict(folder_run, tmp_path):
    run, root = folder_run
    plan = json.loads((run / "plan.json").read_text())
    assert [(c["name"], c["value"]) for c in plan["classes"]] == [("1", 1), ("2", 2)] and plan["loss"] == "ce+dice"
    assert run_cli("evaluate", str(run)) == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert list(metrics["per_class"]) == ["1", "2"] and np.isfinite(metrics["mean"]["dice"])
    assert {r["class"] for r in read_csv(run / "eval" / "cases.csv")} == {"1", "2"}
    html = (run / "eval" / "report.html").read_text()
    assert "Per class" in html and 'class="swatch"' in html and "argmax" in html
    wide = tmp_path / "wide.png"  # another size than the training images: the label map comes back at its own
    Image.open(root / "images" / "img_0.png").resize((40, 36), Image.NEAREST).save(wide)
    assert run_cli("predict", str(run), str(wide), str(root / "images" / "img_1.png"), "--out", str(tmp_path / "out"),
                   "--overlay", "--prob") == 0
    out = np.asarray(Image.open(tmp_path / "out" / "wide.png"))
    assert out.shape == (36, 40) and out.dtype == np.uint8 and set(np.unique(out)) <= {0, 1, 2}
    assert (tmp_path / "out" / "img_1_overlay.png").is_file() and (tmp_path / "out" / "img_1_prob.png").is_file()


def test_each_class_keeps_its_value_and_its_truth(tmp_path, monkeypatch):
    """Classes listed against their values' order (class 1 'b' = mask value 2, class 2 'a' = value 1): the
    written PNG holds each class's value where that class lies, and each class is scored against its own
    truth. Swapping two classes anywhere (values, argmax, the per-class views) fails this test."""
    root = write_folder_labels(tmp_path / "data")
    run = tmp_path / "run"
    assert run_cli("train", str(root), "--out", str(run), "--epochs", "1", "--target", "b=2,a=1", *TINY,
                   "--set", "intensity_norm=none") == 0
    plan = json.loads((run / "plan.json").read_text())
    assert [(c["name"], c["value"]) for c in plan["classes"]] == [("b", 2), ("a", 1)]
    stub_checkpoint(monkeypatch, [(0.3, 0.7), (0.7, 1.0)])  # class 1 (b) mid grey, class 2 (a) bright
    assert run_cli("predict", str(run), str(root / "images" / "img_3.png"), "--out", str(tmp_path / "out")) == 0
    truth = np.asarray(Image.open(root / "masks" / "img_3.png"))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "img_3.png")), truth)
    assert run_cli("evaluate", str(run), "--split", "all") == 0
    per_class = json.loads((run / "eval" / "metrics.json").read_text())["per_class"]
    assert per_class["a"]["dice"]["mean"] == pytest.approx(1.0) and per_class["b"]["dice"]["mean"] == pytest.approx(1.0)
    import medseg
    r = medseg.load(run).predict(root / "images" / "img_3.png")
    np.testing.assert_array_equal(r.mask, truth)
    assert r.prob.shape == (3, 32, 32) and [c["name"] for c in r.classes] == ["b", "a"]
    assert r.prob[1][truth == 2].min() > 0.99 and r.prob[2][truth == 1].min() > 0.99  # prob[k] is class k


@pytest.mark.parametrize("three_d", [False, True], ids=["2d", "3d"])
def test_msd_labels_1_and_2_to_a_nifti_label_map_in_the_input_geometry(tmp_path, three_d):
    root = write_msd_replica(tmp_path / "Task03_Liver", cases=3, slices=8)
    run = tmp_path / "run"
    extra = ["--preset", "volume-3d", "--set", "patch_size=[8, 32, 32]"] if three_d else []
    assert run_cli("train", str(root), "--out", str(run), "--epochs", "1", *TINY, *extra) == 0
    plan = Plan.load(run / "plan.json")
    assert plan.class_names() == ["liver", "cancer"] and plan.out_channels == 3
    assert run_cli("evaluate", str(run)) == 0
    assert set(json.loads((run / "eval" / "metrics.json").read_text())["per_class"]) == {"liver", "cancer"}
    src = root / "imagesTr" / "liver_1.nii.gz"
    assert run_cli("predict", str(run), str(src), "--out", str(tmp_path / "out")) == 0
    img = sitk.ReadImage(str(tmp_path / "out" / "liver_1.nii.gz"))
    assert img.GetPixelID() == sitk.sitkUInt8 and img.GetSize() == sitk.ReadImage(str(src)).GetSize()
    assert img.GetSpacing() == pytest.approx(SPACING) and img.GetOrigin() == pytest.approx(ORIGIN)
    assert img.GetDirection() == pytest.approx(DIRECTION)
    assert set(np.unique(sitk.GetArrayFromImage(img))) <= {0, 1, 2}
    import medseg
    r = medseg.load(run).predict(src)
    assert r.prob.shape == (3, *r.mask.shape) and np.allclose(r.prob.sum(0), 1, atol=1e-2)
    assert r.spacing == pytest.approx(SPACING) and r.direction == pytest.approx(DIRECTION)
    np.testing.assert_array_equal(r.mask, sitk.GetArrayFromImage(img))


def test_ircadb_two_structures_to_a_dicom_seg_with_a_segment_each(tmp_path):
    root = write_ircadb_replica(tmp_path / "3Dircadb1", patients=2, size=32)
    run = tmp_path / "run"
    assert run_cli("train", str(root), "--out", str(run), "--epochs", "1", "--target", "liver,tumour=livertumor*",
                   *TINY, "--val-fraction", "0.5") == 0
    plan = Plan.load(run / "plan.json")
    assert [(c["name"], c["structures"]) for c in plan.classes] == [("liver", ["liver"]), ("tumour", ["livertumor1"])]
    assert run_cli("evaluate", str(run)) == 0
    series = root / "3Dircadb1.1" / "PATIENT_DICOM"
    assert run_cli("predict", str(run), str(series), "--out", str(tmp_path / "seg")) == 0
    import highdicom as hd
    seg = hd.seg.segread(tmp_path / "seg" / "PATIENT_DICOM.seg.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "tumour"]
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Liver"
    assert run_cli("predict", str(run), str(series), "--out", str(tmp_path / "nii"), "--format", "nifti") == 0
    nii = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "nii" / "PATIENT_DICOM.nii.gz")))
    assert nii.shape == (8, 32, 32) and set(np.unique(nii)) <= {0, 1, 2}


def test_three_class_dicom_seg_reads_back_and_passes_dciodvfy(tmp_path):
    """A 3-class label map of a DICOM series -> a SEG with 3 named segments whose frames are the classes."""
    import highdicom as hd
    from medseg.adapters.ircadb import ordered_series
    from medseg.io.dicomseg import write_seg
    root = write_ircadb_replica(tmp_path / "3Dircadb1", size=32)
    slices = ordered_series(root / "3Dircadb1.1" / "PATIENT_DICOM")[0]
    labels = np.zeros((len(slices), 32, 32), np.uint8)
    labels[2:6, 4:12, 4:12], labels[3:5, 6:9, 6:9], labels[1:4, 20:28, 18:26] = 1, 2, 3
    names = ["liver", "livertumor", "portalvein"]
    plan = Plan(model="unet", classes=[{"name": n, "value": v} for n, v in zip(names, (1, 2, 5))])
    write_seg(tmp_path / "x.seg.dcm", [s[1] for s in slices], labels, plan)
    seg = hd.seg.segread(tmp_path / "x.seg.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == names and len(seg.SegmentSequence) == 3
    assert seg.SegmentSequence[1].SegmentedPropertyCategoryCodeSequence[0].CodeMeaning.lower() == "morphologically abnormal structure"
    uids = [pydicom.dcmread(s[1], stop_before_pixels=True).SOPInstanceUID for s in slices]
    back = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1, 2, 3])
    for k in (1, 2, 3):
        np.testing.assert_array_equal(back[..., k - 1] > 0, labels == k)
    if DCIODVFY is None:
        pytest.skip("dciodvfy (Debian dicom3tools) not installed; the read-back above passed")
    r = subprocess.run([DCIODVFY, str(tmp_path / "x.seg.dcm")], capture_output=True, text=True, timeout=60)
    errors = [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("Error")]
    assert not errors, "\n".join(errors)


def test_onnx_export_has_k_plus_1_outputs_and_predicts_the_same_labels(folder_run, tmp_path):
    import onnx
    run, root = folder_run
    assert run_cli("export", str(run)) == 0  # RUN/model.onnx, which `predict --engine onnx` reads
    dims = onnx.load(str(run / "model.onnx")).graph.output[0].type.tensor_type.shape.dim
    assert dims[1].dim_value == 3  # background + 2 classes
    img = str(root / "images" / "img_2.png")
    assert run_cli("predict", str(run), img, "--out", str(tmp_path / "torch")) == 0
    assert run_cli("predict", str(run), img, "--out", str(tmp_path / "onnx"), "--engine", "onnx") == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "torch" / "img_2.png")),
                                  np.asarray(Image.open(tmp_path / "onnx" / "img_2.png")))


def test_inspect_reports_voxels_per_class_and_cases_missing_one(tmp_path):
    from medseg.planning.fingerprint import fingerprint
    root = write_ircadb_replica(tmp_path / "3Dircadb1", patients=2, size=32)
    shutil.rmtree(root / "3Dircadb1.2" / "MASKS_DICOM" / "livertumor1")
    fp = fingerprint(root, target="liver,livertumor1", progress=False)
    liver, tumour = fp["classes"]
    assert liver["cases"] == 2 and liver["cases_missing"] == 0 and liver["voxels"] > tumour["voxels"] > 0
    assert tumour["cases_missing"] == 1 and tumour["missing"] == ["3Dircadb1.2"]


def test_target_entries_merge_and_name_classes(tmp_path):
    assert class_specs("liver,tumour=livertumor*,a+b", None) == [
        ("liver", ["liver"]), ("tumour", ["livertumor*"]), ("a+b", ["a", "b"])]
    assert class_specs("livertumor*", None) == [("livertumor", ["livertumor*"])]
    with pytest.raises(MedsegError, match="twice"):
        class_specs("liver,liver", None)
    root = write_ircadb_replica(tmp_path / "3Dircadb1", size=32)
    merged = load_dataset(root, target="tumour=livertumor*")  # one entry: a binary run over the matched folders
    assert merged.classes == [] and merged.target == "tumour=livertumor*"
    with pytest.raises(MedsegError, match="no structure matches 'vein\\*'"):
        load_dataset(root, target="liver,vein*")
    ds = load_dataset(root, target="liver,livertumor1")
    it = next(it for it in ds.items if len(it.masks) == 2)
    assert it.meta["mask_classes"] == (1, 2) and [m.parent.name for m in it.masks] == ["liver", "livertumor1"]


def test_plans_without_classes_are_binary_and_classes_are_checked():
    for old in ({}, {"version": 2}):
        plan = Plan.from_dict(old)
        assert plan.classes == [] and plan.out_channels == 1 and not plan.multiclass
    with pytest.raises(MedsegError, match="distinct names"):
        Plan(classes=[{"name": "a", "value": 1}, {"name": "a", "value": 2}], loss="ce+dice").validate()
    with pytest.raises(MedsegError, match="1..255"):
        Plan(classes=[{"name": "a", "value": 1}, {"name": "b", "value": 256}], loss="ce+dice").validate()
    with pytest.raises(MedsegError, match="loss 'bce\\+dice' is for binary runs"):
        Plan(classes=[{"name": "a", "value": 1}, {"name": "b", "value": 2}]).validate()


def test_balanced_sampling_draws_a_rare_class_as_often_as_a_common_one():
    masks = torch.zeros(100, 1, 4, 4, dtype=torch.uint8)
    masks[:60, 0, 0, 0] = 1  # class 1 in 60 images
    masks[60:63, 0, 1, 1] = 2  # class 2 in 3 images only
    presence = class_presence(masks, 2)
    drawn = sample_balanced(presence, 4000, 0.5, np.random.default_rng(0))
    with_two = presence[drawn, 1].mean()
    assert 0.22 < with_two < 0.28  # half the lesion draws (a quarter of all) show class 2, not 3%
    assert len(drawn) == 4000 and presence[drawn].any(1).mean() > 0.5
    # and training draws this way: a multi-class plan's epochs (the default "lesion" sampling)
    from medseg.adapters import Item
    from medseg.data.arrays import Arrays
    from medseg.training.dist import Dist
    from medseg.training.loop import SliceFeed
    plan = Plan(classes=[{"name": "a", "value": 1}, {"name": "b", "value": 2}], loss="ce+dice", batch_size=40)
    arrays = Arrays(torch.zeros(100, 1, 4, 4, dtype=torch.uint8), masks, [Item(Path(f"{i}"), (), f"{i}") for i in range(100)])
    feed = SliceFeed(plan, arrays, arrays.subset([False] * 100), Dist())
    drawn = np.concatenate([feed.draw(np.random.default_rng(e)) for e in range(6)])
    assert 0.2 < presence[drawn, 1].mean() < 0.3


def test_3d_patch_centres_pick_a_class_first():
    """volume-3d: a centred patch picks one of the case's classes, then a voxel of it (nnU-Net's rule), so a
    one-voxel class is the centre of about half the centred draws."""
    from medseg.adapters import Item
    from medseg.data.arrays import Arrays
    from medseg.data.volumes import sample_patches, to_volumes
    masks = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    masks[:, 0, :6, :6] = 1
    masks[2, 0, 7, 7] = 2
    arrays = Arrays(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), masks, [Item(Path(f"{i}"), (), "p", i) for i in range(4)])
    vols = to_volumes(arrays, 2)
    centres = sample_patches(vols, 2000, 1.0, np.random.default_rng(0))
    on_two = (centres[:, 1:] == [2, 7, 7]).all(1).mean()
    assert 0.45 < on_two < 0.55
    binary = sample_patches(to_volumes(arrays), 2000, 1.0, np.random.default_rng(0))  # binary: voxels alike
    assert (binary[:, 1:] == [2, 7, 7]).all(1).mean() < 0.01


def test_service_and_viewer_show_each_class_in_its_colour(folder_run, tmp_path):
    """POST /view gives class indices and the classes' colours; with a truth label map /predict scores each
    class; the viewer draws each class in its colour, lists them in a legend, and a class's own opacity
    slider at 0 removes its colour alone."""
    import httpx
    from medseg.app.serve import create_app
    from medseg.io.images import class_colour
    from test_serve import _chromium, _upload_and_wait, live
    run, root = folder_run
    image, truth = root / "images" / "img_4.png", root / "masks" / "img_4.png"
    with live(create_app(run)) as url:
        body = httpx.post(f"{url}/view", files={"file": ("x.png", image.read_bytes())}, timeout=60).json()
        assert [(c["name"], c["colour"]) for c in body["classes"]] == [("1", list(class_colour(1))),
                                                                     ("2", list(class_colour(2)))]
        scored = httpx.post(f"{url}/predict", files={"file": ("x.png", image.read_bytes()),
                                                     "truth": ("t.png", truth.read_bytes())}, timeout=60).json()
        assert set(scored["per_class"]) == {"1", "2"} and 0 <= scored["per_class"]["2"]["dice"] <= 1
        driver = _chromium(tmp_path)
        try:
            driver.get(url + "/")
            _upload_and_wait(driver, image)
            count = """const [r, g, b] = arguments[0], c = document.getElementById('canvas');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
                for (let i = 0; i < d.length; i += 4) {  // the pixel leans towards the colour: tinted by it
                  const dr = d[i] - d[i + 1], db = d[i + 2] - d[i + 1];
                  if (Math.sign(dr) === Math.sign(r - g) && Math.sign(db) === Math.sign(b - g) && Math.abs(dr) + Math.abs(db) > 30) n++; }
                return n;"""
            legend = driver.execute_script("return Array.from(document.querySelectorAll('#classes .cls')).map(r => r.textContent)")
            assert legend == ["1 (1)", "2 (2)"] and driver.execute_script("return !document.getElementById('legend').hidden")
            one = driver.execute_script(count, list(class_colour(1)))
            assert one > 0, "class 1's colour not drawn"
            driver.execute_script("const r = document.getElementById('class-1'); r.value = 0; r.dispatchEvent(new Event('input'))")
            assert driver.execute_script(count, list(class_colour(1))) == 0
            assert driver.execute_script("return document.images.length") == 0  # no <img> (nothing to show broken)
        finally:
            driver.quit()


def test_compare_matches_cases_per_class(folder_run, tmp_path):
    from medseg.evaluation.compare import compare
    run, _ = folder_run
    if not (run / "eval" / "cases.csv").is_file():
        assert run_cli("evaluate", str(run)) == 0
    other = tmp_path / "other"
    shutil.copytree(run, other)
    rows = read_csv(other / "eval" / "cases.csv")
    for r in rows:  # the other run: class 2 a little worse on every case
        r["dice"] = str(float(r["dice"]) - 0.1) if r["class"] == "2" else r["dice"]
    with (other / "eval" / "cases.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    result = compare([run, other], quiet=True)
    assert set(result["per_class"]) == {"1", "2"}
    assert result["per_class"]["1"]["runs"][1]["vs_first"]["mean_diff"] == pytest.approx(0.0)
    assert result["per_class"]["2"]["runs"][1]["vs_first"]["mean_diff"] == pytest.approx(-0.1)


def test_nnunet_export_of_a_multiclass_set_names_each_label(tmp_path):
    from medseg.data.nnunet_export import export_nnunet
    root = write_msd_replica(tmp_path / "Task03_Liver")
    out = export_nnunet(root, tmp_path / "raw", 7, "Liver", progress=False)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "liver": 1, "cancer": 2}
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(next((out / "labelsTr").glob("*.nii.gz")))))
    assert set(np.unique(label)) == {0, 1, 2}

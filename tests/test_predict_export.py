"""Prediction in the input's own format and geometry: PNG, TIF, NIfTI (oblique affine), DICOM SEG.

One tiny liver run, trained on a 3D-IRCADb replica for one epoch, predicts everything here: the tests
are about geometry and file formats, which do not depend on how good the mask is.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pydicom
import pytest
import torch
import SimpleITK as sitk
from PIL import Image

from conftest import run_cli, write_busi_replica
from replica_ircadb import write_ircadb_replica
from replica_nifti import write_volume
from runs import train

DCIODVFY = shutil.which("dciodvfy")


@pytest.fixture(scope="module")
def liver_run(tmp_path_factory):
    root = write_ircadb_replica(tmp_path_factory.mktemp("ircadb") / "3Dircadb1", patients=3, slices=10, size=48)
    out = tmp_path_factory.mktemp("runs") / "liver"
    train(root, out, epochs=1, image_size=32, batch_size=8, quiet=True)
    return out, root


@pytest.fixture(scope="module")
def busi_run(tmp_path_factory):
    root = write_busi_replica(tmp_path_factory.mktemp("busi") / "Dataset_BUSI_with_GT")
    out = tmp_path_factory.mktemp("runs") / "busi"
    train(root, out, epochs=1, image_size=32, batch_size=8, quiet=True)
    return out, root


def test_png_tif_prob_overlay_keep_the_input_size(busi_run, tmp_path):
    run, root = busi_run
    img = next((root / "benign").glob("*).png"))
    out = tmp_path / "png"
    assert run_cli("predict", str(run), str(img), "--out", str(out), "--prob", "--overlay") == 0
    size = Image.open(img).size
    mask = Image.open(out / f"{img.stem}.png")
    assert mask.size == size and mask.mode == "L" and set(np.unique(np.asarray(mask))) <= {0, 255}
    prob = Image.open(out / f"{img.stem}_prob.png")
    assert prob.size == size and np.asarray(prob).dtype == np.uint16
    assert Image.open(out / f"{img.stem}_overlay.png").size == size
    assert run_cli("predict", str(run), str(img), "--out", str(tmp_path / "tif"), "--format", "tif") == 0
    import tifffile
    tif = tifffile.imread(tmp_path / "tif" / f"{img.stem}.tif")
    assert tif.shape == size[::-1] and np.array_equal(tif, np.asarray(mask))  # same mask, other format


def test_tta_changes_probabilities_not_shape(busi_run):
    from medseg.inference.predictor import Predictor
    run, root = busi_run
    from medseg.io.images import read_image
    img = read_image(next((root / "malignant").glob("*).png")), 1)
    plain, tta = Predictor.load(run, tta=False).probabilities(img), Predictor.load(run, tta=True).probabilities(img)
    assert plain.shape == tta.shape == img.shape[1:] and not np.allclose(plain, tta)


def test_nifti_with_oblique_affine_round_trips(liver_run, tmp_path):
    run, root = liver_run
    c, s = np.cos(0.4), np.sin(0.4)
    direction = (c, -s, 0.0, s * 0.9, c * 0.9, -0.436, s * 0.436, c * 0.436, 0.9)  # rotated about two axes
    d = np.array(direction).reshape(3, 3)
    q, _ = np.linalg.qr(d)  # make it exactly orthonormal
    direction = tuple(float(v) for v in q.ravel())
    rng = np.random.default_rng(0)
    vol = (rng.random((7, 40, 36)) * 400 - 100).astype(np.int16)
    src = write_volume(tmp_path / "in" / "case_0001.nii.gz", vol, spacing=(0.7, 0.9, 2.5),
                       origin=(-12.5, 30.0, 101.0), direction=direction)
    out = tmp_path / "out"
    assert run_cli("predict", str(run), str(src), "--out", str(out)) == 0
    ref, got = sitk.ReadImage(str(src)), sitk.ReadImage(str(out / "case_0001.nii.gz"))
    assert got.GetSize() == ref.GetSize()
    assert np.allclose(got.GetSpacing(), ref.GetSpacing()) and np.allclose(got.GetOrigin(), ref.GetOrigin())
    assert np.allclose(got.GetDirection(), ref.GetDirection(), atol=1e-6)
    assert got.GetPixelID() == sitk.sitkUInt8 and set(np.unique(sitk.GetArrayFromImage(got))) <= {0, 1}
    # the same affine as nibabel reads it (what other tools see)
    import nibabel as nib
    assert np.allclose(nib.load(src).affine, nib.load(out / "case_0001.nii.gz").affine, atol=1e-5)


def test_dicom_series_to_seg_references_sources_in_order(liver_run, tmp_path):
    import highdicom as hd
    from medseg.adapters.ircadb import ordered_series
    run, root = liver_run
    series = root / "3Dircadb1.1" / "PATIENT_DICOM"
    out = tmp_path / "seg"
    assert run_cli("predict", str(run), str(series), "--out", str(out), "--threshold", "0.3") == 0
    seg_path = out / "PATIENT_DICOM.seg.dcm"
    seg = hd.seg.segread(seg_path)
    ordered = [s[1] for s in ordered_series(series)[0]]
    uids = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in ordered]
    refs = [r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence]
    assert set(refs) == set(uids) and len(refs) == len(uids)
    # one frame per source slice, each at its source slice's position (highdicom orders the frames itself)
    position = {u: [float(v) for v in pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient]
                for u, p in zip(uids, ordered)}
    frames = seg.PerFrameFunctionalGroupsSequence
    assert len(frames) == len(uids)
    for f in frames:
        src = f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert np.allclose([float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient], position[src])
    # read back by source instance (anatomical order), its pixels equal the NIfTI written for the series
    assert run_cli("predict", str(run), str(series), "--out", str(tmp_path / "nii"), "--format", "nifti",
                   "--threshold", "0.3") == 0
    nii = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "nii" / "PATIENT_DICOM.nii.gz")))
    by_source = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1])[..., 0]
    assert nii.any() and np.array_equal(by_source > 0, nii > 0)
    first = pydicom.dcmread(ordered[0], stop_before_pixels=True)
    img = sitk.ReadImage(str(tmp_path / "nii" / "PATIENT_DICOM.nii.gz"))
    assert np.allclose(img.GetOrigin(), [float(v) for v in first.ImagePositionPatient])


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (Debian dicom3tools) not installed; `make test` installs it as root")
def test_seg_passes_dciodvfy(liver_run, tmp_path):
    run, root = liver_run
    out = tmp_path / "seg"
    assert run_cli("predict", str(run), str(root / "3Dircadb1.2" / "PATIENT_DICOM"), "--out", str(out)) == 0
    r = subprocess.run([DCIODVFY, str(out / "PATIENT_DICOM.seg.dcm")], capture_output=True, text=True, timeout=60)
    errors = [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("Error")]
    assert not errors, "\n".join(errors)


def test_bad_inputs_exit_2_and_write_nothing(busi_run, tmp_path, capsys):
    run, root = busi_run
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    out = tmp_path / "out"
    assert run_cli("predict", str(run), str(bad), "--out", str(out)) == 2
    assert "broken.png" in capsys.readouterr().err and not out.exists()
    img = next((root / "benign").glob("*).png"))
    assert run_cli("predict", str(run), str(img), "--out", str(out), "--format", "dicom-seg") == 2
    assert run_cli("predict", str(run), str(img), "--out", str(out), "--threshold", "1.5") == 2
    assert not out.exists()


def test_python_api_matches_cli(busi_run, tmp_path):
    import medseg
    run, root = busi_run
    img = next((root / "malignant").glob("*).png"))
    r = medseg.load(run).predict(img)
    assert run_cli("predict", str(run), str(img), "--out", str(tmp_path)) == 0
    assert np.array_equal(r.mask, np.asarray(Image.open(tmp_path / f"{img.stem}.png")) > 0)
    assert r.prob.dtype == np.float32 and r.shape == r.mask.shape
    arr = np.asarray(Image.open(img).convert("L"))
    assert np.array_equal(medseg.load(run).predict(arr).mask, r.mask)  # uint8 array in, same mask out


def test_lgg_folder_is_one_stack_with_2_5d_input(tmp_path):
    """An LGG run defaults to 2.5D input; predicting a patient folder stacks its slices in slice order,
    with the neighbours built as in training, and post-processes the patient in 3D as evaluate does."""
    from conftest import write_lgg_replica
    from medseg.inference import postprocess
    from medseg.adapters import load_dataset
    from medseg.data.arrays import neighbour_index, prep_of, read_item
    from medseg.inference.predictor import Predictor

    root = write_lgg_replica(tmp_path / "kaggle_3m", patients=3, slices=6, size=48)
    run = tmp_path / "run"
    train(root, run, epochs=1, image_size=32, batch_size=8, quiet=True)
    p = Predictor.load(run)
    assert p.plan.neighbours == 1
    (run / "postprocess.json").write_text('{"setting": {"threshold": 0.4, "largest": true, "min_area": 0.0}}')
    p = Predictor.load(run)
    ds = load_dataset(root, "lgg")
    patient = ds.patients[0]
    items = [it for it in ds.items if it.patient == patient]
    imgs = p.scale_case([read_item(it, prep_of(p.plan))[0] for it in items])  # the whole stack is one case
    probs = np.stack([p.probabilities_batch(np.concatenate([imgs[j] for j in around])[None])[0]
                      for around in neighbour_index(items, 1)])
    expected = postprocess.apply(probs.astype(np.float16), p.setting)
    out = tmp_path / "masks"
    folder = items[0].image.parent
    assert run_cli("predict", str(run), str(folder), "--out", str(out)) == 0
    got = np.stack([np.asarray(Image.open(out / f"{it.image.stem}.png")) > 0 for it in items])
    assert got.shape == expected.shape and np.array_equal(got, expected)


class _Ramp(torch.nn.Module):
    """Logits = image + 0.3 * row + 0.2 * column: neither left-right nor up-down symmetric."""

    def forward(self, x):
        h, w = x.shape[-2:]
        return x[:, :1] + 0.3 * torch.arange(h).view(h, 1) + 0.2 * torch.arange(w).view(1, w)


@pytest.mark.parametrize("augmentation, flips", [("robust", ("lr",)), ("wide", ("lr",)), ("cbis", ("lr", "ud")),
                                                 ("liver-ct", ())])
def test_tta_averages_only_the_flips_the_model_was_trained_with(augmentation, flips):
    from types import SimpleNamespace

    from medseg.inference.engines import predict_probs

    img = np.random.default_rng(0).random((1, 1, 8, 8)).astype(np.float32)
    plan = SimpleNamespace(image_size=8, keep_aspect=False, mean=[0.0], std=[1.0], augmentation=augmentation, channel_fill=None,
                           tta_scales=[])
    got = predict_probs(_Ramp(), torch.from_numpy(img), plan, tta=True)[0].numpy()
    # expected, by hand: the model sees the image and each flip of it; each answer is flipped back
    rows, cols = np.arange(8)[:, None], np.arange(8)[None, :]
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    x = img[0, 0]
    views = [sig(x + 0.3 * rows + 0.2 * cols)]
    if "lr" in flips:  # model(flipped x) flipped back: the column ramp runs the other way
        views.append(sig(x + 0.3 * rows + 0.2 * (7 - cols)))
    if "ud" in flips:
        views.append(sig(x + 0.3 * (7 - rows) + 0.2 * cols))
    np.testing.assert_allclose(got, np.mean(views, 0), atol=1e-6)


class _SizeLogit(torch.nn.Module):
    """Logits = the input's height / 16 everywhere (records each input size): which scales TTA ran shows in
    the probabilities."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def forward(self, x):
        self.sizes.append(tuple(x.shape[-2:]))
        return torch.full((x.shape[0], 1, *x.shape[-2:]), x.shape[-2] / 16)


@pytest.mark.parametrize("scales, tta, sizes", [([0.875, 1.125], True, (128, 112, 144)), ([], True, (128,)),
                                                ([0.875, 1.125], False, (128,)), ([1.0, 1.02], True, (128,))])
def test_tta_averages_the_plans_scales_each_with_its_flips(scales, tta, sizes):
    from types import SimpleNamespace

    from medseg.inference.engines import predict_probs

    net = _SizeLogit()
    plan = SimpleNamespace(image_size=128, keep_aspect=False, mean=[0.0], std=[1.0], augmentation="robust",
                           channel_fill=None, tta_scales=scales)
    got = predict_probs(net, torch.rand(2, 1, 100, 90), plan, tta=tta)
    assert got.shape == (2, 100, 90)
    # each size once as it is and (tta) once left-right flipped; the mean of the sizes' sigmoids, by hand
    assert sorted(net.sizes) == sorted([(s, s) for s in sizes for _ in range(2 if tta else 1)])
    expected = np.mean([1 / (1 + np.exp(-s / 16)) for s in sizes])
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)


def test_tta_sizes_are_multiples_of_16_without_the_training_size():
    from medseg.inference.engines import tta_sizes
    assert tta_sizes(128, [0.875, 1.125]) == [112, 144]
    assert tta_sizes(256, [0.875, 1.125, 0.88]) == [224, 288]  # 0.88 x 256 = 225.3: 224 again, once
    assert tta_sizes(128, [1.05]) == [] and tta_sizes(128, []) == []


def test_a_new_plan_has_scaled_tta_and_an_older_one_keeps_what_it_was_evaluated_with():
    from medseg.errors import MedsegError
    from medseg.planning.plan import Plan
    assert Plan().tta_scales == [0.875, 1.125] and Plan.from_dict({"version": 5}).tta_scales == []
    assert Plan.from_dict({"version": 6}).tta_scales == [0.875, 1.125]
    for bad in ([3.0], 0.9, [True], ["a"]):
        with pytest.raises(MedsegError, match="tta_scales must be"):
            Plan(tta_scales=bad).validate()


def test_a_2d_run_predicts_with_its_flips_by_default(busi_run):
    from medseg.inference.predictor import Predictor
    from medseg.io.images import read_image
    run, root = busi_run
    img = read_image(next((root / "malignant").glob("*).png")), 1)
    default, flipped = Predictor.load(run), Predictor.load(run, tta=True)
    assert default.tta and not Predictor.load(run, tta=False).tta
    np.testing.assert_array_equal(default.probabilities(img), flipped.probabilities(img))


class _Logit(torch.nn.Module):
    """Logits = the first channel as it reaches the model: the probabilities show the scaling predict applied."""

    def forward(self, x):
        return x[:, :1]


def test_a_stack_is_scaled_as_one_case_not_slice_by_slice():
    """predict scales a slice stack (a patient) by one factor per channel, computed over the whole stack as in
    training: a slice 0.3x as bright as its neighbour must reach the model 0.3x as bright, not stretched to
    look like it; and the stack times 3 must give the same probabilities (the scaling is per case)."""
    from medseg.inference.predictor import Predictor
    from medseg.planning.plan import Plan

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    disc = (yy - 16) ** 2 + (xx - 16) ** 2 < 12 ** 2
    bright = np.where(disc, rng.uniform(0.02, 0.06, (32, 32)), 0.0).astype(np.float32)[None]
    stack = [bright, 0.3 * bright]
    plan = Plan(intensity_norm="median", body_mask="log-otsu", neighbours=0, image_size=32, mean=[0.0], std=[1.0])
    p = Predictor(_Logit(), plan, tta=False)
    logit = lambda q: np.log(q / (1 - q))  # noqa: E731
    got = logit(p.volume_probabilities(iter(stack), 2).astype(np.float64))
    assert got[0][disc].mean() > 0.1  # the stack was scaled up towards the median target, not left as is
    np.testing.assert_allclose(got[1], 0.3 * got[0], atol=5e-3)
    tripled = logit(p.volume_probabilities(iter([3 * s for s in stack]), 2).astype(np.float64))
    np.testing.assert_allclose(tripled, got, atol=5e-3)

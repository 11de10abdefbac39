"""`medseg serve RUN`: one trained run behind a small HTTP service (FastAPI + uvicorn) and a browser viewer.

    POST /predict        an image (PNG/JPEG/TIFF), a DICOM file, a zipped DICOM series or a NIfTI volume
                         -> the mask in the matching format (PNG, TIFF, DICOM SEG, NIfTI); with a `truth`
                         mask sent along -> JSON metrics (Dice, IoU, precision, recall) instead
    POST /view           the same input -> JSON for the viewer: greyscale slices and mask slices as PNGs
                         (a multi-class run's: class indices, with each class's name, value and colour)
    GET  /health, /model the service's state; the run's config, preset, training-data fingerprint, metrics
    GET  /               the viewer page; GET /eval: the run's evaluation, case by case (data: /eval/cases)

Access: with a token (`medseg serve --token`, MEDSEG_TOKEN) every route but /health and the two page shells
needs `Authorization: Bearer <token>`; without one the service binds only to loopback unless --insecure is
given. No answer names a path of this machine: paths are cut to their last part.

The kind of an upload is sniffed from its first bytes, never from its name. Uploads are capped in size,
each prediction runs in a bounded worker pool with a timeout, and a full queue answers 503 at once: the
service stays up under load and bad input gets a 4xx with one line naming the problem.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import hmac
import html
import io
import ipaddress
import json
import re
import shutil
import tempfile
import threading
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from PIL import Image
from starlette.background import BackgroundTask

from ..evaluation import metrics
from ..inference.api import Model
from ..inference.checkpoint import fold_runs, resolve_run
from ..errors import MedsegError
from ..io.images import class_colour, read_image
from ..inference.predictor import Predictor, predict_with

KINDS = {"png": ".png", "jpeg": ".jpg", "tiff": ".tif", "dicom": ".dcm", "nifti-gz": ".nii.gz", "nifti": ".nii",
         "zip": ".zip"}
MEDIA = {".png": "image/png", ".tif": "image/tiff", ".nii.gz": "application/gzip", ".seg.dcm": "application/dicom"}
MAX_VIEW_SLICES = 400  # the viewer gets at most this many slices (evenly spaced) of a volume
MAX_VIEW_SIDE = 512  # and each at most this many pixels a side
MAX_UNZIPPED = 8  # a zipped series may expand to at most this many times the upload limit (zip bombs)


def sniff(head: bytes) -> str | None:
    """The upload's kind from its content: magic numbers of PNG, JPEG, TIFF, DICOM (DICM at 128), ZIP,
    gzip holding a NIfTI-1/2 header, and uncompressed NIfTI. None for anything else."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        try:
            inner = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 600)
        except zlib.error:
            return None
        return "nifti-gz" if _nifti_header(inner) else None
    return "nifti" if _nifti_header(head) else None


def _nifti_header(b: bytes) -> bool:
    return (len(b) >= 348 and b[344:347] in (b"n+1", b"ni1")) or (len(b) >= 8 and b[4:8] in (b"n+2\x00",))


class Busy(Exception):
    pass


# --- access ---------------------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost: addresses that only this machine reaches."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_token(token: str | None) -> None:
    """A token travels in a header: printable ASCII without spaces, not empty."""
    if token is not None and not re.fullmatch(r"[\x21-\x7e]+", token):
        raise MedsegError(None, "--token (or MEDSEG_TOKEN) must be printable ASCII without spaces, and not empty")


def check_access(host: str, token: str | None, insecure: bool = False) -> None:
    """Before anything loads or binds: the token is well formed, and an address beyond loopback has a token
    unless `insecure`."""
    check_token(token)
    if token is None and not insecure and not is_loopback(host):
        raise MedsegError(None, f"--host {host} is reachable beyond this machine and no token is set: give --token "
                                "(or MEDSEG_TOKEN), or --insecure to let anyone who reaches it see predictions, the "
                                "run's configuration and its per-case table")


def _token_dependencies(token: str | None) -> list:
    """The protected routes' dependencies: with a token, `Authorization: Bearer <token>` (compared in constant
    time) or 401; HTTPBearer puts the scheme into the OpenAPI schema. Without a token, none."""
    if token is None:
        return []
    check_token(token)
    scheme = HTTPBearer(auto_error=False, description="The token given to `medseg serve --token` (or MEDSEG_TOKEN).")
    want = token.encode()

    def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(scheme)) -> None:
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), want):
            raise HTTPException(401, "missing or wrong token: send the header `Authorization: Bearer <token>` "
                                     "with the token `medseg serve` was started with",
                                headers={"WWW-Authenticate": "Bearer"})
    return [Depends(require_token)]


def _absolute(text: str) -> bool:
    win = PureWindowsPath(text)
    return (text.startswith("/") and len(PurePosixPath(text).parts) > 1) or bool(win.drive and win.root)


def _last_part(path: str) -> str:
    return (PureWindowsPath if PureWindowsPath(path).drive else PurePosixPath)(path).name


class PathScrub:
    """Absolute paths of this machine -> their last part, in what the service answers: every absolute path
    named in `sources` (the plan, metrics.json: data folder, fingerprint root, pretrained weights; the run
    folder), wherever it appears in a text (raw, HTML- or JSON-escaped), and any string that is itself one."""

    def __init__(self, *sources):
        found: set[str] = set()
        self._collect(sources, found)
        forms = {}
        for path in sorted(found, key=len, reverse=True):  # the longest first: a folder's files before the folder
            name = _last_part(path)
            for f in (str, html.escape, lambda x: html.escape(x, quote=False), lambda x: json.dumps(x)[1:-1]):
                forms.setdefault(f(path), f(name))
        alternatives = "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))
        self.pattern = re.compile(rf"(?<![\w.\-/\\])(?:{alternatives})(?![\w.\-])") if forms else None
        self.forms = forms

    def _collect(self, value, found: set[str]) -> None:
        if isinstance(value, str):
            if _absolute(value):
                found.add(value)
        elif isinstance(value, dict):
            self._collect(list(value.values()), found)
        elif isinstance(value, (list, tuple)):
            for v in value:
                self._collect(v, found)

    def text(self, text: str) -> str:
        return self.pattern.sub(lambda m: self.forms[m.group(0)], text) if self.pattern else text

    def value(self, value):
        """A JSON value with every string scrubbed."""
        if isinstance(value, str):
            return _last_part(value) if _absolute(value) else self.text(value)
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.value(v) for v in value]
        return value


class Service:
    """The loaded model, the worker pool and the limits; one per app."""

    def __init__(self, run: Path, max_upload_mb: float, timeout_s: float, workers: int, queue: int):
        self.run = Path(run)
        self.predictor = Predictor.load(run)
        self.model = Model(self.predictor)
        self.max_bytes = int(max_upload_mb * 1024 * 1024)
        self.timeout_s = timeout_s
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medseg-predict")
        self.capacity = workers + queue  # requests in the pool or waiting for it
        self.active = 0
        self.lock = threading.Lock()
        if fold_runs(self.run) is not None:  # a cross-validated run: its folds' ensemble
            self.run_folder = self.run
        else:
            folder = resolve_run(self.run)
            self.run_folder = folder.parent if folder.name in ("best", "last") else folder

    async def call(self, fn, *args):
        """fn(*args) in the pool; 503 when the pool and its queue are full, 504 after the timeout (the work
        itself finishes in its thread and frees its place then, so the bound holds)."""
        with self.lock:
            if self.active >= self.capacity:
                raise Busy()
            self.active += 1
        future = asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

        def release(_):
            with self.lock:
                self.active -= 1
        future.add_done_callback(release)
        return await asyncio.wait_for(asyncio.shield(future), self.timeout_s)

    async def receive(self, upload: UploadFile, field: str) -> bytes:
        """The upload's bytes, read in chunks and refused (413) as soon as they pass the limit."""
        chunks, size = [], 0
        while True:
            chunk = await upload.read(1 << 20)
            if not chunk:
                break
            size += len(chunk)
            if size > self.max_bytes:
                raise HTTPException(413, f"{field}: larger than the {self.max_bytes // (1024 * 1024)} MB upload limit")
            chunks.append(chunk)
        data = b"".join(chunks)
        if not data:
            raise HTTPException(400, f"{field}: empty upload")
        return data

    def materialise(self, data: bytes, folder: Path, field: str) -> Path:
        """Write an upload where medseg's readers expect it: a file with the suffix of its sniffed kind, or a
        zipped series unpacked into a folder (member names checked, total size capped)."""
        kind = sniff(data[:4096])
        if kind is None:
            raise HTTPException(415, f"{field}: not a PNG, JPEG, TIFF, DICOM, zipped DICOM series or NIfTI file "
                                     "(judged by its content, not its name)")
        if kind != "zip":
            path = folder / f"{field}{KINDS[kind]}"
            path.write_bytes(data)
            return path
        target = folder / field
        target.mkdir()
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                members = [m for m in z.infolist() if not m.is_dir()]
                if sum(m.file_size for m in members) > MAX_UNZIPPED * self.max_bytes:
                    raise HTTPException(413, f"{field}: the zip expands beyond {MAX_UNZIPPED}x the upload limit")
                for i, m in enumerate(members):  # flat, numbered names: no path from the archive is trusted
                    name = Path(m.filename).name
                    if name.startswith(".") or name.startswith("__MACOSX"):
                        continue
                    (target / f"{i:05d}_{name}").write_bytes(z.read(m))
        except (zipfile.BadZipFile, zlib.error, EOFError) as e:
            raise HTTPException(400, f"{field}: not a readable zip ({e})") from None
        if not any(target.iterdir()):
            raise HTTPException(400, f"{field}: the zip holds no files")
        return target

    # --- work done in the pool ------------------------------------------------------------------------
    def predict_file(self, path: Path, out: Path, fmt: str) -> Path:
        written = predict_with(self.predictor, [path], out, quiet=True, fmt=fmt)
        if len(written) != 1:  # a folder of 2D images is a stack: the service answers one file per request
            raise MedsegError(path, f"gave {len(written)} masks; send one image, volume or series per request")
        return written[0]

    def truth_metrics(self, path: Path, truth: Path) -> dict:
        """Foreground metrics of the prediction against `truth`; a multi-class run's truth is a label map with
        the classes' values, scored per class as well ("per_class")."""
        pred = self.model.predict_path(path)
        classes = self.predictor.plan.classes
        gt = _read_truth(truth, pred.mask.shape, labels=bool(classes))
        out = {"shape": list(pred.mask.shape), "gt_pixels": int(np.count_nonzero(gt)),
               "pred_pixels": int(np.count_nonzero(pred.mask)), **_scores(pred.mask > 0, gt > 0),
               "empty_policy": metrics.EMPTY_POLICY}
        if classes:
            out["per_class"] = {c["name"]: _scores(pred.mask == c["value"], gt == c["value"]) for c in classes}
        return out

    def view(self, path: Path) -> dict:
        """Slices and masks as PNGs for the viewer. Binary runs' masks are 0/255; a multi-class run's hold the
        class index (1..K) of each pixel, `classes` giving each index its name, value and colour (the report's)."""
        pred = self.model.predict_path(path)
        plan = self.predictor.plan
        images = _display_slices(path, plan, pred.mask.shape)
        masks = pred.mask if pred.mask.ndim == 3 else pred.mask[None]
        if plan.classes:  # class values -> class indices
            lut = np.zeros(256, np.uint8)
            lut[plan.class_values()[1:]] = np.arange(1, len(plan.classes) + 1)
            masks = lut[masks]
        else:
            masks = (masks > 0).astype(np.uint8) * 255
        picks = np.unique(np.linspace(0, len(masks) - 1, min(len(masks), MAX_VIEW_SLICES)).round().astype(int))
        step = max(1, int(np.ceil(max(masks.shape[1:]) / MAX_VIEW_SIDE)))
        classes = [{"name": c["name"], "value": c["value"], "colour": list(class_colour(k))}
                   for k, c in enumerate(plan.classes, 1)]
        return {"slices": len(picks), "total_slices": len(masks), "height": int(masks.shape[1]),
                "width": int(masks.shape[2]), "step": step, "classes": classes,
                "foreground_pixels": int(np.count_nonzero(pred.mask)),
                "foreground_per_slice": [int(np.count_nonzero(masks[i])) for i in picks],
                "images": [_png64(images[i][::step, ::step]) for i in picks],
                "masks": [_png64(masks[i][::step, ::step]) for i in picks]}


def _png64(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", optimize=False, compress_level=1)
    return base64.b64encode(buf.getvalue()).decode()


def _display_slices(path: Path, plan: dict, shape: tuple[int, ...]):
    """Greyscale (or RGB) uint8 slices of the input for display, with the run's intensity rule (CT window)."""
    intensity = plan.intensity
    if path.is_dir():
        from ..adapters.ircadb import ordered_series
        return [_u8(read_image(s[1], 1, intensity)) for s in ordered_series(path)[0]]
    if len(shape) == 3:
        return [_u8(read_image(path, 1, intensity, z)) for z in range(shape[0])]
    return [_u8(read_image(path, 3 if plan.channels >= 3 else 1, intensity))]


def _u8(img: np.ndarray) -> np.ndarray:
    arr = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    return arr[0] if arr.shape[0] == 1 else np.moveaxis(arr[:3], 0, -1)


def _scores(pred: np.ndarray, gt: np.ndarray) -> dict:
    s = metrics.scores(metrics.counts(pred, gt))
    return {k: s[k] for k in ("dice", "iou", "precision", "recall")}


def _read_truth(path: Path, shape: tuple[int, ...], labels: bool = False) -> np.ndarray:
    """A ground-truth mask for the metrics: a 2D mask image, or a label volume (NIfTI) of the input's shape;
    any non-zero value is foreground. With `labels` (multi-class runs) the values are returned as they are."""
    if len(shape) == 2:
        from ..io.images import mask_array, read_mask
        return mask_array(Path(path), shape, None) if labels else read_mask([path], shape)
    import SimpleITK as sitk
    try:
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError as e:
        raise MedsegError(path, f"cannot read the truth volume ({str(e).strip().splitlines()[-1][:200]})") from e
    if arr.shape != tuple(shape):
        raise MedsegError(path, f"truth is {arr.shape}, the input {tuple(shape)}: they must match")
    return arr if labels else arr > 0


def _train_fingerprint(plan: dict) -> dict:
    """What identifies the training data: the split's patients (hashed), image counts and the channel
    statistics the model normalises with."""
    import hashlib
    split = plan.split or {}
    digest = hashlib.sha256(json.dumps(split, sort_keys=True).encode()).hexdigest()[:16]
    return {"data": Path(plan.data or "").name, "layout": plan.layout,
            "patients": {k: len(v) for k, v in split.items()}, "images": plan.n_items,
            "mean": plan.mean, "std": plan.std, "split_sha256": digest}


def _summary(run_folder: Path) -> dict | None:
    f = run_folder / "eval" / "metrics.json"
    if not f.is_file():
        return None
    m = json.loads(f.read_text())
    return {"split": m.get("split"), "n_cases": m.get("n_cases"), "dice": m.get("dice"), "iou": m.get("iou"),
            "hd95": m.get("hd95"), "postprocess": m.get("postprocess_text"), "fingerprint": m.get("fingerprint")}


def create_app(run: str | Path, max_upload_mb: float = 64, timeout_s: float = 120, workers: int = 1,
               queue: int = 4, token: str | None = None) -> FastAPI:
    """The app for one run; with `token`, every route but /health and the page shells needs it as a bearer
    token."""
    auth = _token_dependencies(token)
    svc = Service(Path(run), max_upload_mb, timeout_s, workers, queue)
    plan = svc.predictor.plan
    about = (f"the medseg run {svc.run_folder.name} ({plan.layout}, model {plan.model})" if token is None else
             "a medseg run (its name and settings: GET /model, with the bearer token)")
    app = FastAPI(title="medseg", version=str(plan.medseg_version), description=f"Segmentation masks from {about}.")
    app.state.service = svc
    _add_error_handlers(app, svc)
    _add_info_routes(app, svc, auth)
    _add_predict_routes(app, svc, auth)
    _add_page_routes(app, svc, auth)
    return app


def _scrub(svc: Service) -> PathScrub:
    """The paths this run names now (its evaluation may be rewritten while the service runs)."""
    f = svc.run_folder / "eval" / "metrics.json"
    evaluation = json.loads(f.read_text()) if f.is_file() else {}
    return PathScrub(svc.predictor.plan.to_dict(), evaluation, str(svc.run_folder.resolve()), str(svc.run.resolve()))


def _add_error_handlers(app: FastAPI, svc: Service) -> None:
    """Bad input -> 422, a full pool -> 503, a prediction past the timeout -> 504."""

    @app.exception_handler(MedsegError)
    async def _bad_input(request: Request, e: MedsegError):
        where = Path(e.path).name if e.path else None  # never the server's temp paths
        return JSONResponse({"detail": f"{where}: {e.problem}" if where else e.problem}, status_code=422)

    @app.exception_handler(Busy)
    async def _busy(request: Request, e: Busy):
        return JSONResponse({"detail": "busy: every worker and queue place is taken; retry shortly"},
                            status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(asyncio.TimeoutError)
    async def _timeout(request: Request, e):
        return JSONResponse({"detail": f"prediction took longer than {svc.timeout_s:.0f} s"}, status_code=504)


def _add_info_routes(app: FastAPI, svc: Service, auth: list) -> None:
    """GET /health (open to all: liveness only) and GET /model."""
    plan = svc.predictor.plan

    @app.get("/health", summary="Liveness and load")
    def health() -> dict:
        return {"status": "ok", "active": svc.active, "capacity": svc.capacity}

    @app.get("/model", summary="The run: config, preset, training-data fingerprint, metrics", dependencies=auth)
    def model_info() -> dict:
        keep = ("model", "model_args", "preset", "layout", "unit", "channels", "image_size", "neighbours", "loss",
                "augmentation", "intensity", "target", "epoch", "val_dice", "medseg_version", "seed")
        folds = fold_runs(svc.run_folder)
        return _scrub(svc).value({
            "run": svc.run_folder.name, "config": {k: getattr(plan, k) for k in keep},
            "ensemble_of_folds": len(folds) if folds else None, "postprocess": svc.predictor.setting,
            "train_data_fingerprint": _train_fingerprint(plan), "evaluation": _summary(svc.run_folder)})


def _add_predict_routes(app: FastAPI, svc: Service, auth: list) -> None:
    """POST /predict and POST /view."""

    @app.post("/predict", summary="Mask of one image, DICOM file, zipped DICOM series or NIfTI volume",
              responses={200: {"description": "The mask file (PNG, TIFF, DICOM SEG or NIfTI), or JSON metrics "
                                              "when `truth` is sent"}, 413: {"description": "Upload too large"},
                         415: {"description": "Not a known image format"}, 422: {"description": "Unreadable input"},
                         503: {"description": "Busy"}, 504: {"description": "Timed out"}}, dependencies=auth)
    async def predict(file: UploadFile, truth: UploadFile | None = None, format: str = "auto"):
        data = await svc.receive(file, "file")
        truth_data = await svc.receive(truth, "truth") if truth is not None else None
        tmp = Path(tempfile.mkdtemp(prefix="medseg-serve-"))
        try:
            path = svc.materialise(data, tmp, "file")
            if truth_data is not None:
                gt = svc.materialise(truth_data, tmp, "truth")
                result = await svc.call(svc.truth_metrics, path, gt)
                shutil.rmtree(tmp, ignore_errors=True)
                return JSONResponse(result)
            if format == "auto" and path.suffix in (".jpg", ".tif"):
                format = "tif" if path.suffix == ".tif" else "png"  # a mask is never JPEG: lossy edges
            out = await svc.call(svc.predict_file, path, tmp / "out", format)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return _mask_response(out, file.filename, tmp)

    @app.post("/view", summary="Slices and mask slices as PNGs, for the viewer", dependencies=auth)
    async def view(file: UploadFile):
        data = await svc.receive(file, "file")
        tmp = Path(tempfile.mkdtemp(prefix="medseg-serve-"))
        try:
            return JSONResponse(await svc.call(svc.view, svc.materialise(data, tmp, "file")))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _mask_response(out: Path, filename: str | None, tmp: Path) -> FileResponse:
    """The written mask as a download named after the upload; the temp folder goes once it is sent."""
    suffix = next((s for s in MEDIA if out.name.endswith(s)), "")
    name = Path(filename or "upload").name.split(".")[0] + "_mask" + suffix
    return FileResponse(out, media_type=MEDIA.get(suffix, "application/octet-stream"), filename=name,
                        background=BackgroundTask(shutil.rmtree, tmp, True))


def _add_page_routes(app: FastAPI, svc: Service, auth: list) -> None:
    """GET / (the viewer), /eval (the evaluation page), /eval/cases (its data) and /eval/report.

    The two pages are shells, served without the token: static HTML holding no data (not even the run's
    name). Their script asks for the token once (a prompt, kept in the tab's sessionStorage) and sends it as
    `Authorization: Bearer` on every data request (/model, /view, /predict, /eval/cases, /eval/report).
    Chosen over a `?token=` query parameter, which would leave the token in browser history, proxy and server
    logs and Referer headers; a browser cannot add a header to a plain page load, so the shells must be open."""

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return _page("viewer.html")

    @app.get("/eval", response_class=HTMLResponse, summary="The evaluation page (data from /eval/cases)")
    def eval_page() -> str:
        return _page("eval.html")

    @app.get("/eval/cases", summary="The run's evaluation, case by case", dependencies=auth)
    def eval_cases() -> dict:
        return _scrub(svc).value(_eval_cases(svc.run_folder))

    @app.get("/eval/report", response_class=HTMLResponse, include_in_schema=False, dependencies=auth)
    def eval_report() -> str:
        f = svc.run_folder / "eval" / "report.html"
        if not f.is_file():
            raise HTTPException(404, "no evaluation yet: run `medseg evaluate RUN`")
        return _scrub(svc).text(f.read_text())


# The pages' one way to the API: the token, asked for on the first 401 and kept for the tab.
AUTH_JS = """
async function api(url, options = {}) {
  for (let asked = false; ; asked = true) {
    const token = sessionStorage.getItem("medseg-token");
    const headers = { ...(options.headers || {}), ...(token ? { Authorization: `Bearer ${token}` } : {}) };
    const r = await fetch(url, { ...options, headers });
    if (r.status !== 401 || asked) return r;
    const entered = prompt("This medseg service needs its access token (the one `medseg serve --token` was given):");
    if (entered === null) return r;
    sessionStorage.setItem("medseg-token", entered.trim());
  }
}
"""


def _page(name: str) -> str:
    return files("medseg.app").joinpath(f"web/{name}").read_text().replace("/*{{api}}*/", AUTH_JS)


def _eval_cases(run_folder: Path) -> dict:
    """The evaluation page's data: a one-line summary and the per-case table (None and [] before `evaluate`)."""
    f = run_folder / "eval" / "cases.csv"
    if not f.is_file():
        return {"run": run_folder.name, "summary": None, "columns": [], "rows": []}
    with f.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    cols = [c for c in ("class", "case", "group", "dice", "iou", "precision", "recall", "hd95", "gt_pixels", "pred_pixels")
            if rows and c in rows[0]]
    s = _summary(run_folder) or {}
    d = s.get("dice") or {}
    summary = (f"{s.get('n_cases')} cases ({s.get('split')} split); Dice mean {d.get('mean', float('nan')):.3f}, "
               f"median {d.get('median', float('nan')):.3f}; post-processing: {s.get('postprocess')}.")
    return {"run": run_folder.name, "summary": summary, "columns": cols,
            "rows": [[r.get(c, "") or "" for c in cols] for r in rows]}


def serve(run: str | Path, host: str = "127.0.0.1", port: int = 8000, max_upload_mb: float = 64,
          timeout_s: float = 120, workers: int = 1, queue: int = 4, token: str | None = None,
          insecure: bool = False) -> None:
    check_access(host, token, insecure)  # before the model loads and anything binds
    import uvicorn
    app = create_app(run, max_upload_mb, timeout_s, workers, queue, token=token)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_keep_alive=5, limit_concurrency=64)

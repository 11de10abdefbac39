"""`medseg export RUN --onnx`: the best checkpoint as an ONNX graph, and `OnnxNet` to run it.

The graph takes the image in [0, 1] at the training size and does the plan's normalisation itself, so
any ONNX runtime needs only the resize. The batch axis is dynamic; height and width are dynamic too
(any multiple of 16, the U-Nets' total down-sampling; medseg always feeds the training size).
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_checkpoint, resolve_run
from .engines import SIZE_MULTIPLE, Normalised  # Normalised: part of this module's interface (tests, benchmarks)
from ..errors import MedsegError, atomic_path, check_output


def export_onnx(run: str | Path, out: str | Path | None = None, opset: int | None = None) -> tuple[Path, float]:
    """Write RUN/model.onnx (or `out`); returns the path and the largest |logit| difference against
    PyTorch on a random batch, checked by running the written file with ONNX Runtime."""
    import onnx

    folder = resolve_run(Path(run))
    run_folder = folder.parent if folder.name in ("best", "last") else folder
    out = check_output(Path(out) if out else run_folder / "model.onnx", "file")
    model, plan = load_checkpoint(folder)
    net = Normalised(model.eval(), plan.mean, plan.std).eval()
    size = int(plan.image_size)
    x = torch.rand(2, plan.in_channels, size, size)
    batch, h, w = torch.export.Dim("batch", min=1), torch.export.Dim("h16", min=1), torch.export.Dim("w16", min=1)
    kwargs = {"dynamo": True, "dynamic_shapes": {"x": {0: batch, 2: SIZE_MULTIPLE * h, 3: SIZE_MULTIPLE * w}},
              "input_names": ["image"], "output_names": ["logits"],
              "verbose": False}
    if opset:
        kwargs["opset_version"] = opset
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        try:
            # the exporter prints its progress, logs that torchvision is absent and warns about its own internals
            quiet = logging.getLogger("torch.onnx")
            level = quiet.level
            quiet.setLevel(logging.ERROR)
            try:
                with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)
                    program = torch.onnx.export(net, (x,), **kwargs)
            finally:
                quiet.setLevel(level)
            program.save(str(tmp))
        except Exception as e:  # the exporter raises many types; the user needs the one line
            raise MedsegError(run, f"ONNX export failed for model {plan['model']!r} ({str(e).splitlines()[0][:200]})") from e
        onnx.checker.check_model(str(tmp))
        with torch.inference_mode():
            ref = net(x).numpy()
        diff = float(np.abs(OnnxNet(tmp)(x).numpy() - ref).max())
    return out, diff


class OnnxNet:
    """An exported graph behind the interface inference.predict_probs expects of a model: called on a
    float32 B x C x H x W tensor in [0, 1], returns logits; normalisation is inside the graph."""

    includes_normalization = True

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise MedsegError(path, "ONNX model not found: write it with `medseg export RUN --onnx`")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise MedsegError(path, f"not a loadable ONNX model ({str(e).splitlines()[0][:200]})") from e
        self.input = self.session.get_inputs()[0].name

    def eval(self) -> "OnnxNet":
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().float().numpy())
        return torch.from_numpy(self.session.run(None, {self.input: arr})[0])


def speed(run: str | Path, onnx_path: Path, batch: int = 8, repeats: int = 5) -> dict[str, float]:
    """Images/s of PyTorch eager and ONNX Runtime on the same random batch, measured in one call."""
    model, plan = load_checkpoint(resolve_run(Path(run)))
    net = Normalised(model.eval(), plan.mean, plan.std).eval().to(memory_format=torch.channels_last)
    x = torch.rand(batch, plan.in_channels, plan.image_size, plan.image_size)
    onnx_net = OnnxNet(onnx_path)
    out = {}
    for name, fn in (("torch", lambda: net(x.contiguous(memory_format=torch.channels_last))),
                     ("onnxruntime", lambda: onnx_net(x))):
        with torch.inference_mode():
            fn()
            t = time.perf_counter()
            for _ in range(repeats):
                fn()
        out[name] = batch * repeats / (time.perf_counter() - t)
    return out

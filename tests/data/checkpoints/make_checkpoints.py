"""Generates the tiny checkpoints in this directory (run with Debian's /usr/bin/python3, torch 1.13).

Only torch.save / torch.jit.script on tensors and modules defined here; no third-party code is run.
The C++ tests in tests/io/checkpoint_test.cpp and tests/models/torchscript_test.cpp read these files and
compare against closed forms or against the values stored next to them.
"""
import argparse
import collections
import os
import sys

import torch

OUT = os.path.dirname(os.path.abspath(__file__))


class Tiny(torch.nn.Module):
    """Mirrored by TinyNet in tests/io/checkpoint_test.cpp (same names, shapes and dtypes)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 3, 3)
        self.norm = torch.nn.GroupNorm(1, 3)
        self.fc = torch.nn.Linear(4, 2)
        self.register_buffer("half_buffer", torch.zeros(3, dtype=torch.float16))
        self.register_buffer("bf16_buffer", torch.zeros(2, 2, dtype=torch.bfloat16))
        self.register_buffer("double_buffer", torch.zeros(2, dtype=torch.float64))
        self.register_buffer("long_buffer", torch.zeros(4, dtype=torch.int64))


def filled_tiny():
    """Every tensor is arange(numel) * step + first, so that the C++ test can check values in closed form."""
    model = Tiny()
    with torch.no_grad():
        for index, (name, tensor) in enumerate(model.state_dict().items()):
            values = torch.arange(tensor.numel(), dtype=torch.float64) * 0.125 + index
            tensor.copy_(values.reshape(tensor.shape).to(tensor.dtype))
    return model


def save(obj, name, **kwargs):
    torch.save(obj, os.path.join(OUT, name), **kwargs)


def repack(source, name, compression, all_zip64):
    """Rewrites the records of `source` with Python's zipfile (not PyTorch's writer): deflated, or with the
    zip64 forms of every header and end record (zipfile writes them only past 4 GiB, so its limits are set to
    0 while writing), so that diffpost's zip reader is tested on archives torch.save itself does not make."""
    import zipfile
    limits = zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT
    if all_zip64:
        zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT = 0, 0
    try:
        with zipfile.ZipFile(os.path.join(OUT, source)) as inp, \
                zipfile.ZipFile(os.path.join(OUT, name), "w", compression) as out:
            for info in inp.infolist():
                entry = zipfile.ZipInfo(info.filename, (1980, 1, 1, 0, 0, 0))
                entry.compress_type = compression
                with out.open(entry, "w", force_zip64=all_zip64) as record:
                    record.write(inp.read(info.filename))
    finally:
        zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT = limits
    reread = torch.load(os.path.join(OUT, name))
    assert all(torch.equal(reread[k], v) for k, v in torch.load(os.path.join(OUT, source)).items())


class Score(torch.nn.Module):
    """A tiny eps model: out = tanh(conv(x)) * (1 + t / 100), 1 input channel, 2 output channels (eps, v)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        scale = 1.0 + t.to(x.dtype) / 100.0
        return torch.tanh(self.conv(x)) * scale[:, None, None, None]


def main():
    if sys.argv[1:] == ["--repacked-only"]:
        write_repacked()
        return
    model = filled_tiny()
    state = model.state_dict()
    save(state, "tiny_state_dict.pt")  # OrderedDict with _metadata, as the published checkpoints
    save(dict(state), "tiny_plain_dict.pt")  # plain dict, no _metadata
    save({"state_dict": state, "epoch": 3, "lr": 1e-4, "name": "tiny",
          "args": argparse.Namespace(width=3), "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]}},
         "tiny_nested.pt")
    ema = collections.OrderedDict((k, v * 2) for k, v in state.items())
    save({"model": state, "ema": ema}, "tiny_model_and_ema.pt")
    save(model, "tiny_whole_model.pt")  # a pickled module, not a state dict
    save(state, "tiny_legacy.pt", _use_new_zipfile_serialization=False)

    # Views sharing one storage: base = arange(24) / 2 as 4x6; a transpose, an offset slice, a flat tail.
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 2
    views = collections.OrderedDict([("base", base), ("transposed", base.t()), ("block", base[1:3, 2:5]),
                                     ("tail", base.view(-1)[5:]), ("scalar", torch.tensor(7.5, dtype=torch.float64))])
    save(views, "views.pt")
    save(views, "views_legacy.pt", _use_new_zipfile_serialization=False)

    # TorchScript score model and the values the C++ adapter must reproduce.
    torch.manual_seed(0)
    score = Score().eval()
    scripted = torch.jit.script(score)
    scripted.save(os.path.join(OUT, "..", "torchscript", "tiny_score.pt"))
    x = torch.randn(2, 1, 5, 5, dtype=torch.float32, requires_grad=True)
    t = torch.tensor([3, 250], dtype=torch.int64)
    out = scripted(x, t)
    weights = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    (grad,) = torch.autograd.grad((out * weights).sum(), x)
    save(collections.OrderedDict([("x", x.detach()), ("t", t), ("out", out.detach()), ("weights", weights),
                                  ("grad", grad)]),
         os.path.join("..", "torchscript", "tiny_score_expected.pt"))
    write_repacked()
    print("torch", torch.__version__, file=sys.stderr)


def write_repacked():
    import zipfile
    repack("tiny_state_dict.pt", "tiny_deflated.pt", zipfile.ZIP_DEFLATED, all_zip64=False)
    repack("tiny_state_dict.pt", "tiny_zip64.pt", zipfile.ZIP_STORED, all_zip64=True)


if __name__ == "__main__":
    main()

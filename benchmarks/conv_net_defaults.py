"""Issue 19's bar on the CPU: a conv net with BatchNorm of about 0.5M parameters (six Conv2d, each
followed by BatchNorm, a sigmoid at the end) on 2,048 inputs of 1,024 samples (1 x 32 x 32),
analysed by the default `eigs` and `spectrum` with no option beyond what names the problem
(--checkpoint, --model, --data, --loss bce, --out). Each command runs as its own process; its
resident memory is sampled every 0.2 s, and a command still running at --time-limit is stopped
(SIGTERM) and reported as unfinished, with its peak so far and the products it took.

Run: python benchmarks/conv_net_defaults.py [--time-limit 600] [--commands eigs spectrum]
     [--option=--dtype --option=mixed] (arguments added to every command)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from resident import resident_bytes

MODEL = textwrap.dedent('''
    import torch
    from torch import nn


    class AudioCNN(nn.Module):
        """Six 3x3 Conv2d + BatchNorm + ReLU, pooled twice, global average, 10 sigmoid outputs."""

        def __init__(self, channels=(32, 64, 64, 128, 128, 192), classes=10):
            super().__init__()
            layers, previous = [], 1
            for i, c in enumerate(channels):
                layers += [nn.Conv2d(previous, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
                if i in (1, 3):
                    layers.append(nn.MaxPool2d(2))
                previous = c
            self.features = nn.Sequential(*layers)
            self.head = nn.Linear(previous, classes)

        def forward(self, x):
            return torch.sigmoid(self.head(self.features(x).mean(dim=(2, 3))))
''')


def prepare(folder: Path) -> None:
    import torch

    (folder / "audio_cnn.py").write_text(MODEL)
    sys.path.insert(0, str(folder))
    from audio_cnn import AudioCNN

    torch.manual_seed(0)
    model = AudioCNN()
    x = torch.randn(2048, 1, 32, 32)
    y = (torch.rand(2048, 10) < 0.2).float()  # multi-label tags
    with torch.no_grad():  # running statistics as after training: a few passes in train mode
        for chunk in x.split(256):
            model(chunk)
    torch.save(model.state_dict(), folder / "model.pt")
    torch.save({"x": x, "y": y}, folder / "data.pt")
    print(f"parameters: {sum(p.numel() for p in model.parameters()):,}", file=sys.stderr)


def run(command: str, folder: Path, limit: float, options: list[str]) -> dict:
    out = folder / f"out-{command}"
    argv = [sys.executable, "-m", "hessian_probe", command, "--checkpoint", str(folder / "model.pt"), "--model",
            f"{folder / 'audio_cnn.py'}:AudioCNN", "--data", str(folder / "data.pt"), "--loss", "bce",
            "--out", str(out), *options]
    started = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, finished = 0, True
    while child.poll() is None:
        try:
            peak = max(peak, resident_bytes(child.pid))
        except OSError:
            break
        if time.perf_counter() - started > limit:
            child.send_signal(signal.SIGTERM)
            finished = False
            break
        time.sleep(0.2)
    stdout, stderr = child.communicate()
    seconds = time.perf_counter() - started
    bars = [line for line in stderr.replace("\r", "\n").splitlines() if "product" in line]
    result = json.loads((out / "result.json").read_text()) if (out / "result.json").is_file() else {}
    eigs = result.get("eigs") or {}
    return {"command": " ".join([command, *options]), "top_eigenvalues": eigs.get("top_eigenvalues"),
            "top_residuals": eigs.get("top_residuals"), "n_products": eigs.get("n_products"),
            "notes": result.get("notes"), "finished": finished and child.returncode == 0,
            "returncode": child.returncode,
            "seconds": round(seconds, 1), "peak_rss_GiB": round(peak / 2**30, 3),
            "last_progress": bars[-1].strip() if bars else None, "summary": stdout.strip().splitlines()[:8],
            "error": stderr.strip().splitlines()[-1] if child.returncode not in (0, None) and stderr.strip() else None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--time-limit", type=float, default=600.0, help="seconds per command")
    parser.add_argument("--commands", nargs="+", default=["eigs", "spectrum"])
    parser.add_argument("--option", action="append", default=[], metavar="ARG",
                        help="an argument added to every command (repeat: --option=--dtype --option=mixed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        prepare(folder)
        reports = [run(c, folder, args.time_limit, args.option) for c in args.commands]
    import torch

    print(json.dumps({"torch": torch.__version__, "cpus": os.cpu_count(), "reports": reports}, indent=1))


if __name__ == "__main__":
    main()

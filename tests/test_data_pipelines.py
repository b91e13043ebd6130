"""Data through the user's own pipeline (issue 17, item 3): --data module:factory with --data-arg,
a DataLoader with its transforms and dict batches, read in its order with nothing dropped."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from click.testing import CliRunner

from hessian_probe.cli import main
from hessian_probe.loading.builtin_models import mlp

PIPELINE = textwrap.dedent('''
    from torch.utils.data import DataLoader, Dataset
    from hessian_probe.loading.datasets import load_digits


    class Digits(Dataset):
        def __init__(self, scale):
            self.x, self.y = load_digits(200)
            self.scale = scale

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):  # a transform, and dict items as many datasets give them
            return {"pixel_values": self.x[i] * self.scale, "label": self.y[i]}


    def loader(scale=1.0, shuffle=False, drop_last=False, batch_size=32):
        return DataLoader(Digits(scale), batch_size=batch_size, shuffle=shuffle, drop_last=drop_last)


    def tensors(scale=1.0):
        x, y = load_digits(200)
        return x * scale, y
''')


@pytest.fixture
def folder(tmp_path, monkeypatch):
    (tmp_path / "pipe.py").write_text(PIPELINE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    torch.save(mlp().state_dict(), tmp_path / "m.pt")
    yield tmp_path
    import sys

    sys.modules.pop("pipe", None)


def eigs(folder, *args):
    out = folder / f"out{len(list(folder.glob('out*')))}"
    result = CliRunner().invoke(main, ["eigs", "--checkpoint", "m.pt", "--model", "mlp", "--top-k", "2",
                                       "--out", str(out), *map(str, args)])
    return result, (json.loads((out / "result.json").read_text()) if result.exit_code == 0 else None)


def test_a_dataloader_with_transforms_and_dict_batches_gives_the_tensors_operator(folder):
    _, stacked = eigs(folder, "--data", "pipe:tensors", "--data-arg", "scale=0.5")
    _, loaded = eigs(folder, "--data", "pipe:loader", "--data-arg", "scale=0.5")
    assert loaded["top_eigenvalues"] == pytest.approx(stacked["top_eigenvalues"], rel=1e-12)
    _, unscaled = eigs(folder, "--data", "pipe:loader")
    assert unscaled["top_eigenvalues"][0] != pytest.approx(loaded["top_eigenvalues"][0], rel=1e-3)  # the arg arrived
    result, shuffled = eigs(folder, "--data", "pipe:loader", "--data-arg", "scale=0.5", "--data-arg", "shuffle=True")
    assert shuffled["top_eigenvalues"] == pytest.approx(stacked["top_eigenvalues"], rel=1e-10)
    assert any("shuffles" in w for w in shuffled["warnings"]) and "warning: the DataLoader" in result.output


def test_a_loader_that_drops_examples_or_an_argument_it_does_not_take_is_one_line(folder):
    dropped, _ = eigs(folder, "--data", "pipe:loader", "--data-arg", "drop_last=True")
    assert dropped.exit_code == 1 and "drop_last=True" in dropped.stderr
    unknown, _ = eigs(folder, "--data", "pipe:loader", "--data-arg", "nope=1")
    assert unknown.exit_code == 2 and "does not accept" in unknown.stderr
    builtin, _ = eigs(folder, "--data", "digits", "--data-arg", "scale=2")
    assert builtin.exit_code == 2 and "factory" in builtin.stderr
    (folder / "c.toml").write_text('command = "eigs"\ncheckpoint = "m.pt"\nmodel = "mlp"\ndata = "pipe:loader"\n'
                                   'out = "from-config"\n[data_args]\nscale = 0.5\n')
    from_config = CliRunner().invoke(main, ["run", str(folder / "c.toml"), "--top-k", "2"])
    assert from_config.exit_code == 0, from_config.output
    _, scaled = eigs(folder, "--data", "pipe:loader", "--data-arg", "scale=0.5")
    assert json.loads((folder / "from-config" / "result.json").read_text())["top_eigenvalues"] == \
        scaled["top_eigenvalues"]  # the table's argument arrived


def test_an_image_folder_of_pngs_is_resized_and_normalised_as_torchvision_would(tmp_path):
    import numpy as np
    from PIL import Image

    from hessian_probe.loading.data import load_data
    from hessian_probe.loading.datasets import load_digits

    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (12, 10), dtype=np.uint8)).save(tmp_path / "imgs" / name / f"{i}.png")
    x, y = load_data(f"imagefolder:{tmp_path / 'imgs'}", args={"size": (8, 8), "mean": 0.5, "std": 0.25, "mode": "L"})
    shorter, _ = load_data(f"imagefolder:{tmp_path / 'imgs'}", args={"size": 8, "mode": "L"})
    assert shorter.shape == (8, 1, 9, 8)  # an int sizes the shorter side, as Resize(8): 12 x 10 -> 9 x 8
    assert x.shape == (8, 1, 8, 8) and y.tolist() == [0] * 4 + [1] * 4  # classes: sorted folder names
    with Image.open(tmp_path / "imgs" / "dog" / "2.png") as img:  # Resize, ToTensor, Normalize by hand
        expected = (np.asarray(img.convert("L").resize((8, 8), Image.BILINEAR), dtype=np.float32) / 255 - 0.5) / 0.25
    assert torch.allclose(x[6, 0], torch.from_numpy(expected))
    torch.manual_seed(0)
    from hessian_probe.loading.builtin_models import small_cnn

    torch.save(small_cnn().state_dict(), tmp_path / "cnn.pt")
    assert load_digits(image=True)[0].shape[1:] == x.shape[1:]
    result = CliRunner().invoke(main, ["eigs", "--checkpoint", str(tmp_path / "cnn.pt"), "--model", "cnn", "--data",
                                       f"imagefolder:{tmp_path / 'imgs'}", "--data-arg", "size=(8, 8)", "--data-arg",
                                       "mode='L'", "--data-arg", "mean=0.5", "--data-arg", "std=0.25",
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    bad = CliRunner().invoke(main, ["eigs", "--checkpoint", str(tmp_path / "cnn.pt"), "--model", "cnn", "--data",
                                    f"imagefolder:{tmp_path / 'imgs'}", "--data-arg", "crop=3"])
    assert bad.exit_code == 2 and "unknown --data-arg crop" in bad.stderr

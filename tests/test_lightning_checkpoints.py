"""A Lightning ``.ckpt`` whose module takes hyperparameters and holds its network as
``self.backbone`` (issue 17, item 4): no --model-arg repeated by hand, ``load_from_checkpoint`` as a
factory, the backbone alone found by its keys, and the same top eigenvalue every way."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch
from click.testing import CliRunner

from hessian_probe.cli import main
from hessian_probe.loading.datasets import load_digits

pl = pytest.importorskip("lightning.pytorch")

MODULE = textwrap.dedent('''
    import torch
    import torch.nn.functional as F
    import lightning.pytorch as pl
    from hessian_probe.loading.builtin_models import mlp


    class Digits(pl.LightningModule):
        def __init__(self, hidden: int, lr: float = 0.1) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.backbone = mlp(hidden=hidden)
            self.loss_fn = torch.nn.CrossEntropyLoss()

        def forward(self, x):
            return self.backbone(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return self.loss_fn(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
''')


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_a_lightning_checkpoint_with_hyperparameters_and_a_backbone_loads_three_ways(tmp_path, monkeypatch):
    (tmp_path / "digits_module.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import digits_module

    torch.manual_seed(0)
    x, y = load_digits(96, seed=0)
    torch.save({"x": x, "y": y}, tmp_path / "data.pt")
    module = digits_module.Digits(hidden=12)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    trainer = pl.Trainer(max_steps=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, loader)
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    saved = torch.load(tmp_path / "run.ckpt", weights_only=True)
    assert saved["hyper_parameters"]["hidden"] == 12 and "backbone.0.weight" in saved["state_dict"]

    common = ["--checkpoint", tmp_path / "run.ckpt", "--data", tmp_path / "data.pt", "--top-k", "1"]
    run("eigs", "--model", "digits_module:Digits", *common, "--out", tmp_path / "module")  # hidden from the ckpt
    run("eigs", "--model", "digits_module:Digits.load_from_checkpoint", *common, "--out", tmp_path / "factory")
    run("eigs", "--model", "mlp", "--model-arg", "hidden=12", *common, "--out", tmp_path / "backbone")
    tops = [json.loads((tmp_path / d / "result.json").read_text())["top_eigenvalues"][0]
            for d in ("module", "factory", "backbone")]
    assert tops[1] == pytest.approx(tops[0], rel=1e-12) and tops[2] == pytest.approx(tops[0], rel=1e-12)
    sys.modules.pop("digits_module", None)

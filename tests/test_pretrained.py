"""Hugging Face models with no glue code (issue 17, items 1-2): a 2-layer GPT-2 and a tiny BERT
classifier built from configs with transformers, saved by save_pretrained, analysed by the CLI with
the default SDPA attention; the GPT-2's top eigenvalue against a dense float64 torch.func.hessian;
the token losses (classes on the last dim, labels -100, causal_lm) against autograd."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from hessian_probe.cli import main
from hessian_probe.loading.checkpoints import load_checkpoint
from hessian_probe.losses import CausalLanguageModel, CrossEntropy

transformers = pytest.importorskip("transformers")


def tiny_gpt2(folder, *, width=16, vocab=50, seed=0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=width, vocab_size=vocab, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    model.save_pretrained(folder)
    return model


def tokens(path, *, vocab=50, n=12, length=8, classes=None, seed=1):
    """input_ids, labels (-100 on the padding of the first three rows) and the attention mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (n, length), generator=g)
    mask = torch.ones_like(ids)
    mask[:3, length - 2:] = 0
    labels = ids.masked_fill(mask == 0, -100) if classes is None else torch.randint(0, classes, (n,), generator=g)
    torch.save({"input_ids": ids, "labels": labels, "attention_mask": mask}, path)
    return ids, labels, mask


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_a_save_pretrained_gpt2_runs_eigs_and_spectrum_with_no_glue(tmp_path):
    tiny_gpt2(tmp_path / "gpt2")
    from safetensors.torch import load_file

    assert "lm_head.weight" not in load_file(tmp_path / "gpt2" / "model.safetensors")  # tied: not in the file
    tokens(tmp_path / "tokens.pt")
    for operator in ("hessian", "ggn"):
        out = tmp_path / operator
        run("eigs", "--checkpoint", tmp_path / "gpt2", "--data", tmp_path / "tokens.pt", "--loss", "causal_lm",
            "--operator", operator, "--top-k", "2", "--out", out)
        record = json.loads((out / "result.json").read_text())
        assert record["n_params"] == 7648 and record["converged"]
    run("spectrum", "--checkpoint", tmp_path / "gpt2", "--data", tmp_path / "tokens.pt", "--loss", "causal_lm",
        "--probes", "2", "--steps", "20", "--out", tmp_path / "spectrum")
    assert (tmp_path / "spectrum" / "density.png").is_file()
    # the config as --model, the weights as a safetensors file without the tied key: the same numbers
    run("eigs", "--model", tmp_path / "gpt2", "--checkpoint", tmp_path / "gpt2" / "model.safetensors", "--data",
        tmp_path / "tokens.pt", "--loss", "causal_lm", "--top-k", "2", "--out", tmp_path / "again")
    first, again = (json.loads((tmp_path / d / "result.json").read_text())["top_eigenvalues"]
                    for d in ("hessian", "again"))
    assert again == pytest.approx(first, rel=1e-10)
    from safetensors.torch import save_file

    untied = load_file(tmp_path / "gpt2" / "model.safetensors")  # an untied model's file: two different tensors
    untied["lm_head.weight"] = untied["transformer.wte.weight"] + 1.0
    save_file(untied, tmp_path / "untied.safetensors")
    refused = CliRunner().invoke(main, ["eigs", "--model", str(tmp_path / "gpt2"), "--checkpoint",
                                        str(tmp_path / "untied.safetensors"), "--data", str(tmp_path / "tokens.pt"),
                                        "--loss", "causal_lm"])
    assert refused.exit_code == 1 and "which the model ties" in refused.stderr


def test_a_tiny_bert_classifier_with_an_attention_mask_runs_from_its_folder(tmp_path):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=3)
    transformers.BertForSequenceClassification(config).save_pretrained(tmp_path / "bert")
    ids, labels, mask = tokens(tmp_path / "classes.pt", classes=3)
    for operator in ("hessian", "ggn"):
        run("eigs", "--checkpoint", tmp_path / "bert", "--data", tmp_path / "classes.pt", "--operator", operator,
            "--out", tmp_path / operator)
    run("spectrum", "--checkpoint", tmp_path / "bert", "--data", tmp_path / "classes.pt", "--operator", "ggn",
        "--probes", "2", "--steps", "20", "--out", tmp_path / "spectrum")
    model = load_checkpoint(tmp_path / "bert").module
    packed = torch.stack([ids, mask], dim=1)
    with torch.no_grad():  # the mask reaches the model: padded rows change when it is dropped
        assert torch.equal(model(packed), model.pretrained(input_ids=ids, attention_mask=mask).logits)
        assert not torch.allclose(model(packed)[:3], model(ids)[:3])


def test_the_gpt2_top_eigenvalue_equals_a_dense_float64_hessian(tmp_path):
    tiny_gpt2(tmp_path / "gpt2", width=4, vocab=11)
    ids, labels, _ = tokens(tmp_path / "tokens.pt", vocab=11, n=6, length=6)
    run("eigs", "--checkpoint", tmp_path / "gpt2", "--data", tmp_path / "tokens.pt", "--loss", "causal_lm",
        "--dtype", "float64", "--tol", "1e-12", "--out", tmp_path / "out")
    found = json.loads((tmp_path / "out" / "result.json").read_text())["top_eigenvalues"][0]

    model = load_checkpoint(tmp_path / "gpt2").module.pretrained.double().eval()
    names = [n for n, _ in model.named_parameters()]  # the tied embedding once
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().flatten() for _, p in model.named_parameters()])

    def loss(w):
        params = dict(zip(names, torch.split(w, [s.numel() for s in shapes])))
        params = {n: t.reshape(s) for (n, t), s in zip(params.items(), shapes)}
        params["lm_head.weight"] = params["transformer.wte.weight"]
        logits = functional_call(model, params, (ids,)).logits
        return F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100)

    with sdpa_kernel([SDPBackend.MATH]):
        # torch.autograd.functional.hessian: column by column, no vmap. torch.func.hessian (vmapped
        # jacfwd(jacrev)) disagrees with it here by 0.2 in the largest entry (torch 2.13,
        # transformers 5.24), while every Hessian-vector product agrees with jvp(grad) to 1e-14
        dense = torch.autograd.functional.hessian(loss, flat)
    truth = np.linalg.eigvalsh(dense.numpy())[-1]
    assert flat.numel() == len(dense) < 1000
    assert found == pytest.approx(truth, rel=1e-8)


def test_token_cross_entropy_takes_classes_on_the_last_dim_and_leaves_out_minus_100():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7, dtype=torch.float64)
    labels = torch.randint(0, 7, (3, 5))
    labels[0, 3:] = -100
    loss = CrossEntropy()
    loss.validate(logits, labels)
    assert loss(logits, labels) == pytest.approx(float(F.cross_entropy(logits.reshape(-1, 7), labels.reshape(-1))))
    U = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    dense = torch.func.hessian(lambda o: loss(o, labels))(logits).reshape(105, 105)
    expected = (U.reshape(2, 105) @ dense).reshape(U.shape)
    assert torch.allclose(loss.output_hessian_matmat(logits, labels, U), expected, atol=1e-12)
    causal = CausalLanguageModel()
    causal.validate(logits, labels)
    shifted = F.cross_entropy(logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1))
    assert causal(logits, labels) == pytest.approx(float(shifted))
    dense = torch.func.hessian(lambda o: causal(o, labels))(logits).reshape(105, 105)
    assert torch.allclose(causal.output_hessian_matmat(logits, labels, U),
                          (U.reshape(2, 105) @ dense).reshape(U.shape), atol=1e-12)
    assert loss.term_count(labels) == 13 and causal.term_count(labels) == 10
    square = torch.randn(3, 8, 7, dtype=torch.float64)  # T - 1 == V: the shifted labels also fit dim 1
    ids = torch.randint(0, 7, (3, 8))
    V = torch.randn(2, 3, 8, 7, dtype=torch.float64)
    dense = torch.func.hessian(lambda o: causal(o, ids))(square).reshape(168, 168)
    assert torch.allclose(causal.output_hessian_matmat(square, ids, V), (V.reshape(2, 168) @ dense).reshape(V.shape),
                          atol=1e-12)
    loss.validate(logits, torch.full((3, 5), -100))  # a batch may count no label: it weighs 0 in its sample


def test_a_chunk_of_padding_only_weighs_nothing_and_a_sample_of_it_is_refused():
    from hessian_probe import curvature_operator, make_problem
    from hessian_probe.loading.builtin_models import mlp
    from hessian_probe.loading.datasets import load_digits

    torch.manual_seed(0)
    model, (x, y) = mlp(), load_digits(120)
    padded = y.clone()
    padded[:40] = -100  # the first chunk counts no label
    problem = make_problem(model, (x, padded), "cross_entropy", chunk_size=40, dtype=torch.float64)
    rest = make_problem(model, (x[40:], y[40:]), "cross_entropy", dtype=torch.float64)
    assert problem.batch_weights == (0.0, 0.5, 0.5)
    v = torch.randn(problem.n_params, dtype=torch.float64)
    assert torch.allclose(curvature_operator(problem).matvec(v), curvature_operator(rest).matvec(v), rtol=1e-12)
    assert problem.loss_value() == pytest.approx(rest.loss_value(), rel=1e-12)
    with pytest.raises(ValueError, match="every label is -100"):
        make_problem(model, (x, torch.full_like(y, -100)), "cross_entropy", chunk_size=40)


def test_a_sample_of_padded_sequences_is_the_mean_over_its_tokens_whatever_the_chunks(tmp_path):
    tiny_gpt2(tmp_path / "gpt2")
    tokens(tmp_path / "tokens.pt")  # 3 of 12 rows padded: batches of 4 hold unequal token counts
    for chunk in ("1024", "4"):
        run("eigs", "--checkpoint", tmp_path / "gpt2", "--data", tmp_path / "tokens.pt", "--loss", "causal_lm",
            "--chunk-size", chunk, "--top-k", "2", "--out", tmp_path / chunk)
    whole, chunked = (json.loads((tmp_path / c / "result.json").read_text())["top_eigenvalues"]
                      for c in ("1024", "4"))
    assert chunked == pytest.approx(whole, rel=1e-9)


def test_the_logits_wrapper_has_the_models_tables_and_state_dict():
    from hessian_probe.loading.pretrained import PretrainedLogits

    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=20,
                                                                 n_positions=8)).eval()
    model.register_buffer("scratch", torch.zeros(3), persistent=False)  # a top-level non-persistent buffer
    wrapper = PretrainedLogits(model)
    assert list(wrapper.state_dict()) == list(model.state_dict()) and "scratch" not in wrapper.state_dict()
    assert dict(wrapper.named_parameters()).keys() == dict(model.named_parameters()).keys()
    ids = torch.randint(0, 20, (2, 5))
    assert torch.equal(wrapper(ids), model(input_ids=ids).logits)

"""Every seed derived from the user's ``--seed``, in one table: each part of a computation that
draws random numbers from a seed other than the user's own has a named stream,
``derive(seed, stream, *index)`` = seed + offset + sum(stride_i x index_i). (The first draw of a
kernel, e.g. SLQ's probes, a Lanczos start vector, Hutch++'s sketch, takes the seed it is given.)

The streams keep the affine offsets the numbers were first computed with (so that every stored
result, test figure and resumable piece stays the same); a part that draws per batch, probe or
step passes that index. Batch orders and training runs already derive through
``numpy.random.SeedSequence`` of (seed, B, j) (analysis.batch_scan.batch_indices,
analysis.validate.run_seeds), which needs no table."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stream:
    offset: int
    strides: tuple[int, ...] = ()


STREAMS = {
    "spectrum-eigenvalues": Stream(1000),  # analysis.spectrum: the extremal eigenvalues' start vector
    "spectrum-trace": Stream(2000),  # analysis.spectrum: the trace's probes (independent of the SLQ's)
    "eigs-restart": Stream(1),  # linalg.eigs: Lanczos restarts after a breakdown
    "power-start": Stream(0, (1,)),  # linalg.eigs: the i-th power iteration's start vector
    "power-shifted": Stream(1000),  # linalg.eigs: the shifted power iterations after the dominant one
    "hutchpp-residual": Stream(1),  # linalg.trace: Hutch++'s Hutchinson probes after the sketch
    "lanczos-restart": Stream(7919, (7919, 1)),  # linalg.lanczos: probe p's restart vector at step m
    "determinism": Stream(7919),  # operators.determinism: the vector of the two-product check
    "batch-subset": Stream(1),  # loading: the examples of --batch-size
    "batch-measurement": Stream(0, (7,)),  # analysis.batch_scan: batch j's kernels
    "adam-sharpness": Stream(1),  # analysis.batch_scan: a batch's preconditioned top eigenvalue
    "batch-density": Stream(2),  # analysis.batch_scan: a batch's (and the full sample's) SLQ density
    "adam-subspace": Stream(3),  # analysis.batch_scan: the preconditioned top eigenvectors at B
    "learner": Stream(3000),  # analysis.lr: the learner's one-shot Lanczos probe on the full sample
    "learner-noise": Stream(4000, (1,)),  # training.learner: the noise batches of the estimate at step t
}


def derive(seed: int, stream: str, *index: int) -> int:
    """The seed of ``stream`` (a key of STREAMS) at ``index`` for the user's ``seed``."""
    rule = STREAMS[stream]
    if len(index) != len(rule.strides):
        raise ValueError(f"stream {stream!r} takes {len(rule.strides)} index(es), got {len(index)}")
    return int(seed + rule.offset + sum(stride * i for stride, i in zip(rule.strides, index)))

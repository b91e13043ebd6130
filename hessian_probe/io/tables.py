"""CSV tables of a record: one row per eigenvalue, per batch size (lr.csv), per measured threshold
(validation.csv); the column lists are part of the public contract."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..files import write_atomically

LR_COLUMNS = ["batch_size", "x", "n_batches", "lambda_max_mean", "lambda_max_std", "lambda_min_mean", "lambda_min_std",
              "adam_sharpness_mean", "adam_sharpness_std", "lr_max_sgd", "lr_max_momentum", "lr_max_nesterov",
              "lr_max_adam", "converged", "batch_sharpness_mean", "batch_sharpness_std", "top_direction_std",
              "lr_max_sgd_mss", "lr_max_sgd_batch_sharpness", "lr_max_momentum_mss", "lr_max_nesterov_mss",
              "lr_max_adam_mss", "lr_recommended_sgd", "lr_recommended_momentum", "lr_recommended_nesterov",
              "lr_recommended_adam", "calibrated", "lr_calibrated_sgd", "lr_calibrated_momentum",
              "lr_calibrated_nesterov", "lr_calibrated_adam"]

VALIDATION_COLUMNS = ["optimizer", "batch_size", "predicted_lr", "measured_lr", "ratio", "diverging_lr", "runs", "note",
                      "criterion", "seeds", "recommended_lr", "ratio_to_recommended", "best_model", "best_prediction",
                      "ratio_to_best"]

TRACK_COLUMNS = ["name", "step", "loss", "lambda_max", "lambda_max_residual", "lambda_max_converged", "trace",
                 "trace_stderr", "batch_size", "batch_lambda_max", "batch_lambda_min", "batch_converged",
                 "batch_sharpness", "adam_sharpness", "adam_converged", "optimizer", "lr", "momentum", "beta1", "beta2",
                 "eps", "line_sgd", "line_momentum", "line_adam", "sha256", "n_products", "wall_time_s"]


def write_eigenvalues_csv(records: Sequence[Mapping[str, Any]], path: Path) -> None:
    """One row per eigenvalue: operator, end (top/bottom), rank, eigenvalue, residual, converged."""
    table = [["operator", "end", "rank", "eigenvalue", "residual", "converged"]]
    for r in records:
        eigs = r["eigs"]
        for end in ("top", "bottom"):
            rows = zip(eigs[f"{end}_eigenvalues"], eigs[f"{end}_residuals"], eigs[f"{end}_converged"])
            table += [[r["operator"], end, rank, value, residual, converged]
                      for rank, (value, residual, converged) in enumerate(rows, start=1)]
    _write_csv(table, path)


def write_rows_csv(rows: Sequence[Mapping[str, Any]], path: Path, columns: Sequence[str]) -> None:
    """One row per mapping, the given columns in order (missing values left empty)."""
    _write_csv([list(columns), *(["" if row.get(c) is None else row.get(c) for c in columns] for row in rows)], path)


def _write_csv(table: Sequence[Sequence[Any]], path: Path) -> None:
    def write(temporary: Path) -> None:
        with temporary.open("w", newline="") as fh:
            csv.writer(fh).writerows(table)

    write_atomically(path, write)

"""One writer and one summary per result type: what each command leaves in --out and prints.

``format_of(result)`` gives a result type's writer and summary; ``run_record`` makes a command's
record from the typed result (its ``to_dict()``), the provenance (records.provenance) and the
settings shown as --flags, and the CLI hands record and result to the writer."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..analysis import EigenvalueReport, LearningRateResult, SpectrumResult, TraceReport, ValidationReport
from ..analysis.track import TrackResult
from ..errors import flags_in_notes
from ..operators.ggn import split_description
from ..plots import plot_batch_spectra, plot_densities, plot_learning_rates, plot_track
from ..results import to_jsonable
from . import summaries
from .names import LR_FILES, LR_STATE, RECORD_FILES, TRACK_FILES, VALIDATION_FILES
from .records import write_json
from .saved import save_learning_rates
from .tables import LR_COLUMNS, TRACK_COLUMNS, VALIDATION_COLUMNS, write_eigenvalues_csv, write_rows_csv

Writer = Callable[[dict[str, Any], Path, Any], list[str]]


@dataclass(frozen=True)
class ResultFormat:
    """How one result type is saved (``write(record, out_dir, result) -> files written``) and shown."""

    write: Writer
    summary: Callable[[Mapping[str, Any]], str]
    files: frozenset[str]  # every file name the writer may write


def format_of(result: Any) -> ResultFormat:
    for kind in type(result).__mro__:
        if kind in FORMATS:
            return FORMATS[kind]
    raise TypeError(f"no writer for a {type(result).__name__}")


def record_of(result: Any) -> dict[str, Any]:
    """The JSON form of a typed result, before provenance."""
    format_of(result)  # a result type without a writer is refused before any file is touched
    return result.to_dict()


def run_record(result: Any, op: Any, provenance: dict[str, Any], *, resumed: int = 0, rejected: int = 0,
               evaluation_mode: str | None = None, data_notes: Sequence[str] = (),
               notes: Sequence[str] = ()) -> dict[str, Any]:
    """A command's record: the result's JSON, its ``provenance`` (records.provenance, plus the
    operator's product settings, the pieces read back or computed again, how the model was
    evaluated), the GGN-family split of the model, and its messages with --flags for `settings`."""
    record = record_of(result)
    record["provenance"] = {**provenance, "products": dataclasses.asdict(op.settings), "resumed_pieces": resumed,
                            "rejected_pieces": rejected,  # damaged or another run's: computed again
                            "evaluation_mode": evaluation_mode}
    if notes:  # what the user may want to know (operators/precision.py: float32's measured speed-up)
        record["notes"] = list(notes)
    if data_notes:  # how the user's DataLoader was read
        record["warnings"] = [*record.get("warnings", []), *data_notes]
    if op.name != "hessian":  # J^T S J, split at the model's outputs
        record["ggn_split"], split_warning = split_description(op.problem, op.name)
        if split_warning:
            record["warnings"] = [*record.get("warnings", []), split_warning]
    return flags_in_notes(to_jsonable(record))  # the library names settings as `name`; here they are --flags


def plot_title(record: Mapping[str, Any]) -> str:
    inputs = record.get("provenance", {}).get("inputs", {})
    what = f"{inputs.get('model') or 'model'} on {inputs.get('data', 'data')}"
    batch = inputs.get("batch_size")
    one_batch = f" (one batch of {batch})" if batch else ""
    return f"{what}: P = {record['n_params']:,}, N = {record['n_samples']:,}" + one_batch


def write_record(record: Mapping[str, Any], out_dir: Path, title: str = "") -> list[str]:
    """result.json always; eigenvalues.csv when there are eigenvalues; density.png/.pdf when there is SLQ."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(record, out_dir / "result.json")
    written = ["result.json"]
    if "eigs" in record:
        write_eigenvalues_csv([record], out_dir / "eigenvalues.csv")
        written.append("eigenvalues.csv")
    if "slq" in record:
        plot_densities([record], [out_dir / "density.png", out_dir / "density.pdf"], title=title)
        written += ["density.png", "density.pdf"]
    return written


def _write_operator_report(record: dict[str, Any], out_dir: Path, result: Any) -> list[str]:
    """spectrum: result.json, eigenvalues.csv, density.png and .pdf; eigs: the first two; trace: result.json."""
    return write_record(record, out_dir, title=plot_title(record))


def write_learning_rates(record: dict[str, Any], out_dir: Path, result: LearningRateResult) -> list[str]:
    """lr_state.pt (the typed result, for validate-lr), lr.json with that file's digest, lr.csv,
    lr.png and spectra_by_batch.png."""
    record["state_file"] = save_learning_rates(result, out_dir / LR_STATE)
    write_json(record, out_dir / "lr.json")
    write_rows_csv(record["rows"], out_dir / "lr.csv", LR_COLUMNS)
    plot_learning_rates(record, out_dir / "lr.png")
    files = ["lr.json", "lr.csv", "lr.png", LR_STATE]
    if record["densities"]:
        plot_batch_spectra(record, out_dir / "spectra_by_batch.png")
        files.append("spectra_by_batch.png")
    return files


def write_validation(record: dict[str, Any], out_dir: Path, result: ValidationReport) -> list[str]:
    """validation.json, validation.csv (blow-up thresholds), validation_no_progress.csv, and lr's
    files with the measured points added."""
    record["lr"].setdefault("provenance", record["provenance"])  # a scan run here has this run's inputs
    files = write_learning_rates(record["lr"], out_dir, result.learning_rates)
    write_json(record, out_dir / "validation.json")
    write_rows_csv(record["validation"], out_dir / "validation.csv", VALIDATION_COLUMNS)
    written = ["validation.json", "validation.csv"]
    if record["validation_no_progress"]:
        write_rows_csv(record["validation_no_progress"], out_dir / "validation_no_progress.csv", VALIDATION_COLUMNS)
        written.append("validation_no_progress.csv")
    return written + files


def write_track(record: dict[str, Any], out_dir: Path, result: TrackResult) -> list[str]:
    """track.json, track.csv (one row per checkpoint, in training order) and track.png."""
    write_json(record, out_dir / "track.json")
    write_rows_csv(record["rows"], out_dir / "track.csv", TRACK_COLUMNS)
    plot_track(record, out_dir / "track.png")
    return ["track.json", "track.csv", "track.png"]


FORMATS: dict[type, ResultFormat] = {
    SpectrumResult: ResultFormat(_write_operator_report, summaries.spectrum_summary, RECORD_FILES),
    EigenvalueReport: ResultFormat(_write_operator_report, summaries.eigenvalue_summary, RECORD_FILES),
    TraceReport: ResultFormat(_write_operator_report, summaries.trace_summary, RECORD_FILES),
    LearningRateResult: ResultFormat(write_learning_rates, summaries.learning_rate_summary, LR_FILES),
    ValidationReport: ResultFormat(write_validation, summaries.validation_summary, VALIDATION_FILES),
    TrackResult: ResultFormat(write_track, summaries.track_summary, TRACK_FILES),
}

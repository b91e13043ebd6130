"""The writers under their older module name: records, tables and saved files now live in
:mod:`hessian_probe.io` (records, tables, saved, formats); these names stay importable from here."""

from .io import summaries
from .io.formats import plot_title, write_record
from .io.records import environment, file_digest, input_digests, provenance, read_json, write_json
from .io.saved import MAX_PLOT_NODES, read_record, save_eigenvectors
from .io.summaries import lr_table
from .io.tables import write_eigenvalues_csv, write_rows_csv

__all__ = ["MAX_PLOT_NODES", "environment", "file_digest", "input_digests", "lr_table", "plot_title", "provenance",
           "read_json", "read_record", "save_eigenvectors", "summary", "write_eigenvalues_csv", "write_json",
           "write_record", "write_rows_csv"]


def summary(record: dict) -> str:
    """The summary of a record read back from JSON (the commands use their result type's, io.formats);
    its kind told by its keys, as this function always did."""
    if "validation" in record and "lr" in record:
        return summaries.validation_summary(record)
    if "rows" in record and "fit" in record:
        return summaries.learning_rate_summary(record)
    if "rows" in record and "order" in record:
        return summaries.track_summary(record)
    if "slq" in record:
        return summaries.spectrum_summary(record)
    if "eigs" in record:
        return summaries.eigenvalue_summary(record)
    return summaries.trace_summary(record)

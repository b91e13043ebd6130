"""The writers under their older module name: records, tables and saved files now live in
:mod:`hessian_probe.io` (records, tables, saved, formats); these names stay importable from here."""

from .io.formats import plot_title, write_record
from .io.records import environment, file_digest, input_digests, provenance, read_json, write_json
from .io.saved import MAX_PLOT_NODES, read_record, save_eigenvectors
from .io.summaries import lr_table
from .io.tables import write_eigenvalues_csv, write_rows_csv

__all__ = ["MAX_PLOT_NODES", "environment", "file_digest", "input_digests", "lr_table", "plot_title", "provenance",
           "read_json", "read_record", "save_eigenvectors", "write_eigenvalues_csv", "write_json", "write_record",
           "write_rows_csv"]

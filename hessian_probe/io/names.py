"""The file names each command may write in --out (known before the run, so that the folder is
checked before any work; a namesake hessian-probe did not write is never replaced)."""

RECORD_FILES = frozenset({"result.json", "eigenvalues.csv", "density.png", "density.pdf", "eigenvectors.pt"})
LR_STATE = "lr_state.pt"
LR_FILES = frozenset({"lr.json", "lr.csv", "lr.png", "spectra_by_batch.png", LR_STATE})
VALIDATION_FILES = LR_FILES | {"validation.json", "validation.csv", "validation_no_progress.csv"}
TRACK_FILES = frozenset({"track.json", "track.csv", "track.png"})

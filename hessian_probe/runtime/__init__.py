"""How runs execute, apart from the maths: torchrun's process group (torchrun.py) and the journal
that saves finished pieces for --resume (journal.py), implementations of protocols.Group and
protocols.Pieces. Imported by the CLI and the loaders, never by linalg/ or analysis/."""

"""What a run writes and prints: records (a typed result's JSON plus provenance), CSV tables,
figures, the files read back later, and one writer and one summary per result type
(``format_of``). Nothing above the command line builds a record; nothing here computes."""

"""What the reliability tests and benchmarks share that drives the app as a user does: the crash
harness (the `folio` command, killed) and the memory probe (`Folio.ingest`, measured). Installed
with Folio, so neither tests nor bench/ import each other (the rest is `pipeline.reliability`)."""

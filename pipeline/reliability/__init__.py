"""What the reliability tests and benchmarks share: fuzz cases and their driver, the
prompt-injection corpus. Installed with Folio, so neither tests nor bench/ import each other."""

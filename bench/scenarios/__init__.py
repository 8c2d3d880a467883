"""One module per scenario; each has `run(options) -> dict` (rows, targets, notes)."""

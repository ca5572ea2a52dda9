"""The app's side of the process boundary (no torch): run folders, launching and tailing children,
building a RunConfig from choices, the generation worker's client."""

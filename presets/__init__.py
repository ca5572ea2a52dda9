"""Training presets as data: one TOML file each. Installed as ``coati_tui.builtin_presets``."""

"""No torch, imported by every side: run config, events, presets, planner, model info, hardware, errors."""

"""``python -m coati_tui.train RUN_DIR``: the trainer child's entry point (kept for run folders and
scripts written before the trainer moved to ``coati_tui.trainer``)."""

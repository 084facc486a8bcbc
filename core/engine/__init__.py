"""The training engine every torch task shares (core.engine.trainer)."""

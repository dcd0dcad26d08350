"""Serial-parallel fine-tuning (DESIGN.md sections 2-3)."""

"""Real peers the engine is tested against (each in its own folder)."""

"""The real OpenClaw gateway as a test peer: setup, scripted model, session fixtures."""

"""Test and development harnesses: real components started as local processes."""

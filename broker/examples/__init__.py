"""Example task modules: what `broker dev` runs, and a starting point for your own."""

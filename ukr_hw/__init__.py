"""ukr-hw."""

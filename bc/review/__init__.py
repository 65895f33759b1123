"""`scripts/review.py`: look at a recording, a model on it, or a drive in the browser."""

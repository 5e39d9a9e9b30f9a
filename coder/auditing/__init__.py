"""Scoring predictions against coders: CodiEsp MAP, precision@k, reports and review samples."""

"""Candidate sources: each proposes codes for notes with scores and evidence; the reranker combines them."""

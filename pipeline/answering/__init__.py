"""Answering: a question to a cited answer (retrieve, sample, read, generate, cite), one at a time or in batches."""

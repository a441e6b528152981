"""Ingestion: parse PDFs (in isolated worker processes, OCR included), chunk, store and index them; locally or on Ray."""

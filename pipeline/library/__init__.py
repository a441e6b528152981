"""The library: documents, the search index over their chunks, owners and accounts, page rendering, integrity checks."""

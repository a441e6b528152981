"""Evaluation: answer accuracy, evidence-page recall and retrieval metrics on labelled questions and collections."""

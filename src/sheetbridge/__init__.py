"""Sheetbridge: an insurance agency's book, kept in two-way sync with spreadsheets."""

__version__ = "0.1.0"

"""Data set -> fingerprint -> plan (split, settings): what training reads."""

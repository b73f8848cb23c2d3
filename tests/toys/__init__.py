"""Toy extensions of each kind, written as the how-to in recaption/ARCHITECTURE.md says: a strategy
cutting on the toy annotator's score (tests/annotators/brightness.py), a captioner backend; the toy
engine is tests/engines/serial.py."""

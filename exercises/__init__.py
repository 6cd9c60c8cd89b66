"""The course's exercise files: sae.py (yours to write), solutions.py (a teacher's), mistakes.py (the usual ones)."""

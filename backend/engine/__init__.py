"""The engine: the repository format, its storage, and the jobs that read and write it.

Only the service layer (`lamina.backend.service`) imports from here; front ends never do.
"""

"""Putting a verified bundle on the host: the install transaction under a prefix (``install``),
the streaming extract into staging (``extract``) over a pipeline of threads (``pipeline``), the strict
tar header reader (``tarstream``), and the dependencies venv (``deps``).
"""

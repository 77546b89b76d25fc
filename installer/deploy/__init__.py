"""Putting a verified bundle on the host: the install transaction under a prefix (``install``),
the streaming extract into staging (``extract``) over a pipeline of threads (``pipeline``, which the
bundler's payload writer shares), the strict tar header reader (``tarstream``), and the dependencies
venv (``deps``).
"""

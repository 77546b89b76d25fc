"""Putting a verified bundle on the host: the install transaction under a prefix (``install``),
the streaming extract into staging (``extract``) over a pipeline of threads (``pipeline``, which the
bundler's payload writer shares), the strict tar header reader (``tarstream``), the dependencies
venv (``deps``), and the check of a version directory that is already there before it is adopted
(``adopt``).
"""

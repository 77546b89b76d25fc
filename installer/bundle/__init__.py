"""A bundle directory as it arrives: its files read with hard caps (``files``), and its chunks
checked against a verified manifest (``verify``). Nothing here decides trust or writes to the host.
"""

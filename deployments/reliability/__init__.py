"""Reliability drills against a running ragserve: the chaos matrix (``ragserve chaos``: faults
injected one at a time under a steady load) and the soak (``ragserve soak``: memory and file
descriptors of every process of the app under a long mixed load). ``mix.py`` is their load."""

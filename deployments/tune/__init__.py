"""``ragserve tune``: fine-tune the encoder on a collection, evaluate it on held-out questions, and
roll it out (and back) without serving a query vector against passages of another encoder.

* ``data.py``: chunks read from a collection, training pairs (labelled and synthetic) with hard
  negatives, held-out questions, the training set on disk;
* ``synth.py``: synthetic questions written by the deployed generator and filtered through the
  app's own retrieval (over HTTP, like any client);
* ``train.py``: the training loop on Ray Train (checkpoints, resume, progress, seeds);
* ``artefacts.py``: versioned, cached model artefacts (``tuned:<name>`` references);
* ``evaluate.py``: before/after retrieval metrics on held-out questions;
* ``command.py``: the CLI.
"""

"""Evaluation: pure metric functions (``metrics``), model scoring (``scoring``) and suites (``core``)."""

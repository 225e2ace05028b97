"""Executors that only wire: the Ray actor graph (`ray`) and its bounded, stream-ordered `scheduler`."""

"""Shared fixtures: the fake backend fleet (real grpc servers on 127.0.0.1)."""

pytest_plugins = ["lbclient.testing.pytest_plugin"]

"""Checkers outside reqcheck's process: export to llama.cpp, serve, and check through an endpoint."""

"""Triton implementations of the project's ops, each checked against a reference in hydrahead_lit.ops."""

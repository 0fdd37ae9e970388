"""Helpers the tests share; the fixtures that use them stay in the conftest.py files.

The suite runs with tests/ on sys.path (pytest's rootdir conftest), so tests import these
as `from support.waiting import wait_until`.
"""

"""Helpers for apps' own tests: ``issue_token`` and a minimal mock upstream IdP (issue 4)."""
